# The release job image plus the release's own docker CLI (docker-cli,
# where the release splits it out of docker.io; else docker.io), for the
# reference autopkgtest-virt-docker of that release's autopkgtest, with
# only the socket mounted.  From the mirror, like the rest.  iproute2 too:
# sid's autopkgtest-virt-docker (6.0) refuses to start without "ip"
# ("ERROR: command ip not found, provided by package iproute2"), which
# docker.io pulls in and docker-cli does not.
ARG JOB_IMAGE=rdocker-test/ci-job:sid
FROM ${JOB_IMAGE}
RUN set -eux; \
    apt-get update; \
    if apt-cache show docker-cli >/dev/null 2>&1; then pkg=docker-cli; else pkg=docker.io; fi; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$pkg" iproute2; \
    apt-get clean; \
    docker --version; \
    command -v ip; \
    test -x /usr/bin/autopkgtest-virt-docker
