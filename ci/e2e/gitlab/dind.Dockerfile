# A docker:dind stand-in from Debian's docker.io, for the GitLab template's
# "services:" (ci/e2e-gitlab.sh, scenario dind): dockerd on
# tcp://0.0.0.0:2375 without TLS, as docker:dind with DOCKER_TLS_CERTDIR=""
# serves it.  Needs a privileged container.  No EXPOSE: gitlab-ci-local
# would check exposed ports with an image of its own that is not here; the
# template waits for the port itself.  Images in /preload/*.tar (a volume)
# are loaded before the port opens, since this daemon reaches no registry.
ARG BASE=rdocker-test/debian:bookworm
FROM ${BASE}
RUN set -eux; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends docker.io iptables; \
    apt-get clean; rm -rf /var/lib/apt/lists/*; \
    dockerd --version
COPY dind-entrypoint.sh /usr/local/bin/dind-entrypoint.sh
# overlay2 cannot sit on the container's own overlay root.
VOLUME /var/lib/docker
ENTRYPOINT ["/usr/local/bin/dind-entrypoint.sh"]
