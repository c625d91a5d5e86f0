# The job image plus a docker CLI, for running the reference
# autopkgtest-virt-docker in the same job container.  The CLI is the
# host's own (statically linked) binary, copied in: no registry needed.
ARG JOB_IMAGE=rdocker-test/ci-job:bookworm
FROM ${JOB_IMAGE}
COPY docker /usr/local/bin/docker
RUN docker --version
