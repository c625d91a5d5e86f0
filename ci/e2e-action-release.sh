#!/bin/bash
# End-to-end test: the GitHub Action installs rdocker from its own release,
# with no cargo and no input, in a container job, as a runner runs it.
#
# A release download is served over HTTP (python3 -m http.server in a
# container) laid out as GitHub lays out release assets:
#   owner/rdocker/releases/download/v0.1.0/{rdocker_V_amd64.deb,SHA256SUMS}
#   owner/rdocker/releases/download/v0.1.0-corrupt/  the same names, the
#                                   .deb with bytes changed
# The job container (autopkgtest only: no rdocker, cargo, curl or wget)
# and the server share a docker network of their own, github_network_ID,
# as a runner sets one up; the job gets the daemon's socket.  Then
# ci/action/run.sh runs three times, with the runner's variables
# (GITHUB_SERVER_URL=http://SERVER:8000, GITHUB_ACTION_REPOSITORY=owner/rdocker,
# GITHUB_ACTION_REF, GITHUB_ACTION_PATH, GITHUB_WORKSPACE, RUNNER_TEMP,
# GITHUB_OUTPUT, GITHUB_STEP_SUMMARY):
#   branch   ref "main" known only from GITHUB_ACTION_PATH (as in a
#            composite action, where the runner leaves GITHUB_ACTION_REF
#            empty): fails, saying there is no release asset and to use a
#            release tag or build-from-source; it installed curl first
#   source   build-from-source: true: fails, saying there is no cargo
#   corrupt  ref v0.1.0-corrupt: fails with "checksum mismatch", and
#            rdocker is not installed
#   release  ref v0.1.0: installs the .deb (the time it took is printed),
#            runs autopkgtest of tests/pkg/rdocker-hello through it, every
#            test passes; the step summary, the outputs and junit.xml
#            (valid XML, one passed testcase per test of the summary, the
#            same as the packaged /usr/share/rdocker/autopkgtest_report.py
#            writes) are checked
#
# Usage: ci/e2e-action-release.sh [--deb FILE]
#   --deb FILE  the .deb to publish (default: the one in target/release-assets,
#               from ci/release-build.sh, else target/deb's)
# Environment: RDOCKER_TEST_BASE_IMAGE (rdocker-test/debian:bookworm),
# RDOCKER_TEST_USER_IMAGE (rdocker-test/user:bookworm, the testbed),
# RDOCKER_TEST_LOGS (target/test-logs; logs go to its e2e-action-release/).
# Builds and caches the image rdocker-test/ci-job-autopkgtest:bookworm.
# Exits non-zero on any failure, never skips; removes every container and
# the network it made, on every path.
set -euo pipefail

log() { echo "e2e-action-release: $*" >&2; }
die() { log "error: $*"; exit 1; }
usage() { sed -n '2,/^[^#]/{/^#/{s/^# \{0,1\}//;p}}' "$0"; }

TREE=$(cd "$(dirname "$0")/.." && pwd)
SOCK=/var/run/docker.sock
BASE_IMAGE=${RDOCKER_TEST_BASE_IMAGE:-rdocker-test/debian:bookworm}
TESTBED_IMAGE=${RDOCKER_TEST_USER_IMAGE:-rdocker-test/user:bookworm}
JOB_IMAGE=rdocker-test/ci-job-autopkgtest:bookworm
DOCKERFILE=$TREE/ci/e2e/ci-job-autopkgtest.Dockerfile
PKG=$TREE/tests/pkg/rdocker-hello
LOGS=${RDOCKER_TEST_LOGS:-$TREE/target/test-logs}/e2e-action-release
KEY_LABEL=org.debian.autopkgtest.rdocker.e2e.key
RDOCKER_LABEL=org.debian.autopkgtest.rdocker
OWNER_HOST_LABEL=org.debian.autopkgtest.rdocker.owner-host

DEB=""
while [ $# -gt 0 ]; do
    case "$1" in
        --deb) [ $# -ge 2 ] || die "--deb needs a file"; DEB=$2; shift 2 ;;
        --deb=*) DEB=${1#*=}; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done

ID=$(head -c6 /dev/urandom | od -An -tx1 | tr -d ' \n')
NET=github_network_$ID
SERVER=rdocker-e2e-$ID-release-server
JOB=rdocker-e2e-$ID-release-job
TMP=$(mktemp -d)
EXEC_PID=""
cleanup() {
    local rc=$?
    set +e
    [ -z "$EXEC_PID" ] || kill "$EXEC_PID" 2>/dev/null
    docker rm -f "$JOB" "$SERVER" >/dev/null 2>&1
    docker ps -aq --filter "label=$RDOCKER_LABEL=1" --filter "label=$OWNER_HOST_LABEL=$JOB" |
        xargs -r docker rm -f >/dev/null 2>&1
    docker network rm "$NET" >/dev/null 2>&1
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

command -v docker >/dev/null || die "no docker CLI on this machine"
[ -S "$SOCK" ] || die "no Docker socket at $SOCK: start dockerd (ci/provision.sh does)"
docker version >/dev/null 2>&1 || die "the Docker daemon at $SOCK is unreachable"
for img in "$BASE_IMAGE" "$TESTBED_IMAGE"; do
    docker image inspect "$img" >/dev/null 2>&1 || die "no local image $img; build it with ci/provision.sh"
done
if [ -z "$DEB" ]; then
    shopt -s nullglob
    debs=("$TREE"/target/release-assets/rdocker_*_amd64.deb)
    [ ${#debs[@]} -gt 0 ] || debs=("$TREE"/target/deb/rdocker_*_amd64.deb)
    shopt -u nullglob
    [ ${#debs[@]} -eq 1 ] || die "want exactly one rdocker_*_amd64.deb in target/release-assets or target/deb, have ${#debs[@]}: run ci/release-build.sh or ci/build-deb.sh, or give --deb"
    DEB=${debs[0]}
fi
[ -f "$DEB" ] || die "no such .deb: $DEB"
mkdir -p "$LOGS"
T0=$(date +%s)

# --- the job image, rebuilt when its Dockerfile or base changes -------------
key=$(printf '%s\n' "$(sha256sum "$DOCKERFILE" | cut -d' ' -f1)" \
    "$(docker image inspect --format '{{.Id}}' "$BASE_IMAGE")" | sha256sum | cut -d' ' -f1)
have=$(docker image inspect --format "{{index .Config.Labels \"$KEY_LABEL\"}}" "$JOB_IMAGE" 2>/dev/null || true)
if [ "$have" != "$key" ]; then
    log "building $JOB_IMAGE"
    mkdir -p "$TMP/ctx" && cp "$DOCKERFILE" "$TMP/ctx/Dockerfile"
    DOCKER_BUILDKIT=0 docker build --build-arg "BASE=$BASE_IMAGE" --label "$KEY_LABEL=$key" \
        -t "$JOB_IMAGE" "$TMP/ctx" >"$LOGS/build-image.log" 2>&1 ||
        { tail -20 "$LOGS/build-image.log" >&2; die "building $JOB_IMAGE failed (log: $LOGS/build-image.log)"; }
fi

# --- the release download ----------------------------------------------------
name=$(basename "$DEB")
www=$TMP/www/owner/rdocker/releases/download
mkdir -p "$www/v0.1.0" "$www/v0.1.0-corrupt"
cp "$DEB" "$www/v0.1.0/$name"
(cd "$www/v0.1.0" && sha256sum "$name" >SHA256SUMS)
cp "$DEB" "$www/v0.1.0-corrupt/$name"
cp "$www/v0.1.0/SHA256SUMS" "$www/v0.1.0-corrupt/"
# Change 16 bytes in the middle of the file: its size stays the same.
printf 'corrupted bytes!' | dd of="$www/v0.1.0-corrupt/$name" bs=1 seek=$(( $(stat -c %s "$DEB") / 2 )) conv=notrunc status=none
chmod -R a+rX "$TMP"

docker network create "$NET" >/dev/null || die "cannot create the network $NET"
docker run -d --name "$SERVER" --network "$NET" -v "$TMP/www:/www:ro" "$JOB_IMAGE" \
    python3 -m http.server 8000 --bind 0.0.0.0 --directory /www >/dev/null ||
    die "cannot start the HTTP server container"
URL=http://$SERVER:8000
docker run -d --name "$JOB" --hostname "$JOB" --network "$NET" -v "$SOCK:$SOCK" \
    "$JOB_IMAGE" tail -f /dev/null >/dev/null || die "cannot start the job container"
for p in cargo autopkgtest-virt-rdocker curl wget; do
    if docker exec "$JOB" sh -c "command -v $p" >/dev/null; then die "the job container has $p"; fi
done
up=""
for _ in $(seq 50); do
    if docker exec "$JOB" python3 -c "import urllib.request as u; u.urlopen('$URL/')" 2>/dev/null; then
        up=1; break
    fi
    sleep 0.2
done
[ -n "$up" ] || die "the job container cannot reach $URL"

ws=/__w/rdocker/rdocker
fc=/__w/_temp/_runner_file_commands
docker exec "$JOB" mkdir -p "$ws/tests/pkg" "$fc" || die "cannot make the runner's directories"
docker cp "$PKG" "$JOB:$ws/tests/pkg/rdocker-hello" >/dev/null || die "cannot copy $PKG"
for ref in main v0.1.0-corrupt v0.1.0; do
    ap=/__w/_actions/owner/rdocker/$ref
    docker exec "$JOB" mkdir -p "$ap/ci" &&
    docker cp "$TREE/action.yml" "$JOB:$ap/action.yml" >/dev/null &&
    docker cp "$TREE/ci/action" "$JOB:$ap/ci/action" >/dev/null || die "cannot copy the action into the job"
done

# run_action NAME REF REPO-VAR REF-VAR [VAR=VALUE...]: the action's step;
# status in RC.
run_action() {
    local name=$1 ref=$2 repo_var=$3 ref_var=$4 extra=() v
    shift 4
    for v in "${@:-INPUT_BUILD_FROM_SOURCE=false}"; do extra+=(-e "$v"); done
    docker exec -w "$ws" -e GITHUB_ACTIONS=true -e CI=true -e GITHUB_WORKSPACE="$ws" \
        -e RUNNER_TEMP=/__w/_temp -e GITHUB_ACTION_PATH="/__w/_actions/owner/rdocker/$ref" \
        -e GITHUB_SERVER_URL="$URL" -e GITHUB_ACTION_REPOSITORY="$repo_var" -e GITHUB_ACTION_REF="$ref_var" \
        -e GITHUB_STEP_SUMMARY="$fc/step_summary_$name" -e GITHUB_OUTPUT="$fc/set_output_$name" \
        -e INPUT_SOURCE=tests/pkg/rdocker-hello -e INPUT_IMAGE="$TESTBED_IMAGE" -e INPUT_RDOCKER_DEB= \
        -e INPUT_AUTOPKGTEST_ARGS= -e INPUT_RDOCKER_ARGS= \
        -e INPUT_DOCKER_RUN_ARGS= -e INPUT_APT_CACHE= -e INPUT_OUTPUT_DIR= "${extra[@]}" \
        "$JOB" bash "/__w/_actions/owner/rdocker/$ref/ci/action/run.sh" >"$LOGS/$name.log" 2>&1 &
    EXEC_PID=$!
    RC=0; wait "$EXEC_PID" || RC=$?
    EXEC_PID=""
}
FAILED=()
fail() { log "FAIL: $*"; FAILED+=("$1"); }
expect_line() {  # SCENARIO PATTERN(fixed) LOG
    if grep -qF -- "$2" "$3"; then log "  $1: says: $(grep -F -m1 -- "$2" "$3" | cut -c1-240)"
    else tail -15 "$3" >&2; fail "$1: no '$2' in $3"; fi
}
installed() { docker exec "$JOB" sh -c 'command -v autopkgtest-virt-rdocker' >/dev/null 2>&1; }

log "--- branch: a ref with no release"
t=$(date +%s)
run_action branch main "" ""
if [ "$RC" -eq 0 ]; then fail "branch: the step passed"; fi
expect_line branch "no curl and no wget: installing curl" "$LOGS/branch.log"
expect_line branch "no release asset at $URL/owner/rdocker/releases/download/main/SHA256SUMS: use a release tag in 'uses: owner/rdocker@vX.Y.Z'" "$LOGS/branch.log"
grep -qF "or set build-from-source: true" "$LOGS/branch.log" || fail "branch: no mention of build-from-source"
! installed || fail "branch: rdocker got installed"
log "branch: exit $RC in $(( $(date +%s) - t )) s"

log "--- source: build-from-source: true in a job without cargo"
run_action source v0.1.0 owner/rdocker v0.1.0 INPUT_BUILD_FROM_SOURCE=true
if [ "$RC" -eq 0 ]; then fail "source: the step passed"; fi
expect_line source "build-from-source: true, but there is no cargo" "$LOGS/source.log"
! installed || fail "source: rdocker got installed"

log "--- corrupt: the .deb does not match SHA256SUMS"
t=$(date +%s)
run_action corrupt v0.1.0-corrupt owner/rdocker v0.1.0-corrupt
if [ "$RC" -eq 0 ]; then fail "corrupt: the step passed"; fi
expect_line corrupt "checksum mismatch: $name from $URL/owner/rdocker/releases/download/v0.1.0-corrupt does not match" "$LOGS/corrupt.log"
! installed || fail "corrupt: rdocker got installed from a corrupt .deb"
log "corrupt: exit $RC in $(( $(date +%s) - t )) s"

log "--- release: ref v0.1.0, install and autopkgtest"
t=$(date +%s)
run_action release v0.1.0 owner/rdocker v0.1.0
[ "$RC" -eq 0 ] || { tail -40 "$LOGS/release.log" >&2; fail "release: the step exited with $RC (log: $LOGS/release.log)"; }
expect_line release "$name: sha256 matches SHA256SUMS of $URL/owner/rdocker/releases/download/v0.1.0" "$LOGS/release.log"
installs=$(sed -n "s/^rdocker-action: installed $name from the release v0.1.0 of owner\/rdocker in \([0-9]*\) s$/\1/p" "$LOGS/release.log")
[ -n "$installs" ] || fail "release: no 'installed $name from the release' line"
installed || fail "release: autopkgtest-virt-rdocker is not on PATH"
docker exec "$JOB" cat "$fc/step_summary_release" >"$LOGS/release-summary.md" 2>/dev/null || true
docker exec "$JOB" cat "$fc/set_output_release" >"$LOGS/release-output" 2>/dev/null || true
out=$(sed -n 's/^output-dir=//p' "$LOGS/release-output")
for test in greets as-root build-and-artifacts; do
    grep -Eq "^\| \`$test\` \| .*PASS" "$LOGS/release-summary.md" || fail "release: the step summary has no PASS row for $test"
    docker exec "$JOB" grep -Eq "^$test +PASS" "$out/summary" 2>/dev/null || fail "release: $out/summary has no '$test PASS'"
done
grep -qx 'exit-code=0' "$LOGS/release-output" || fail "release: GITHUB_OUTPUT has no exit-code=0"
# junit.xml: the action's output, valid XML, the summary's tests as its
# testcases, none failed; the packaged converter (what a GitLab job runs)
# writes the same.
junit=$(sed -n 's/^junit=//p' "$LOGS/release-output")
if [ "$junit" != "$out/junit.xml" ]; then
    fail "release: GITHUB_OUTPUT has junit='$junit', not $out/junit.xml"
else
    docker exec "$JOB" cat "$junit" >"$LOGS/junit.xml" || fail "release: no $junit in the job"
    docker exec "$JOB" python3 /usr/share/rdocker/autopkgtest_report.py junit "$out" >/dev/null &&
        docker exec "$JOB" cat "$junit" | cmp -s - "$LOGS/junit.xml" ||
        fail "release: the packaged /usr/share/rdocker/autopkgtest_report.py did not write the same junit.xml"
    cases=$(python3 -c '
import sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
bad = [c.get("name") for c in root.iter("testcase") if len(c.findall("failure") + c.findall("error") + c.findall("skipped"))]
print(" ".join(c.get("classname") + "/" + c.get("name") for c in root.iter("testcase")) + (" NOT-PASSED:" + ",".join(bad) if bad else ""))
' "$LOGS/junit.xml" 2>&1) || fail "release: junit.xml is not valid XML: $cases"
    want="rdocker-hello/greets rdocker-hello/as-root rdocker-hello/build-and-artifacts"
    [ "$cases" = "$want" ] || fail "release: junit.xml has testcases '$cases', not '$want'"
    log "  junit.xml: $cases"
fi
log "release: exit $RC in $(( $(date +%s) - t )) s"
log "  step summary:"; sed 's/^/e2e-action-release:     /' "$LOGS/release-summary.md" >&2

docker rm -f "$JOB" >/dev/null
left=$(docker ps -aq --filter "label=$RDOCKER_LABEL=1" --filter "label=$OWNER_HOST_LABEL=$JOB")
[ -z "$left" ] || fail "rdocker left testbeds behind: $left"

echo "e2e-action-release: rdocker installed from the release in ${installs:-?} s (download, sha256 check, apt-get update and install)"
echo "e2e-action-release: total $(( $(date +%s) - T0 )) s; logs in $LOGS"
if [ ${#FAILED[@]} -gt 0 ]; then
    echo "e2e-action-release: FAILED: ${FAILED[*]}" >&2
    exit 1
fi
echo "e2e-action-release: all passed"
