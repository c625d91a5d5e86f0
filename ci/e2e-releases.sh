#!/bin/bash
# End-to-end test: the autopkgtest that users run today, in a CI job that
# runs *inside a container* with only /var/run/docker.sock mounted (as
# ci/e2e-container-job.sh's "socket" scenario), through rdocker.
#
#   trixie   a job image from rdocker-test/debian:trixie with trixie's
#            autopkgtest (5.49.x) from the mirror and the rdocker .deb
#   sid      the same from rdocker-test/debian:sid: unstable's autopkgtest
#            (6.x), which reverts the testbed before every test
#
# In each job it checks that the .deb installed (dpkg says so, and rdocker
# runs), that the runner's autopkgtest is the release's (its version
# matches AUTOPKGTEST_RE_<RELEASE>), and runs three packages through
# rdocker:
#   tests/pkg/rdocker-hello    built in the testbed; its three tests pass,
#                              binaries/ and the artifact greeting copied
#                              up (to artifacts/greeting under 5.x, to
#                              artifacts/build-and-artifacts/greeting
#                              under 6.x, which keeps each test's apart)
#   tests/pkg/rdocker-five     five tiny tests (Depends: @, needs-root, no
#                              Depends, allow-stderr, a Test-Command); all
#                              pass.  Under 6.x a revert must have happened
#                              before each test: rdocker's -d line
#                              "testbed container is now ..." between the
#                              end of the one before and the start of each
#   tests/pkg/rdocker-service  with --init (systemd as PID 1); it passes
#
#   bench    (opt-in, not in the default set; ci/test.sh --slow) the sid job
#            image plus sid's docker CLI, and bench/releases_times.py: the
#            rdocker-five run under 6.x with rdocker and with the reference
#            autopkgtest-virt-docker --remote, 3 rounds alternating, and the
#            table of docs/performance.md.
#
# Usage: ci/e2e-releases.sh [--deb FILE] [SCENARIO...]
#   --deb FILE  the rdocker .deb to install in the job images (default:
#               target/deb/rdocker_*_amd64.deb, the bookworm build of
#               ci/build-deb.sh, which needs only libc and libgcc; built
#               with it when there is none)
#   SCENARIO    trixie, sid, bench (default: trixie sid)
#
# Environment: RDOCKER_TEST_TRIXIE_IMAGE (rdocker-test/debian:trixie),
# RDOCKER_TEST_SID_IMAGE (rdocker-test/debian:sid), both made by
# ci/provision.sh; RDOCKER_TEST_USER_IMAGE (rdocker-test/user:bookworm,
# the testbed), RDOCKER_TEST_SYSTEMD_IMAGE (rdocker-test/systemd:bookworm,
# the --init testbed); RDOCKER_TEST_LOGS (target/test-logs; logs go to
# its e2e-releases/ directory); AUTOPKGTEST_RE_TRIXIE ('^5\.49([.+~]|$)')
# and AUTOPKGTEST_RE_SID ('^6\.'), the versions expected (extended
# regexps).
#
# Images it builds and caches (rebuilt only when their inputs change: the
# .deb's sha256, the Dockerfile, the base image):
#   rdocker-test/ci-job:trixie, rdocker-test/ci-job:sid   autopkgtest + rdocker
#   rdocker-test/ci-job:sid-docker-cli    the same plus sid's docker CLI (bench)
# Needs root (or the docker group), the local daemon at /var/run/docker.sock
# and network access from containers to the mirror.  Exits non-zero on any
# failure; never skips.  Every container it starts is removed on exit, and
# so are the testbeds of its jobs.
set -euo pipefail

log() { echo "e2e-releases: $*" >&2; }
die() { log "error: $*"; exit 1; }
usage() { sed -n '2,/^[^#]/{/^#/{s/^# \{0,1\}//;p}}' "$0"; }

TREE=$(cd "$(dirname "$0")/.." && pwd)
E2E_DIR=$TREE/ci/e2e
SOCK=/var/run/docker.sock
TRIXIE_BASE=${RDOCKER_TEST_TRIXIE_IMAGE:-rdocker-test/debian:trixie}
SID_BASE=${RDOCKER_TEST_SID_IMAGE:-rdocker-test/debian:sid}
TESTBED_IMAGE=${RDOCKER_TEST_USER_IMAGE:-rdocker-test/user:bookworm}
SYSTEMD_IMAGE=${RDOCKER_TEST_SYSTEMD_IMAGE:-rdocker-test/systemd:bookworm}
AUTOPKGTEST_RE_TRIXIE=${AUTOPKGTEST_RE_TRIXIE:-'^5\.49([.+~]|$)'}
AUTOPKGTEST_RE_SID=${AUTOPKGTEST_RE_SID:-'^6\.'}
LOGS=${RDOCKER_TEST_LOGS:-$TREE/target/test-logs}/e2e-releases
KEY_LABEL=org.debian.autopkgtest.rdocker.e2e.key
JOB_LABEL=org.debian.autopkgtest.rdocker.e2e.job
RDOCKER_LABEL=org.debian.autopkgtest.rdocker
OWNER_HOST_LABEL=org.debian.autopkgtest.rdocker.owner-host
# --init's docker run options (as ci/test.sh's for the upstream system
# tests): systemd needs the cgroup tree, writable and the host's on cgroup v2.
if [ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ]; then
    INIT_OPTIONS=(--tmpfs /run --tmpfs /run/lock --cgroupns host -v /sys/fs/cgroup:/sys/fs/cgroup)
else
    INIT_OPTIONS=(--tmpfs /run --tmpfs /run/lock -v /sys/fs/cgroup:/sys/fs/cgroup:ro)
fi

DEB=""
SCENARIOS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --deb) [ $# -ge 2 ] || die "--deb needs a file"; DEB=$2; shift 2 ;;
        --deb=*) DEB=${1#*=}; shift ;;
        -h|--help) usage; exit 0 ;;
        trixie|sid|bench) SCENARIOS+=("$1"); shift ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done
[ ${#SCENARIOS[@]} -gt 0 ] || SCENARIOS=(trixie sid)

RUN_ID="$$-$(head -c4 /dev/urandom | od -An -tx1 | tr -d ' \n')"
JOBS=()
EXEC_PID=""
AT_RC=0
TMP=$(mktemp -d)
rm_containers() {
    docker ps -aq "$@" 2>/dev/null | xargs -r docker rm -f >/dev/null 2>&1
}
cleanup() {
    local rc=$? j
    set +e
    [ -z "$EXEC_PID" ] || kill "$EXEC_PID" 2>/dev/null
    for j in "${JOBS[@]}"; do
        docker rm -f "$j" >/dev/null 2>&1
        rm_containers --filter "label=$RDOCKER_LABEL=1" --filter "label=$OWNER_HOST_LABEL=$j"
        rm_containers --filter "label=$JOB_LABEL=$j"
    done
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- preconditions: fail, never skip ----------------------------------------
command -v docker >/dev/null || die "no docker CLI on this machine (the script drives the daemon with it)"
if [ -n "${DOCKER_HOST:-}" ] && [ "$DOCKER_HOST" != "unix://$SOCK" ]; then
    die "DOCKER_HOST=$DOCKER_HOST: these scenarios mount the local socket $SOCK into the job container; unset DOCKER_HOST"
fi
[ -S "$SOCK" ] || die "no Docker socket at $SOCK: start dockerd (ci/provision.sh does)"
if ! server=$(docker version --format '{{.Server.Version}} (API {{.Server.APIVersion}})' 2>&1); then
    die "the Docker daemon at $SOCK is unreachable: ${server//$'\n'/ }"
fi
log "daemon: Docker $server at $SOCK"
need=("$TESTBED_IMAGE" "$SYSTEMD_IMAGE")
for s in "${SCENARIOS[@]}"; do
    case "$s" in trixie) need+=("$TRIXIE_BASE") ;; sid|bench) need+=("$SID_BASE") ;; esac
done
for img in "${need[@]}"; do
    docker image inspect "$img" >/dev/null 2>&1 ||
        die "no local image $img (no registry is used); build it with ci/provision.sh"
done
for p in rdocker-hello rdocker-five rdocker-service; do
    [ -d "$TREE/tests/pkg/$p/debian" ] || die "no test package at $TREE/tests/pkg/$p"
done

if [ -z "$DEB" ]; then
    shopt -s nullglob
    debs=("$TREE"/target/deb/rdocker_*_amd64.deb)
    shopt -u nullglob
    if [ ${#debs[@]} -eq 0 ]; then
        log "no rdocker .deb in target/deb; building it with ci/build-deb.sh"
        "$TREE/ci/build-deb.sh" >"$TMP/build-deb.log" 2>&1 ||
            { tail -30 "$TMP/build-deb.log" >&2; die "ci/build-deb.sh failed"; }
        debs=("$TREE"/target/deb/rdocker_*_amd64.deb)
    fi
    [ ${#debs[@]} -eq 1 ] || die "several .debs in target/deb (${debs[*]}); choose one with --deb"
    DEB=${debs[0]}
fi
[ -f "$DEB" ] || die "no such .deb: $DEB"
DEB_VERSION=$(dpkg-deb -f "$DEB" Version) || die "$DEB is not a .deb"
log "rdocker .deb: $DEB ($DEB_VERSION; Depends: $(dpkg-deb -f "$DEB" Depends))"
mkdir -p "$LOGS"
LOGS=$(cd "$LOGS" && pwd)

now() { date +%s; }
T0=$(now)

# --- images ------------------------------------------------------------------
sha() { sha256sum "$1" | cut -d' ' -f1; }
image_id() { docker image inspect --format '{{.Id}}' "$1"; }
# build_image TAG DOCKERFILE KEY [--build-arg ...] -- FILE...: as
# ci/e2e-container-job.sh's (skipped when TAG carries KEY already).
build_image() {
    local tag=$1 dockerfile=$2 key=$3; shift 3
    local args=()
    while [ "$1" != -- ]; do args+=("$1"); shift; done; shift
    local have old_id blog="$LOGS/build-${tag//[:\/]/_}.log"
    have=$(docker image inspect --format "{{index .Config.Labels \"$KEY_LABEL\"}}" "$tag" 2>/dev/null || true)
    old_id=$(image_id "$tag" 2>/dev/null || true)
    if [ "$have" = "$key" ]; then
        log "image $tag is up to date (key ${key:0:12})"
        return 0
    fi
    local ctx="$TMP/ctx-${tag//[:\/]/_}" t
    mkdir -p "$ctx"
    cp "$dockerfile" "$ctx/Dockerfile"
    [ $# -eq 0 ] || cp "$@" "$ctx/"
    log "building image $tag (key ${key:0:12}${have:+, was ${have:0:12}})"
    t=$(now)
    if ! DOCKER_BUILDKIT=0 docker build "${args[@]}" --label "$KEY_LABEL=$key" \
            -t "$tag" "$ctx" >"$blog" 2>&1; then
        tail -30 "$blog" >&2
        die "building $tag failed (log: $blog); if apt-get failed, can containers reach the mirror?"
    fi
    log "built $tag in $(( $(now) - t )) s"
    if [ -n "$old_id" ] && [ "$old_id" != "$(image_id "$tag")" ] &&
            [ "$(docker image inspect --format '{{len .RepoTags}}' "$old_id" 2>/dev/null)" = 0 ]; then
        docker rmi "$old_id" >/dev/null 2>&1 && log "removed the superseded image ${old_id:7:12}"
    fi
    return 0
}

cp "$DEB" "$TMP/rdocker.deb"
DEB_SHA=$(sha "$TMP/rdocker.deb")
# job_image RELEASE: rdocker-test/ci-job:RELEASE, from its debootstrapped base.
job_image() {
    local release=$1 base tag=rdocker-test/ci-job:$1 key
    case "$release" in trixie) base=$TRIXIE_BASE ;; sid) base=$SID_BASE ;; esac
    key=$(printf '%s\n' "deb=$DEB_SHA" "dockerfile=$(sha "$E2E_DIR/ci-job-release.Dockerfile")" \
        "base=$(image_id "$base")" | sha256sum | cut -d' ' -f1)
    build_image "$tag" "$E2E_DIR/ci-job-release.Dockerfile" "$key" \
        --build-arg "BASE=$base" --label "org.debian.autopkgtest.rdocker.e2e.deb-sha256=$DEB_SHA" \
        -- "$TMP/rdocker.deb"
}
cli_image() {
    local job=rdocker-test/ci-job:sid tag=rdocker-test/ci-job:sid-docker-cli key
    key=$(printf '%s\n' "dockerfile=$(sha "$E2E_DIR/ci-job-release-docker-cli.Dockerfile")" \
        "job=$(image_id "$job")" | sha256sum | cut -d' ' -f1)
    build_image "$tag" "$E2E_DIR/ci-job-release-docker-cli.Dockerfile" "$key" \
        --build-arg "JOB_IMAGE=$job" --
}

# --- one job -----------------------------------------------------------------
# start_job NAME IMAGE: a socket-mount job container, the test packages in /src.
start_job() {
    local name=$1 image=$2 p
    JOBS+=("$name")
    docker run -d --name "$name" --hostname "$name" --label "$JOB_LABEL=$name" \
        -v "$SOCK:$SOCK" "$image" tail -f /dev/null >/dev/null || die "cannot start the job container $name"
    docker exec "$name" mkdir -p /src || die "cannot exec in the job container $name"
    for p in rdocker-hello rdocker-five rdocker-service; do
        docker cp "$TREE/tests/pkg/$p" "$name:/src/$p" >/dev/null || die "cannot copy tests/pkg/$p into $name"
    done
}

stop_job() {
    local name=$1 ids
    docker rm -f "$name" >/dev/null
    for _ in 1 2 3 4 5; do
        ids=$(docker ps -aq --filter "label=$RDOCKER_LABEL=1" --filter "label=$OWNER_HOST_LABEL=$name")
        [ -n "$ids" ] || return 0
        sleep 1
    done
    log "rdocker left containers behind for $name: $(tr "\n" " " <<<"$ids")"
    rm_containers --filter "label=$RDOCKER_LABEL=1" --filter "label=$OWNER_HOST_LABEL=$name"
    return 1
}

# run_autopkgtest NAME LOG ARGS...: autopkgtest ARGS in the job container, as
# a CI step; its exit status in AT_RC, its wall time in AT_SECONDS.
run_autopkgtest() {
    local name=$1 logf=$2 t; shift 2
    t=$(now)
    docker exec "$name" autopkgtest "$@" >"$logf" 2>&1 &
    EXEC_PID=$!
    AT_RC=0
    wait "$EXEC_PID" || AT_RC=$?
    EXEC_PID=""
    AT_SECONDS=$(( $(now) - t ))
}

# expect_pass LOG RC TEST...: autopkgtest exited 0 and each TEST has a PASS line.
expect_pass() {
    local logf=$1 rc=$2 ok=0 t; shift 2
    if [ "$rc" -ne 0 ]; then
        tail -40 "$logf" >&2
        log "autopkgtest exited with $rc (log: $logf)"; ok=1
    fi
    for t in "$@"; do
        if ! grep -Eq "^$t +PASS" "$logf"; then
            log "test $t did not pass (log: $logf):"
            grep -E '^[^ ]+ +(PASS|FAIL|SKIP|FLAKY)' "$logf" >&2 || true
            ok=1
        fi
    done
    return $ok
}

# reverts_before_tests LOG: for each test, in order, "NAME yes" when rdocker
# handed out a new testbed (a revert) after the test before it ended and
# before it started, else "NAME no".
reverts_before_tests() {
    awk '
        /autopkgtest-virt-rdocker: DBG: testbed container is now / { reverted = 1 }
        /^autopkgtest \[[0-9:]+\]: test [^ ]+: \[-+$/ {
            name = $4; sub(/:$/, "", name)
            print name, (reverted ? "yes" : "no"); reverted = 0
        }' "$1"
}

scenario_release() {
    local release=$1 re name="rdocker-e2e-$RUN_ID-$1" ok=0 v got logf tests line art
    case "$release" in trixie) re=$AUTOPKGTEST_RE_TRIXIE ;; sid) re=$AUTOPKGTEST_RE_SID ;; esac
    job_image "$release"
    start_job "$name" "rdocker-test/ci-job:$release"
    docker exec "$name" sh -c '! command -v docker' >/dev/null || die "a docker CLI in the job container"
    log "  job on $(docker exec "$name" sh -c '. /etc/os-release; echo "$PRETTY_NAME"')"

    # The .deb installed, and it runs here.
    got=$(docker exec "$name" dpkg-query -W -f '${Status} ${Version}' rdocker 2>&1 || true)
    if [ "$got" != "install ok installed $DEB_VERSION" ]; then
        log "rdocker in the $release job: '$got', not 'install ok installed $DEB_VERSION'"; ok=1
    elif ! v=$(docker exec "$name" autopkgtest-virt-rdocker --version 2>&1); then
        log "the installed autopkgtest-virt-rdocker does not run on $release: $v"; ok=1
    else
        log "  rdocker $DEB_VERSION installed: $v"
    fi

    # The runner's autopkgtest is the release's.
    v=$(docker exec "$name" dpkg-query -W -f '${Version}' autopkgtest 2>&1 || true)
    if ! grep -Eq "$re" <<<"$v"; then
        log "autopkgtest in the $release job is '$v', expected /$re/: has $release's autopkgtest changed? (set AUTOPKGTEST_RE_${release^^})"; ok=1
    else
        log "  autopkgtest $v (expected /$re/)"
    fi
    echo "$release $v" >>"$LOGS/autopkgtest-versions"

    # rdocker-hello: a build in the testbed, copies both ways.
    logf="$LOGS/$release-hello.log"
    run_autopkgtest "$name" "$logf" /src/rdocker-hello/ -o /tmp/out-hello -- rdocker -d "$TESTBED_IMAGE"
    log "  rdocker-hello: exit $AT_RC in $AT_SECONDS s"
    expect_pass "$logf" "$AT_RC" greets as-root build-and-artifacts || ok=1
    line=$(grep -m1 'copies go through the Engine API' "$logf" || true)
    if ! grep -q 'rdocker runs inside a container' <<<"$line"; then
        log "rdocker did not say it copies through the Engine API as it runs inside a container: '$line'"; ok=1
    fi
    if ! docker exec "$name" sh -c 'ls /tmp/out-hello/binaries/rdocker-hello*.deb' >/dev/null 2>&1; then
        log "no binaries/rdocker-hello*.deb in the output dir"; ok=1
    fi
    # 6.x copies each test's artifacts to artifacts/TEST/, 5.x all to artifacts/.
    case "$v" in 6.*) art=artifacts/build-and-artifacts/greeting ;; *) art=artifacts/greeting ;; esac
    if ! docker exec "$name" grep -qx 'hello, artifacts' "/tmp/out-hello/$art"; then
        log "$art in the output dir does not hold 'hello, artifacts' (autopkgtest $v): $(docker exec "$name" find /tmp/out-hello/artifacts 2>&1 | tr '\n' ' ')"; ok=1
    fi

    # rdocker-five: package installs, a test without it, reverts.
    logf="$LOGS/$release-five.log"
    tests=(runs as-root without-package on-stderr command1)
    run_autopkgtest "$name" "$logf" /src/rdocker-five/ -o /tmp/out-five -- rdocker -d "$TESTBED_IMAGE"
    log "  rdocker-five: exit $AT_RC in $AT_SECONDS s"
    expect_pass "$logf" "$AT_RC" "${tests[@]}" || ok=1
    reverts_before_tests "$logf" >"$TMP/reverts"
    log "  revert before each test: $(tr '\n' ' ' <"$TMP/reverts")"
    if [ "$(cut -d' ' -f1 "$TMP/reverts" | tr '\n' ' ')" != "${tests[*]} " ]; then
        log "the tests did not start in the order ${tests[*]} (log: $logf)"; ok=1
    fi
    case "$v" in
        6.*)
            # 6.x: before every test.
            if grep -q ' no$' "$TMP/reverts"; then
                log "autopkgtest $v: no revert before $(grep ' no$' "$TMP/reverts" | cut -d' ' -f1 | tr '\n' ' ')(log: $logf)"; ok=1
            fi ;;
        *)
            # 5.x: when a test does not need what the last one installed.
            if ! grep -qx 'without-package yes' "$TMP/reverts"; then
                log "autopkgtest $v: no revert before without-package (log: $logf)"; ok=1
            fi ;;
    esac

    # rdocker-service: --init, systemd as PID 1 (-B: nothing to build).
    logf="$LOGS/$release-service.log"
    run_autopkgtest "$name" "$logf" -B /src/rdocker-service/ -- rdocker -d --init "$SYSTEMD_IMAGE" "${INIT_OPTIONS[@]}"
    log "  rdocker-service (--init): exit $AT_RC in $AT_SECONDS s"
    expect_pass "$logf" "$AT_RC" services || ok=1

    stop_job "$name" || ok=1
    return $ok
}

scenario_bench() {
    job_image sid
    cli_image
    python3 "$TREE/bench/releases_times.py" --job-image rdocker-test/ci-job:sid \
        --cli-image rdocker-test/ci-job:sid-docker-cli --testbed "$TESTBED_IMAGE" \
        --package "$TREE/tests/pkg/rdocker-five" --rounds 3 --logs "$LOGS/bench" \
        --label "$JOB_LABEL=rdocker-e2e-$RUN_ID-bench"
}

# --- run -------------------------------------------------------------------------
rm -f "$LOGS/autopkgtest-versions"
FAILED=()
SUMMARY=()
for s in "${SCENARIOS[@]}"; do
    case "$s" in
        trixie) title="trixie's autopkgtest in a socket job"; fn="scenario_release trixie" ;;
        sid) title="sid's autopkgtest in a socket job"; fn="scenario_release sid" ;;
        bench) title="timing: rdocker-five under sid's autopkgtest, rdocker and autopkgtest-virt-docker"; fn=scenario_bench ;;
    esac
    log "--- $title"
    t=$(now)
    if $fn; then verdict=PASS; else verdict=FAIL; FAILED+=("$s"); fi
    SUMMARY+=("e2e-releases: $title $verdict in $(( $(now) - t )) s")
    log "$title $verdict in $(( $(now) - t )) s"
done

echo
printf '%s\n' "${SUMMARY[@]}"
[ ! -s "$LOGS/autopkgtest-versions" ] || sed 's/^/e2e-releases: autopkgtest on /' "$LOGS/autopkgtest-versions"
echo "e2e-releases: total $(( $(now) - T0 )) s; logs in $LOGS"
if [ ${#FAILED[@]} -gt 0 ]; then
    echo "e2e-releases: FAILED: ${FAILED[*]}" >&2
    exit 1
fi
echo "e2e-releases: all scenarios passed"
