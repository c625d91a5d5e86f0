#!/bin/bash
# End-to-end test: a CI job that runs *inside a container* and tests a
# package with autopkgtest through rdocker, for real, on the local daemon.
#
#   socket   GitHub Actions' "container:" job: the job container gets only
#            /var/run/docker.sock from the host.  Its own filesystem (its
#            /tmp, the autopkgtest output dir) is invisible to the daemon.
#            "autopkgtest /src/rdocker-hello/ -- rdocker -d IMAGE" must pass,
#            rdocker must choose Engine API copies by itself (no --remote),
#            the built .debs must be copied up (binaries/) and the test's
#            artifact copied out (artifacts/greeting).
#   reference  the same job with the reference autopkgtest-virt-docker (the
#            job image plus a docker CLI), without --remote: it must FAIL.
#   tcp      GitLab's docker:dind shape: no socket in the job container, the
#            daemon at DOCKER_HOST=tcp://127.0.0.1:PORT (a socat on the host
#            forwarding to the local socket; the job uses --network host).
#            The same checks as "socket".  (socat needs a long -t: see
#            scenario_tcp.)
#   action   the GitHub Action's script (ci/action/run.sh, as action.yml runs
#            it) in a socket job, with the GITHUB_* variables a runner sets
#            in a container job (workspace /__w/rdocker/rdocker, file
#            commands under /__w/_temp/_runner_file_commands): the step
#            passes, its job summary lists each test of rdocker-hello as
#            PASS with a duration, its log is folded into ::group::s, and
#            the output-dir output names the output directory.
#   apt-cache  the Action's script with its input apt-cache, in a GitHub
#            container job on a network of its own (github_network_<id>),
#            twice: the second job is a new container on a new network,
#            given the first one's cache directory as actions/cache
#            restores it.  Both pass; the first fetches .debs from the
#            mirror, the second none: rdocker's -d summary at close
#            ("apt cache: N .debs from the cache (..), M fetched and kept")
#            says M = 0 and N > 0.  Prints both runs' counts and times.
#   reference-remote  (opt-in, not in the default set) the reference with
#            --remote in the socket job, for comparison.
#
# How the reference fails (observed with autopkgtest 5.28, the host's
# docker 28 CLI copied into the job image, which negotiates API 1.41 with
# dockerd 20.10 by itself): without --remote it makes its shared dir with
# mkdtemp in the job container's /tmp and runs the testbed with
# "--volume /tmp/autopkgtest-virt-docker.shared.X:<same>".  The daemon
# resolves that path on the *host*, creates an empty directory there, and
# the testbed makes its downtmp in it; the job container then copies
# wrapper.sh into its own /tmp/.../downtmp, which does not exist there:
#   FileNotFoundError: [Errno 2] No such file or directory:
#     '/tmp/autopkgtest-virt-docker.shared.9durn50c/downtmp/wrapper.sh'
#   autopkgtest [13:13:16]: ERROR: testbed failure: unexpected eof from the testbed
# autopkgtest exits 16 about 10 s in, and the host is left with a stray
# /tmp/autopkgtest-virt-docker.shared.X/downtmp/ (removed here).  The run asserts
# that line (REFERENCE_FAILURE below) and prints it.  With --remote the
# reference copies through docker exec and passes (scenario
# reference-remote: 180 s against rdocker's 130 s, on a loaded machine).
#
# Usage: ci/e2e-container-job.sh [--deb FILE] [SCENARIO...]
#   --deb FILE  the rdocker .deb to install in the job image (default:
#               target/deb/rdocker_*_amd64.deb; built with ci/build-deb.sh
#               when there is none)
#   SCENARIO    socket, reference, tcp, action, apt-cache, reference-remote
#               (default: socket reference tcp action apt-cache)
#
# Environment: RDOCKER_TEST_BASE_IMAGE (rdocker-test/debian:bookworm),
# RDOCKER_TEST_USER_IMAGE (rdocker-test/user:bookworm, the testbed),
# RDOCKER_TEST_LOGS (target/test-logs; logs go to its e2e/ directory),
# RDOCKER_E2E_TCP_PORT (23750), RDOCKER_E2E_JOB_IMAGE (the job image's tag,
# rdocker-test/ci-job:bookworm; the docker CLI one adds -docker-cli).
#
# Images it builds and caches (rebuilt only when their inputs change: the
# .deb's sha256, the Dockerfile, the base image, the copied docker CLI):
#   rdocker-test/ci-job:bookworm             autopkgtest + rdocker, no docker
#   rdocker-test/ci-job:bookworm-docker-cli  the same plus the host's docker
# Needs root (or the docker group), the local daemon at /var/run/docker.sock,
# socat, and network access from containers to deb.debian.org (image build,
# build-dependencies in the testbed).  Exits non-zero on any failure; never
# skips.  Every container it starts is removed on exit, and so are the
# testbeds of its jobs (found by rdocker's owner-host label, which is the
# job container's unique hostname).
set -euo pipefail

log() { echo "e2e: $*" >&2; }
die() { log "error: $*"; exit 1; }
usage() { sed -n '2,/^[^#]/{/^#/{s/^# \{0,1\}//;p}}' "$0"; }

TREE=$(cd "$(dirname "$0")/.." && pwd)
E2E_DIR=$TREE/ci/e2e
SOCK=/var/run/docker.sock
BASE_IMAGE=${RDOCKER_TEST_BASE_IMAGE:-rdocker-test/debian:bookworm}
TESTBED_IMAGE=${RDOCKER_TEST_USER_IMAGE:-rdocker-test/user:bookworm}
JOB_IMAGE=${RDOCKER_E2E_JOB_IMAGE:-rdocker-test/ci-job:bookworm}
CLI_IMAGE=$JOB_IMAGE-docker-cli
PKG=$TREE/tests/pkg/rdocker-hello
LOGS=${RDOCKER_TEST_LOGS:-$TREE/target/test-logs}/e2e
TCP_PORT=${RDOCKER_E2E_TCP_PORT:-23750}
KEY_LABEL=org.debian.autopkgtest.rdocker.e2e.key
JOB_LABEL=org.debian.autopkgtest.rdocker.e2e.job
RDOCKER_LABEL=org.debian.autopkgtest.rdocker
OWNER_HOST_LABEL=org.debian.autopkgtest.rdocker.owner-host
# What the reference's failure must look like (an extended regexp).
REFERENCE_FAILURE="FileNotFoundError: .*autopkgtest-virt-docker\.shared\.[^/]*/downtmp/"

DEB=""
SCENARIOS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --deb) [ $# -ge 2 ] || die "--deb needs a file"; DEB=$2; shift 2 ;;
        --deb=*) DEB=${1#*=}; shift ;;
        -h|--help) usage; exit 0 ;;
        socket|reference|tcp|action|apt-cache|reference-remote) SCENARIOS+=("$1"); shift ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done
[ ${#SCENARIOS[@]} -gt 0 ] || SCENARIOS=(socket reference tcp action apt-cache)

# --- state for cleanup -------------------------------------------------------
RUN_ID="$$-$(head -c4 /dev/urandom | od -An -tx1 | tr -d ' \n')"
JOBS=()          # job container names (= their hostnames)
NETS=()          # networks made for jobs (github_network_<id>)
SOCAT_PID=""
EXEC_PID=""      # a running "docker exec" of a step
AT_RC=0
TMP=$(mktemp -d)
stop_socat() {
    if [ -n "$SOCAT_PID" ]; then
        kill -- "-$SOCAT_PID" 2>/dev/null || kill "$SOCAT_PID" 2>/dev/null
        wait "$SOCAT_PID" 2>/dev/null
        SOCAT_PID=""
    fi
    return 0
}
# rm_containers FILTER...: remove the containers "docker ps" lists with them.
rm_containers() {
    docker ps -aq "$@" 2>/dev/null | xargs -r docker rm -f >/dev/null 2>&1
}
cleanup() {
    local rc=$? j
    set +e
    [ -z "$EXEC_PID" ] || kill "$EXEC_PID" 2>/dev/null
    stop_socat
    for j in "${JOBS[@]}"; do
        # The job first: a killed rdocker cannot remove its testbed, so its
        # testbeds go after it, found by the owner-host label.
        docker rm -f "$j" >/dev/null 2>&1
        rm_containers --filter "label=$RDOCKER_LABEL=1" --filter "label=$OWNER_HOST_LABEL=$j"
        rm_containers --filter "label=$JOB_LABEL=$j"
        docker network ls -q --filter "label=$OWNER_HOST_LABEL=$j" | xargs -r docker network rm >/dev/null 2>&1
    done
    for n in "${NETS[@]}"; do docker network rm "$n" >/dev/null 2>&1; done
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
for img in "$BASE_IMAGE" "$TESTBED_IMAGE"; do
    docker image inspect "$img" >/dev/null 2>&1 ||
        die "no local image $img (no registry is used); build it with ci/provision.sh"
done
[ -d "$PKG/debian" ] || die "no test package at $PKG"
for s in "${SCENARIOS[@]}"; do
    if [ "$s" = tcp ]; then
        command -v socat >/dev/null || die "the tcp scenario needs socat: apt-get install -y socat"
    fi
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
mkdir -p "$LOGS"
LOGS=$(cd "$LOGS" && pwd)

now() { date +%s; }
T0=$(now)

# --- images ----------------------------------------------------------------
# build_image TAG DOCKERFILE KEY [--build-arg ...] -- FILE...  (files go into
# the context).  Skipped when TAG carries KEY already.
build_image() {
    local tag=$1 dockerfile=$2 key=$3; shift 3
    local args=()
    while [ "$1" != -- ]; do args+=("$1"); shift; done; shift
    local have old_id
    have=$(docker image inspect --format "{{index .Config.Labels \"$KEY_LABEL\"}}" "$tag" 2>/dev/null || true)
    old_id=$(image_id "$tag" 2>/dev/null || true)
    if [ "$have" = "$key" ]; then
        log "image $tag is up to date (key ${key:0:12})"
        return 0
    fi
    local ctx="$TMP/ctx-${tag//[:\/]/_}" t
    mkdir -p "$ctx"
    cp "$dockerfile" "$ctx/Dockerfile"
    cp "$@" "$ctx/"
    log "building image $tag (key ${key:0:12}${have:+, was ${have:0:12}})"
    t=$(now)
    # The legacy builder: the docker CLI may have no buildx, and FROM a
    # local image needs no registry with it.
    if ! DOCKER_BUILDKIT=0 docker build "${args[@]}" --label "$KEY_LABEL=$key" \
            -t "$tag" "$ctx" >"$LOGS/build-${tag//[:\/]/_}.log" 2>&1; then
        tail -30 "$LOGS/build-${tag//[:\/]/_}.log" >&2
        die "building $tag failed (log: $LOGS/build-${tag//[:\/]/_}.log)"
    fi
    log "built $tag in $(( $(now) - t )) s"
    # The image this one replaces, now untagged: ours, so remove it (unless
    # a container still uses it).
    if [ -n "$old_id" ] && [ "$old_id" != "$(image_id "$tag")" ] &&
            [ "$(docker image inspect --format '{{len .RepoTags}}' "$old_id" 2>/dev/null)" = 0 ]; then
        docker rmi "$old_id" >/dev/null 2>&1 && log "removed the superseded image ${old_id:7:12}"
    fi
    return 0
}
sha() { sha256sum "$1" | cut -d' ' -f1; }
image_id() { docker image inspect --format '{{.Id}}' "$1"; }

cp "$DEB" "$TMP/rdocker.deb"
DEB_SHA=$(sha "$TMP/rdocker.deb")
log "rdocker .deb: $DEB (sha256 ${DEB_SHA:0:12})"
job_key=$(printf '%s\n' "deb=$DEB_SHA" "dockerfile=$(sha "$E2E_DIR/ci-job.Dockerfile")" \
    "base=$(image_id "$BASE_IMAGE")" | sha256sum | cut -d' ' -f1)
build_image "$JOB_IMAGE" "$E2E_DIR/ci-job.Dockerfile" "$job_key" \
    --build-arg "BASE=$BASE_IMAGE" --label "org.debian.autopkgtest.rdocker.e2e.deb-sha256=$DEB_SHA" \
    -- "$TMP/rdocker.deb"
# The job image must have no docker CLI at all.
if out=$(docker run --rm "$JOB_IMAGE" sh -c 'command -v docker' 2>&1); then
    die "$JOB_IMAGE has a docker CLI ($out); it must not"
fi

need_cli=""
for s in "${SCENARIOS[@]}"; do case "$s" in reference*) need_cli=1 ;; esac; done
if [ -n "$need_cli" ]; then
    cli=$(readlink -f "$(command -v docker)")
    cp "$cli" "$TMP/docker"
    cli_key=$(printf '%s\n' "cli=$(sha "$TMP/docker")" \
        "dockerfile=$(sha "$E2E_DIR/ci-job-docker-cli.Dockerfile")" \
        "job=$(image_id "$JOB_IMAGE")" | sha256sum | cut -d' ' -f1)
    build_image "$CLI_IMAGE" "$E2E_DIR/ci-job-docker-cli.Dockerfile" "$cli_key" \
        --build-arg "JOB_IMAGE=$JOB_IMAGE" -- "$TMP/docker"
fi
T_IMAGES=$(( $(now) - T0 ))
log "images ready in $T_IMAGES s"

# --- one job -----------------------------------------------------------------
# start_job NAME IMAGE DOCKER-RUN-ARGS...: a job container as a CI runner
# makes one (idle process, then "docker exec" per step), with the test
# package copied into its /src (the runner's checkout of the workspace).
start_job() {
    local name=$1 image=$2; shift 2
    JOBS+=("$name")
    # (Scenarios run as "if" conditions, where set -e does not apply:
    # every step checks for itself.)
    docker run -d --name "$name" --hostname "$name" --label "$JOB_LABEL=$name" \
        "$@" "$image" tail -f /dev/null >/dev/null || die "cannot start the job container $name"
    docker exec "$name" mkdir -p /src || die "cannot exec in the job container $name"
    docker cp "$PKG" "$name:/src/rdocker-hello" || die "cannot copy $PKG into $name"
}

# stop_job NAME: remove it, then make sure its testbeds are gone.  Fails when
# rdocker left one behind.
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

# check_rdocker_run NAME LOG RC WHY-PATTERN: the checks of a passing run.
check_rdocker_run() {
    local name=$1 logf=$2 rc=$3 why=$4 ok=0 line
    if [ "$rc" -ne 0 ]; then
        tail -40 "$logf" >&2
        log "autopkgtest exited with $rc (log: $logf)"; ok=1
    fi
    line=$(grep -m1 'copies go through the Engine API' "$logf" || true)
    if [ -z "$line" ]; then
        log "rdocker did not say it copies through the Engine API (log: $logf)"; ok=1
    else
        log "  $line"
        if ! grep -Eq "copies go through the Engine API: .*$why" <<<"$line"; then
            log "rdocker gave another reason than /$why/"; ok=1
        fi
    fi
    if ! docker exec "$name" sh -c 'ls /tmp/out/binaries/rdocker-hello*.deb' >"$TMP/ls" 2>&1; then
        log "no binaries/rdocker-hello*.deb in the output dir: $(cat "$TMP/ls")"; ok=1
    else
        log "  copied up: $(xargs -n1 basename <"$TMP/ls" | tr '\n' ' ')"
    fi
    if ! docker exec "$name" grep -qx 'hello, artifacts' /tmp/out/artifacts/greeting; then
        log "artifacts/greeting does not hold 'hello, artifacts'"; ok=1
    fi
    if ! grep -Eq '^greets +PASS' "$logf" || ! grep -Eq '^as-root +PASS' "$logf" ||
            ! grep -Eq '^build-and-artifacts +PASS' "$logf"; then
        log "not all three tests passed:"; grep -E ' (PASS|FAIL|SKIP|FLAKY)' "$logf" >&2 || true; ok=1
    fi
    rm -rf "${logf%.log}-out"
    docker cp "$name:/tmp/out" "${logf%.log}-out" >/dev/null 2>&1 || true
    return $ok
}

# run_autopkgtest NAME LOG VIRT-ARGS...: in the job container, as a CI step;
# its exit status in AT_RC.  In the background, so that a signal reaches
# our trap at once rather than after the step.
run_autopkgtest() {
    local name=$1 logf=$2; shift 2
    docker exec "$name" autopkgtest /src/rdocker-hello/ -o /tmp/out -- "$@" \
        >"$logf" 2>&1 &
    EXEC_PID=$!
    AT_RC=0
    wait "$EXEC_PID" || AT_RC=$?
    EXEC_PID=""
}

scenario_socket() {
    local name="rdocker-e2e-$RUN_ID-socket" logf="$LOGS/socket-rdocker.log" rc ok=0
    start_job "$name" "$JOB_IMAGE" -v "$SOCK:$SOCK"
    docker exec "$name" sh -c '! command -v docker' >/dev/null || die "a docker CLI in the job container"
    run_autopkgtest "$name" "$logf" rdocker -d "$TESTBED_IMAGE"
    rc=$AT_RC
    check_rdocker_run "$name" "$logf" "$rc" 'rdocker runs inside a container' || ok=1
    stop_job "$name" || ok=1
    return $ok
}

scenario_tcp() {
    local name="rdocker-e2e-$RUN_ID-tcp" logf="$LOGS/tcp-rdocker.log" rc ok=0 out up
    # -t: after one direction of a connection ends, socat by default keeps
    # the other open for only 0.5 s.  An exec's stdin ends (a half-close of
    # the hijacked stream) long before its output does, so the default cuts
    # every exec's output after 0.5 s: the docker CLI then prints nothing and
    # exits 0 for "sleep 2; echo hi; exit 3", and autopkgtest through rdocker
    # fails ("rules extract failed with exit code 126").  dockerd listening
    # on tcp itself (docker:dind) has no such limit; neither may the relay.
    # setsid: its own process group, so that its forked children go too.
    setsid socat -t 86400 "TCP-LISTEN:$TCP_PORT,bind=127.0.0.1,reuseaddr,fork" \
        "UNIX-CONNECT:$SOCK" 2>"$LOGS/socat.log" &
    SOCAT_PID=$!
    up=""
    for _ in $(seq 50); do
        if out=$(docker -H "tcp://127.0.0.1:$TCP_PORT" version --format '{{.Server.Version}}' 2>&1); then
            up=1; break
        fi
        kill -0 "$SOCAT_PID" 2>/dev/null ||
            die "socat could not listen on 127.0.0.1:$TCP_PORT ($(cat "$LOGS/socat.log")); set RDOCKER_E2E_TCP_PORT"
        sleep 0.1
    done
    [ -n "$up" ] || die "no daemon at tcp://127.0.0.1:$TCP_PORT through socat: $out"
    log "  socat (pid $SOCAT_PID) forwards tcp://127.0.0.1:$TCP_PORT to $SOCK"
    start_job "$name" "$JOB_IMAGE" --network host -e "DOCKER_HOST=tcp://127.0.0.1:$TCP_PORT"
    if docker exec "$name" test -e "$SOCK"; then die "the tcp job container has $SOCK"; fi
    run_autopkgtest "$name" "$logf" rdocker -d "$TESTBED_IMAGE"
    rc=$AT_RC
    check_rdocker_run "$name" "$logf" "$rc" "reached at tcp://127.0.0.1:$TCP_PORT \(from DOCKER_HOST\)" || ok=1
    stop_job "$name" || ok=1
    stop_socat
    return $ok
}

# The reference labels nothing; its testbeds get our job label through its
# docker-run arguments, so that cleanup finds them.
reference_leftovers() {
    local name=$1 ids
    ids=$(docker ps -aq --filter "label=$JOB_LABEL=$name")
    if [ -n "$ids" ]; then
        log "  the reference left $(wc -w <<<"$ids") container(s) behind; removing them"
        rm_containers --filter "label=$JOB_LABEL=$name"
    fi
}

# The daemon created the reference's shared dir on *this* machine (a
# bind-mount source that did not exist): remove exactly that one.
reference_host_dirs() {
    local logf=$1 d
    { grep -Eo "/tmp/autopkgtest-virt-docker\.shared\.[A-Za-z0-9_]{8}" "$logf" || true; } | sort -u |
    while read -r d; do
        if [ -d "$d" ]; then
            log "  the daemon created $d on the host for the reference's bind mount; removing it"
            rm -rf --one-file-system "$d"
        fi
    done
}

scenario_reference() {
    local name="rdocker-e2e-$RUN_ID-ref" logf="$LOGS/socket-reference.log" rc ok=0 line
    start_job "$name" "$CLI_IMAGE" -v "$SOCK:$SOCK"
    run_autopkgtest "$name" "$logf" docker -d "$TESTBED_IMAGE" --label "$JOB_LABEL=$name"
    rc=$AT_RC
    line=$(grep -Em1 "$REFERENCE_FAILURE" "$logf" || true)
    if [ "$rc" -eq 0 ]; then
        log "the reference passed without --remote in a container job; expected it to fail"; ok=1
    elif [ -z "$line" ]; then
        tail -30 "$logf" >&2
        log "the reference failed (exit $rc), but not as expected (/$REFERENCE_FAILURE/)"; ok=1
    else
        log "  reference failed as expected, autopkgtest exit $rc:"
        log "  $line"
        grep -E '^(autopkgtest|<VirtSubproc>).*(ERROR|error|FAIL)' "$logf" | head -3 | sed 's/^/e2e:   /' >&2 || true
    fi
    docker rm -f "$name" >/dev/null
    reference_leftovers "$name"
    reference_host_dirs "$logf"
    return $ok
}

scenario_reference_remote() {
    local name="rdocker-e2e-$RUN_ID-refr" logf="$LOGS/socket-reference-remote.log" rc ok=0
    start_job "$name" "$CLI_IMAGE" -v "$SOCK:$SOCK"
    run_autopkgtest "$name" "$logf" docker -d --remote "$TESTBED_IMAGE" --label "$JOB_LABEL=$name"
    rc=$AT_RC
    if [ "$rc" -ne 0 ]; then
        tail -30 "$logf" >&2
        log "the reference with --remote failed (exit $rc)"; ok=1
    elif ! docker exec "$name" grep -qx 'hello, artifacts' /tmp/out/artifacts/greeting; then
        log "the reference with --remote passed but copied no artifact"; ok=1
    fi
    docker rm -f "$name" >/dev/null
    reference_leftovers "$name"
    return $ok
}

# The action's script in a socket job, as a runner runs a composite step.
scenario_action() {
    local name="rdocker-e2e-$RUN_ID-action" logf="$LOGS/action.log" rc ok=0 t out
    local ws=/__w/rdocker/rdocker fc=/__w/_temp/_runner_file_commands ap=/__w/_actions/rdocker/rdocker/main
    start_job "$name" "$JOB_IMAGE" -v "$SOCK:$SOCK"
    docker exec "$name" mkdir -p "$ws/tests/pkg" "$fc" "$ap/ci" || die "cannot make the runner's directories in $name"
    docker cp "$PKG" "$name:$ws/tests/pkg/rdocker-hello" >/dev/null &&
    docker cp "$TREE/action.yml" "$name:$ap/action.yml" >/dev/null &&
    docker cp "$TREE/ci/action" "$name:$ap/ci/action" >/dev/null &&
    docker cp "$TMP/rdocker.deb" "$name:$ws/rdocker.deb" >/dev/null || die "cannot copy the action into $name"
    docker exec -w "$ws" -e GITHUB_ACTIONS=true -e CI=true -e GITHUB_WORKSPACE="$ws" \
        -e RUNNER_TEMP=/__w/_temp -e GITHUB_ACTION_PATH="$ap" \
        -e GITHUB_STEP_SUMMARY="$fc/step_summary_e2e" -e GITHUB_OUTPUT="$fc/set_output_e2e" \
        -e INPUT_SOURCE=tests/pkg/rdocker-hello -e INPUT_IMAGE="$TESTBED_IMAGE" \
        -e INPUT_PLATFORM=linux/amd64 -e INPUT_RDOCKER_DEB=rdocker.deb \
        -e INPUT_AUTOPKGTEST_ARGS= -e INPUT_RDOCKER_ARGS=-d -e INPUT_DOCKER_RUN_ARGS= -e INPUT_APT_CACHE= -e INPUT_OUTPUT_DIR= -e INPUT_JOBS= \
        "$name" bash "$ap/ci/action/run.sh" >"$logf" 2>&1 &
    EXEC_PID=$!
    rc=0; wait "$EXEC_PID" || rc=$?
    EXEC_PID=""
    docker exec "$name" cat "$fc/step_summary_e2e" >"$LOGS/action-summary.md" 2>/dev/null || true
    docker exec "$name" cat "$fc/set_output_e2e" >"$LOGS/action-output" 2>/dev/null || true
    if [ "$rc" -ne 0 ]; then
        tail -40 "$logf" >&2; log "the action's script exited with $rc (log: $logf)"; ok=1
    fi
    for t in greets as-root build-and-artifacts; do
        # Columns: result, testbed set-up, dependencies, test, in all.
        if ! grep -Eq "^\| \`$t\` \| .*PASS \|[^|]*\|[^|]*\| [0-9]+ (s|min [0-9]+ s) \| [0-9]+ (s|min [0-9]+ s) \|" "$LOGS/action-summary.md"; then
            log "the job summary has no PASS line with durations for $t"; ok=1
        fi
    done
    if [ "$ok" = 0 ]; then
        log "  job summary:"; sed 's/^/e2e:     /' "$LOGS/action-summary.md" >&2
    else
        cat "$LOGS/action-summary.md" >&2
    fi
    out=$(sed -n 's/^output-dir=//p' "$LOGS/action-output")
    if [ "$out" != /__w/_temp/autopkgtest-output ]; then
        log "GITHUB_OUTPUT has output-dir='$out', not /__w/_temp/autopkgtest-output"; ok=1
    elif ! docker exec "$name" grep -Eq '^greets +PASS' "$out/summary"; then
        log "the output directory $out has no summary with greets PASS"; ok=1
    fi
    grep -qx 'exit-code=0' "$LOGS/action-output" || { log "GITHUB_OUTPUT has no exit-code=0"; ok=1; }
    # The input jobs is empty: the job's processors, through the parallel runner.
    [ "$(nproc)" = 1 ] || grep -q "^rdocker-action: rdocker-autopkgtest -j $(nproc) " "$logf" ||
        { log "the action did not run rdocker-autopkgtest -j $(nproc) (the input jobs defaults to the processors)"; ok=1; }
    for g in '::group::test greets' '::group::test as-root' '::group::test build-and-artifacts' '::group::summary'; do
        grep -qx "$g" "$logf" || { log "the log has no '$g' section"; ok=1; }
    done
    [ "$(grep -c '^::group::' "$logf")" = "$(grep -c '^::endgroup::' "$logf")" ] ||
        { log "the log's ::group:: and ::endgroup:: lines do not pair up"; ok=1; }
    stop_job "$name" || ok=1
    return $ok
}

# apt_cache_job NAME LOG: a GitHub container job on a github_network_<id> of
# its own, whose step runs the Action's script with apt-cache set to
# /__w/_temp/apt-cache (restored from $TMP/apt-cache when that exists, as
# actions/cache does) and saves it back there; its status in AT_RC, the
# seconds the step took in STEP_S, rdocker's cache summary in CACHE_LINE
# (jobs 1: one rdocker session, so one summary at close).
apt_cache_job() {
    local name=$1 logf=$2 net="github_network_${RUN_ID//-/}$3" t
    local ws=/__w/rdocker/rdocker fc=/__w/_temp/_runner_file_commands ap=/__w/_actions/rdocker/rdocker/main
    docker network create --label "$JOB_LABEL=$name" "$net" >/dev/null || die "cannot make network $net"
    NETS+=("$net")
    start_job "$name" "$JOB_IMAGE" -v "$SOCK:$SOCK" --network "$net"
    docker exec "$name" mkdir -p "$ws/tests/pkg" "$fc" "$ap/ci" || die "cannot make the runner's directories in $name"
    docker cp "$PKG" "$name:$ws/tests/pkg/rdocker-hello" >/dev/null &&
    docker cp "$TREE/action.yml" "$name:$ap/action.yml" >/dev/null &&
    docker cp "$TREE/ci/action" "$name:$ap/ci/action" >/dev/null || die "cannot copy the action into $name"
    if [ -d "$TMP/apt-cache" ]; then
        docker cp "$TMP/apt-cache" "$name:/__w/_temp/apt-cache" >/dev/null || die "cannot restore the apt cache into $name"
    fi
    t=$(now)
    docker exec -w "$ws" -e GITHUB_ACTIONS=true -e CI=true -e GITHUB_WORKSPACE="$ws" \
        -e RUNNER_TEMP=/__w/_temp -e GITHUB_ACTION_PATH="$ap" \
        -e GITHUB_STEP_SUMMARY="$fc/step_summary" -e GITHUB_OUTPUT="$fc/set_output" \
        -e INPUT_SOURCE=tests/pkg/rdocker-hello -e INPUT_IMAGE="$TESTBED_IMAGE" \
        -e INPUT_PLATFORM= -e INPUT_RDOCKER_DEB= -e INPUT_AUTOPKGTEST_ARGS= -e INPUT_RDOCKER_ARGS=-d \
        -e INPUT_DOCKER_RUN_ARGS= -e INPUT_APT_CACHE=/__w/_temp/apt-cache -e INPUT_OUTPUT_DIR= -e INPUT_JOBS=1 \
        "$name" bash "$ap/ci/action/run.sh" >"$logf" 2>&1 &
    EXEC_PID=$!
    AT_RC=0; wait "$EXEC_PID" || AT_RC=$?
    EXEC_PID=""
    STEP_S=$(( $(now) - t ))
    rm -rf "$TMP/apt-cache"
    docker cp "$name:/__w/_temp/apt-cache" "$TMP/apt-cache" >/dev/null 2>&1 || true
    CACHE_LINE=$(grep -E 'DBG: apt cache: [0-9]+ \.debs from the cache' "$logf" | tail -n1 | sed 's/.*DBG: apt cache: //' || true)
}

scenario_apt_cache() {
    local name1="rdocker-e2e-$RUN_ID-cache1" name2="rdocker-e2e-$RUN_ID-cache2" ok=0
    local log1="$LOGS/apt-cache-1.log" log2="$LOGS/apt-cache-2.log" hit1 got1 hit2 got2 s1 s2 l t
    apt_cache_job "$name1" "$log1" a
    s1=$STEP_S
    if [ "$AT_RC" -ne 0 ]; then tail -40 "$log1" >&2; log "the first run exited with $AT_RC (log: $log1)"; ok=1; fi
    grep -m1 'DBG: apt cache: .*served to the testbeds' "$log1" | sed 's/^/e2e:   /' >&2 ||
        { log "rdocker served no apt cache to the testbeds (log: $log1):"; grep -m3 'apt cache\|apt:' "$log1" >&2; ok=1; }
    read -r hit1 got1 < <(sed -nE 's/^([0-9]+) \.debs from the cache .*, ([0-9]+) fetched and kept.*/\1 \2/p' <<<"$CACHE_LINE")
    log "  first job:  ${s1} s, apt cache: ${CACHE_LINE:-no summary}"
    stop_job "$name1" || ok=1
    [ -d "$TMP/apt-cache" ] || { log "the first job left no apt cache directory to save"; ok=1; }
    apt_cache_job "$name2" "$log2" b
    s2=$STEP_S
    if [ "$AT_RC" -ne 0 ]; then tail -40 "$log2" >&2; log "the second run exited with $AT_RC (log: $log2)"; ok=1; fi
    read -r hit2 got2 < <(sed -nE 's/^([0-9]+) \.debs from the cache .*, ([0-9]+) fetched and kept.*/\1 \2/p' <<<"$CACHE_LINE")
    log "  second job: ${s2} s, apt cache: ${CACHE_LINE:-no summary}"
    if [ -z "${got1:-}" ] || [ "$got1" -eq 0 ]; then
        log "the first run fetched no .deb from the mirror through the cache (${got1:-no summary}); nothing was tested"; ok=1
    fi
    if [ -z "${got2:-}" ] || [ "$got2" -ne 0 ] || [ "${hit2:-0}" -eq 0 ]; then
        log "the second run fetched ${got2:-?} .debs from the mirror and took ${hit2:-?} from the cache; expected 0 and more than 0"; ok=1
    fi
    for l in "$log1" "$log2"; do
        for t in greets as-root build-and-artifacts; do
            grep -Eq "^$t +PASS" "$l" || { log "$t did not pass in $l"; ok=1; }
        done
    done
    stop_job "$name2" || ok=1
    [ "$ok" = 0 ] && log "  apt-cache: mirror fetches ${got1} then ${got2}; step ${s1} s then ${s2} s"
    return $ok
}

# --- run ---------------------------------------------------------------------
FAILED=()
SUMMARY=()
for s in "${SCENARIOS[@]}"; do
    case "$s" in
        socket) title="socket-mount rdocker"; fn=scenario_socket ;;
        reference) title="socket-mount reference autopkgtest-virt-docker (must fail)"; fn=scenario_reference ;;
        tcp) title="tcp DOCKER_HOST rdocker"; fn=scenario_tcp ;;
        action) title="the GitHub Action's script in a socket job"; fn=scenario_action ;;
        apt-cache) title="the Action's apt-cache in jobs on networks of their own, restored between them"; fn=scenario_apt_cache ;;
        reference-remote) title="socket-mount reference autopkgtest-virt-docker --remote"; fn=scenario_reference_remote ;;
    esac
    log "--- $title"
    t=$(now)
    if $fn; then verdict=PASS; else verdict=FAIL; FAILED+=("$s"); fi
    SUMMARY+=("e2e: $title $verdict in $(( $(now) - t )) s")
    log "$title $verdict in $(( $(now) - t )) s"
done

echo
echo "e2e: images ready in $T_IMAGES s"
printf '%s\n' "${SUMMARY[@]}"
echo "e2e: total $(( $(now) - T0 )) s; logs in $LOGS"
if [ ${#FAILED[@]} -gt 0 ]; then
    echo "e2e: FAILED: ${FAILED[*]}" >&2
    exit 1
fi
echo "e2e: all scenarios passed"
