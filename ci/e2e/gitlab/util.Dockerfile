# A local stand-in for gitlab-ci-local's helper image
# docker.io/firecow/gitlab-ci-local-util (nothing is pulled in CI): it runs
# that image for "sh -c 'chown/chmod -R /gcl-builds /tmp'" before a job and
# "bash -c '... rsync -Ra PATHS ../../artifacts/JOB/.'" after it (read in
# gitlab-ci-local 4.55's src/job.js), so it needs sh, bash, coreutils and
# rsync.  Built by ci/e2e-gitlab.sh from a local Debian image.
ARG BASE=rdocker-test/debian:bookworm
FROM ${BASE}
RUN set -eux; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends rsync; \
    apt-get clean; rm -rf /var/lib/apt/lists/*; \
    rsync --version >/dev/null
