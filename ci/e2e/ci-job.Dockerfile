# The job image of ci/e2e-container-job.sh: what a CI job running in a
# container (GitHub Actions "container:", a GitLab job with docker:dind)
# would install to run autopkgtest through rdocker.  No docker CLI.
#
# Built by ci/e2e-container-job.sh with the legacy builder from a context
# holding this file and rdocker.deb; BASE is a local image (no pull).
ARG BASE=rdocker-test/debian:bookworm
FROM ${BASE}
COPY rdocker.deb /tmp/rdocker.deb
# autopkgtest runs its host side here; its own Depends (python3,
# python3-debian, libdpkg-perl, apt-utils, procps) are all it needs, also
# for a source tree: dpkg-source, dpkg-buildpackage and
# dpkg-checkbuilddeps run in the testbed, and the host side uses only
# perl's Dpkg modules and dpkg-deb.  (Checked: the run passes with
# dpkg-dev purged from this image.)  rdocker itself needs only libc.
RUN set -eux; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        autopkgtest /tmp/rdocker.deb; \
    rm -f /tmp/rdocker.deb; \
    apt-get clean; \
    if command -v docker; then echo 'a docker CLI got installed' >&2; exit 1; fi; \
    autopkgtest-virt-rdocker --help >/dev/null; \
    test -x /usr/bin/autopkgtest
