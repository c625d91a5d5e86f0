#!/bin/bash
# Build and install rdocker as a Debian package, then run a real
# autopkgtest through it: the project's test package, built and tested in
# a container. On a fresh Debian machine this also provisions Docker and
# the local test images (no registry needed; see ci/provision.sh).
#
# Usage: sudo ci/try.sh [IMAGE]   (default rdocker-test/user:bookworm)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
IMAGE=${1:-${RDOCKER_TEST_USER_IMAGE:-rdocker-test/user:bookworm}}

ci/provision.sh
ci/build-deb.sh --install
echo "try: autopkgtest tests/pkg/rdocker-hello/ -- rdocker $IMAGE" >&2
autopkgtest tests/pkg/rdocker-hello/ -- rdocker "$IMAGE"
