# The job image of ci/e2e-action-release.sh: a bare Debian job container
# (GitHub Actions "container: debian:..." ) with autopkgtest and nothing
# else: no rdocker, no cargo, no curl, no wget, no apt lists.  The Action
# must install rdocker from its release by itself.
#
# Built by ci/e2e-action-release.sh with the legacy builder; BASE is a
# local image (no pull).
ARG BASE=rdocker-test/debian:bookworm
FROM ${BASE}
RUN set -eux; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends autopkgtest; \
    apt-get clean; \
    rm -rf /var/lib/apt/lists/*; \
    for p in cargo autopkgtest-virt-rdocker curl wget docker; do \
        if command -v "$p"; then echo "the job image must have no $p" >&2; exit 1; fi; \
    done; \
    test -x /usr/bin/autopkgtest; \
    python3 --version
