# A job image of ci/e2e-releases.sh: a CI job on Debian RELEASE (trixie,
# sid) running autopkgtest from that release through rdocker.  Like
# ci-job.Dockerfile: autopkgtest from the mirror and the rdocker .deb, no
# docker CLI.  BASE is a local image debootstrapped by ci/provision.sh
# (rdocker-test/debian:trixie, rdocker-test/debian:sid), whose apt ignores
# Valid-Until (sid's Release file on the mirror may have expired).
#
# Built by ci/e2e-releases.sh with the legacy builder from a context
# holding this file and rdocker.deb.
ARG BASE=rdocker-test/debian:trixie
FROM ${BASE}
# autopkgtest first, in a layer of its own: a new .deb rebuilds only the
# layers after it.
RUN set -eux; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends autopkgtest; \
    apt-get clean; \
    test -x /usr/bin/autopkgtest
COPY rdocker.deb /tmp/rdocker.deb
# (Its Depends, libc6 and libgcc-s1, are installed already: no package
# lists needed.)
RUN set -eux; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends /tmp/rdocker.deb; \
    rm -f /tmp/rdocker.deb; \
    if command -v docker; then echo 'a docker CLI got installed' >&2; exit 1; fi; \
    autopkgtest-virt-rdocker --version; \
    dpkg-query -W autopkgtest rdocker
