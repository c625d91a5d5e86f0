#!/bin/bash
# End-to-end test of the GitLab CI template (ci/gitlab/autopkgtest-rdocker.yml)
# with gitlab-ci-local (npm, 4.55) on the local daemon, as a Salsa project
# would use it: a project (tests/pkg/rdocker-five, with its source and
# binaries built beforehand in debian/output/, as Salsa's build job leaves
# them) whose .gitlab-ci.yml includes the template by a remote URL (served
# from this tree over HTTP on loopback) and sets variables.
#
#   socket  the runner's socket mounted in the job (gitlab-ci-local
#           --volume /var/run/docker.sock:...); the job sets "services: []"
#           and DOCKER_HOST "", as docs/ci.md says for such runners.  Its
#           job image has autopkgtest but no rdocker: the template installs
#           the .deb from RDOCKER_RELEASE, a release download served over
#           HTTP (SHA256SUMS checked), as users get it.
#   dind    the template alone, in a job image with rdocker: its docker:dind service, here a local daemon
#           image from Debian's docker.io (RDOCKER_DIND_IMAGE), reached at
#           tcp://docker:2375.  The testbed image is loaded into it from
#           a docker save (no registry).  This machine's daemon cannot
#           grant CAP_SYS_RESOURCE, so gitlab-ci-local's --privileged
#           fails here: a wrapper around docker (--container-executable)
#           gives the service every other capability and a cgroup
#           namespace of its own instead.
#
# Each must pass autopkgtest's five tests through rdocker in the job image,
# keep autopkgtest's output as the job's artifacts, and write a junit.xml
# whose testcases are exactly the tests of autopkgtest's summary, each
# with its result; the job log must show the tests as collapsible
# sections; no container, volume or network of the run may be left.
#
# Usage: ci/e2e-gitlab.sh [--deb FILE] [socket|dind...]  (default: both)
#   --deb FILE  the rdocker .deb for the job image (default:
#               target/deb/rdocker_*_amd64.deb)
# Images it builds and caches (rebuilt when their inputs change):
#   rdocker-test/ci-job:bookworm        autopkgtest + rdocker (as
#                                       ci/e2e-container-job.sh builds it)
#   rdocker-test/ci-job-autopkgtest:bookworm  autopkgtest, no rdocker (as
#                                       ci/e2e-action-release.sh builds it)
#   firecow/gitlab-ci-local-util:latest gitlab-ci-local's helper image
#   rdocker-test/gitlab-dind:bookworm   the docker:dind stand-in
# (RDOCKER_TEST_GITLAB_JOB_IMAGE names another tag for the job image, so
# that a run on a shared machine leaves that one alone.)
# Needs root, the daemon at /var/run/docker.sock, gitlab-ci-local, rsync,
# dpkg-buildpackage and debhelper (ci/provision.sh installs them).  Never
# skips: a missing piece is an error.
set -euo pipefail

log() { echo "e2e-gitlab: $*" >&2; }
die() { log "error: $*"; exit 1; }
usage() { sed -n '2,/^[^#]/{/^#/{s/^# \{0,1\}//;p}}' "$0"; }

TREE=$(cd "$(dirname "$0")/.." && pwd)
SOCK=/var/run/docker.sock
BASE_IMAGE=${RDOCKER_TEST_BASE_IMAGE:-rdocker-test/debian:bookworm}
TESTBED_IMAGE=${RDOCKER_TEST_USER_IMAGE:-rdocker-test/user:bookworm}
JOB_IMAGE=${RDOCKER_TEST_GITLAB_JOB_IMAGE:-rdocker-test/ci-job:bookworm}
BARE_JOB_IMAGE=rdocker-test/ci-job-autopkgtest:bookworm
UTIL_IMAGE=firecow/gitlab-ci-local-util:latest
DIND_IMAGE=rdocker-test/gitlab-dind:bookworm
CACHE=${RDOCKER_TEST_CACHE:-/var/cache/rdocker-test}
LOGS=${RDOCKER_TEST_LOGS:-$TREE/target/test-logs}/gitlab
KEY_LABEL=org.debian.autopkgtest.rdocker.e2e.key
GCL_VERSION=4.55
JOB=autopkgtest-rdocker

DEB=""
SCENARIOS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --deb) [ $# -ge 2 ] || die "--deb needs a file"; DEB=$2; shift 2 ;;
        --deb=*) DEB=${1#*=}; shift ;;
        -h|--help) usage; exit 0 ;;
        socket|dind) SCENARIOS+=("$1"); shift ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done
[ ${#SCENARIOS[@]} -gt 0 ] || SCENARIOS=(socket dind)

TMP=$(mktemp -d)
HTTP_PID=""
cleanup() {
    local rc=$?
    set +e
    [ -z "$HTTP_PID" ] || { kill "$HTTP_PID"; wait "$HTTP_PID"; } 2>/dev/null
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- preconditions: fail, never skip ----------------------------------------
command -v docker >/dev/null || die "no docker CLI"
docker version >/dev/null 2>&1 || die "the Docker daemon at $SOCK is unreachable (ci/provision.sh starts it)"
command -v gitlab-ci-local >/dev/null ||
    die "no gitlab-ci-local: npm install -g gitlab-ci-local@$GCL_VERSION (ci/provision.sh does)"
gcl_version=$(gitlab-ci-local --version)
case "$gcl_version" in "$GCL_VERSION".*) ;; *) die "gitlab-ci-local $gcl_version; this test is for $GCL_VERSION (newer ones need a newer Node)" ;; esac
command -v rsync >/dev/null || die "gitlab-ci-local needs rsync: apt-get install rsync"
command -v dpkg-buildpackage >/dev/null || die "no dpkg-buildpackage: apt-get install dpkg-dev debhelper"
for img in "$BASE_IMAGE" "$TESTBED_IMAGE"; do
    docker image inspect "$img" >/dev/null 2>&1 || die "no local image $img; ci/provision.sh builds it"
done
if [ -z "$DEB" ]; then
    shopt -s nullglob
    debs=("$TREE"/target/deb/rdocker_*_amd64.deb)
    shopt -u nullglob
    [ ${#debs[@]} -eq 1 ] || die "want one rdocker .deb in target/deb (found ${#debs[@]}): run ci/build-deb.sh, or give --deb"
    DEB=${debs[0]}
fi
[ -f "$DEB" ] || die "no such .deb: $DEB"
dpkg-deb -c "$DEB" | grep -q ' \./usr/share/rdocker/ci-run\.sh$' ||
    die "$DEB has no /usr/share/rdocker/ci-run.sh (the template runs it): rebuild it from this tree"
mkdir -p "$LOGS" "$CACHE"
LOGS=$(cd "$LOGS" && pwd)

now() { date +%s; }
sha() { sha256sum "$1" | cut -d' ' -f1; }
image_id() { docker image inspect --format '{{.Id}}' "$1"; }
T0=$(now)

# --- images ------------------------------------------------------------------
# build_image TAG DOCKERFILE KEY [--build-arg ...] -- FILE...: skipped when
# TAG carries KEY already (the same key as ci/e2e-container-job.sh's for the
# job image, so that the two share it).
build_image() {
    local tag=$1 dockerfile=$2 key=$3; shift 3
    local args=() have ctx t
    while [ "$1" != -- ]; do args+=("$1"); shift; done; shift
    have=$(docker image inspect --format "{{index .Config.Labels \"$KEY_LABEL\"}}" "$tag" 2>/dev/null || true)
    if [ "$have" = "$key" ]; then
        log "image $tag is up to date"
        return 0
    fi
    ctx="$TMP/ctx-${tag//[:\/]/_}"
    mkdir -p "$ctx"
    cp "$dockerfile" "$ctx/Dockerfile"
    [ $# -eq 0 ] || cp "$@" "$ctx/"
    log "building image $tag"
    t=$(now)
    DOCKER_BUILDKIT=0 docker build "${args[@]}" --label "$KEY_LABEL=$key" -t "$tag" "$ctx" \
        >"$LOGS/build-${tag//[:\/]/_}.log" 2>&1 || {
        tail -30 "$LOGS/build-${tag//[:\/]/_}.log" >&2
        die "building $tag failed (log: $LOGS/build-${tag//[:\/]/_}.log)"; }
    log "built $tag in $(( $(now) - t )) s"
}
cp "$DEB" "$TMP/rdocker.deb"
DEB_SHA=$(sha "$TMP/rdocker.deb")
job_key=$(printf '%s\n' "deb=$DEB_SHA" "dockerfile=$(sha "$TREE/ci/e2e/ci-job.Dockerfile")" \
    "base=$(image_id "$BASE_IMAGE")" | sha256sum | cut -d' ' -f1)
build_image "$JOB_IMAGE" "$TREE/ci/e2e/ci-job.Dockerfile" "$job_key" \
    --build-arg "BASE=$BASE_IMAGE" --label "org.debian.autopkgtest.rdocker.e2e.deb-sha256=$DEB_SHA" \
    -- "$TMP/rdocker.deb"
bare_key=$(printf '%s\n' "$(sha "$TREE/ci/e2e/ci-job-autopkgtest.Dockerfile")" "$(image_id "$BASE_IMAGE")" |
    sha256sum | cut -d' ' -f1)
build_image "$BARE_JOB_IMAGE" "$TREE/ci/e2e/ci-job-autopkgtest.Dockerfile" "$bare_key" --build-arg "BASE=$BASE_IMAGE" --
G=$TREE/ci/e2e/gitlab
util_key=$(printf '%s\n' "dockerfile=$(sha "$G/util.Dockerfile")" "base=$(image_id "$BASE_IMAGE")" |
    sha256sum | cut -d' ' -f1)
build_image "$UTIL_IMAGE" "$G/util.Dockerfile" "$util_key" --build-arg "BASE=$BASE_IMAGE" --
for s in "${SCENARIOS[@]}"; do
    [ "$s" = dind ] || continue
    dind_key=$(printf '%s\n' "dockerfile=$(sha "$G/dind.Dockerfile")" "entrypoint=$(sha "$G/dind-entrypoint.sh")" \
        "base=$(image_id "$BASE_IMAGE")" | sha256sum | cut -d' ' -f1)
    build_image "$DIND_IMAGE" "$G/dind.Dockerfile" "$dind_key" --build-arg "BASE=$BASE_IMAGE" -- "$G/dind-entrypoint.sh"
    # The testbed image for the inner daemon, saved once per image id.
    PRELOAD=$CACHE/gitlab-preload
    tid=$(image_id "$TESTBED_IMAGE")
    if [ ! -f "$PRELOAD/${tid#sha256:}.tar" ]; then
        rm -rf "$PRELOAD"
        mkdir -p "$PRELOAD"
        docker save "$TESTBED_IMAGE" -o "$PRELOAD/${tid#sha256:}.tar.part"
        mv "$PRELOAD/${tid#sha256:}.tar.part" "$PRELOAD/${tid#sha256:}.tar"
    fi
done
log "images ready in $(( $(now) - T0 )) s"

# --- the project ---------------------------------------------------------------
# rdocker-five built once, source and binaries, into debian/output/ as
# Salsa's build job leaves them: the job tests those .debs, builds nothing.
t=$(now)
mkdir -p "$TMP/build"
cp -r "$TREE/tests/pkg/rdocker-five" "$TMP/build/"
(cd "$TMP/build/rdocker-five" && dpkg-buildpackage -us -uc -d >"$LOGS/build-rdocker-five.log" 2>&1) ||
    { tail -20 "$LOGS/build-rdocker-five.log" >&2; die "building rdocker-five failed (log: $LOGS/build-rdocker-five.log)"; }
(cd "$TMP/build/rdocker-five" && debian/rules clean >/dev/null 2>&1) || true
log "built rdocker-five's source and .deb in $(( $(now) - t )) s"

# The template over HTTP ("include: remote:" as users write it), and a
# release download beside it, on the default bridge's gateway, where job
# containers reach this machine.
GW=$(docker network inspect bridge --format '{{(index .IPAM.Config 0).Gateway}}')
[ -n "$GW" ] || die "no gateway address for docker's default bridge"
mkdir -p "$TMP/www/release/v0.1.0"
cp "$TREE/ci/gitlab/autopkgtest-rdocker.yml" "$TMP/www/"
cp "$DEB" "$TMP/www/release/v0.1.0/"
(cd "$TMP/www/release/v0.1.0" && sha256sum -- *.deb >SHA256SUMS)
chmod -R a+rX "$TMP/www"
python3 -m http.server --bind "$GW" 0 --directory "$TMP/www" >"$TMP/http.log" 2>&1 &
HTTP_PID=$!
PORT=""
for _ in $(seq 50); do
    PORT=$(sed -n 's/.*port \([0-9]*\).*/\1/p' "$TMP/http.log" | head -n1)
    [ -z "$PORT" ] || break
    sleep 0.1
done
[ -n "$PORT" ] || die "the HTTP server for the template did not start: $(cat "$TMP/http.log")"
TEMPLATE_URL=http://$GW:$PORT/autopkgtest-rdocker.yml
RELEASE_URL=http://$GW:$PORT/release/v0.1.0

# make_project DIR: the package's tree, its debian/output/, a git repository.
make_project() {
    local dir=$1
    cp -r "$TREE/tests/pkg/rdocker-five" "$dir"
    mkdir -p "$dir/debian/output"
    cp "$TMP"/build/rdocker-five_* "$dir/debian/output/"
    git -C "$dir" init -q
    git -C "$dir" -c user.name=e2e -c user.email=e2e@example.org add -A
    git -C "$dir" -c user.name=e2e -c user.email=e2e@example.org commit -qm project
}

# --- checks --------------------------------------------------------------------
# check_run NAME DIR LOG RC: the job passed, its artifacts hold autopkgtest's
# output, and junit.xml matches the summary test for test.
check_run() {
    local name=$1 dir=$2 logf=$3 rc=$4 out ok=0
    out=$dir/.gitlab-ci-local/artifacts/$JOB/autopkgtest-output
    if [ "$rc" -ne 0 ]; then
        tail -40 "$logf" >&2
        log "$name: gitlab-ci-local exited with $rc (log: $logf)"; ok=1
    fi
    for f in log summary junit.xml; do
        [ -s "$out/$f" ] || { log "$name: no $f in the job's artifacts ($out)"; ok=1; }
    done
    # autopkgtest took the build's .deb from the .changes, and built nothing.
    [ -s "$out/binaries/rdocker-five.deb" ] ||
        { log "$name: no binaries/rdocker-five.deb (the .deb of debian/output/) in the artifacts"; ok=1; }
    if grep -q 'dpkg-buildpackage' "$out/log"; then
        log "$name: autopkgtest built the package again; it had the .changes"; ok=1
    fi
    if [ -s "$out/summary" ] && [ -s "$out/junit.xml" ]; then
        python3 - "$out/summary" "$out/junit.xml" <<'EOF' || ok=1
import sys
import xml.etree.ElementTree as ET
summary, junit = sys.argv[1:]
want = {}
for line in open(summary):
    f = line.split()
    if len(f) >= 2:
        want[f[0]] = f[1]
got = {}
for tc in ET.parse(junit).getroot().iter('testcase'):
    kids = {k.tag for k in tc}
    res = 'FAIL' if 'failure' in kids else 'ERROR' if 'error' in kids else 'SKIP' if 'skipped' in kids else 'PASS'
    got[tc.get('name')] = res
expect = {'runs', 'as-root', 'without-package', 'on-stderr', 'command1'}
print('e2e-gitlab:   summary %s' % ' '.join('%s:%s' % kv for kv in sorted(want.items())), file=sys.stderr)
print('e2e-gitlab:   junit   %s' % ' '.join('%s:%s' % kv for kv in sorted(got.items())), file=sys.stderr)
errors = []
if set(want) != expect:
    errors.append('the summary names %s, not the five tests %s' % (sorted(want), sorted(expect)))
if any(r != 'PASS' for r in want.values()):
    errors.append('not every test passed')
mapped = {t: {'PASS': 'PASS', 'FAIL': 'FAIL', 'SKIP': 'SKIP', 'NEUTRAL': 'SKIP', 'FLAKY': 'SKIP'}.get(r, 'ERROR')
          for t, r in want.items()}
if got != mapped:
    errors.append('junit.xml %s does not match the summary %s' % (got, mapped))
for e in errors:
    print('e2e-gitlab: error: ' + e, file=sys.stderr)
sys.exit(1 if errors else 0)
EOF
    fi
    # The log: folded into sections, one per test.
    for t in runs as-root without-package on-stderr command1; do
        grep -q "section_start:[0-9]*:test_$t\[" "$logf" ||
            { log "$name: the job log has no section for the test $t"; ok=1; }
    done
    return $ok
}

# leftovers NAME LOG VOLUMES-BEFORE: nothing of the run is left on this
# daemon.  gitlab-ci-local 4.55 runs its clean-up twice at once at the end
# of a job (job.js: once unawaited, once from its handler), and the two
# race: one's "volume rm" may come before the other's "rm -v" of the
# containers, so a volume or two, or the service network, may stay.  Those
# are removed here; a container left is a failure.
leftovers() {
    local name=$1 logf=$2 before=$3 host ids v ok=0
    host=$(sed -n 's/.*rdocker: job container \([0-9a-z]*\) .*/\1/p' "$logf" | head -n1)
    if [ -z "$host" ]; then
        log "$name: the job did not print its container's hostname"; ok=1
    else
        ids=$(docker ps -aq --filter label=org.debian.autopkgtest.rdocker=1 \
            --filter "label=org.debian.autopkgtest.rdocker.owner-host=$host")
        [ -z "$ids" ] || { log "$name: rdocker left testbeds of job $host: $ids"; docker rm -f $ids >/dev/null; ok=1; }
    fi
    ids=$(docker ps -aq --filter "ancestor=$DIND_IMAGE")
    [ -z "$ids" ] || { log "$name: gitlab-ci-local left containers: $ids"; docker rm -fv $ids >/dev/null; ok=1; }
    for v in $(docker volume ls -q --filter "name=gcl-$JOB-"); do
        grep -qxF "$v" <<<"$before" && continue
        ids=$(docker ps -aq --filter "volume=$v")
        if [ -n "$ids" ]; then
            log "$name: containers that use the job's volume $v are left: $ids"; docker rm -fv $ids >/dev/null; ok=1
        fi
        docker volume rm "$v" >/dev/null && log "  removed the volume $v that gitlab-ci-local left"
    done
    # The service network goes in the same race.
    for v in $(docker network ls -q --filter name=gitlab-ci-local-); do
        ids=$(docker network inspect --format '{{range $k, $c := .Containers}}{{$k}} {{end}}' "$v")
        if [ -n "$ids" ]; then
            log "$name: containers on the job's network $v are left: $ids"; docker rm -fv $ids >/dev/null; ok=1
        fi
        docker network rm "$v" >/dev/null && log "  removed the network $v that gitlab-ci-local left"
    done
    return $ok
}

# run_pipeline NAME DIR GITLAB-CI-LOCAL-ARGS...: the pipeline's job, as
# gitlab-ci-local runs it; its exit status in RC.
RC=0
run_pipeline() {
    local name=$1 dir=$2; shift 2
    RC=0
    (cd "$dir" && env -u http_proxy -u https_proxy -u HTTP_PROXY -u HTTPS_PROXY NO_PROXY="$GW" \
        gitlab-ci-local --no-color --pull-policy if-not-present "$@" "$JOB") >"$LOGS/$name.log" 2>&1 || RC=$?
}

common_vars() {
    cat <<EOF
include:
  - remote: $TEMPLATE_URL
variables:
  RDOCKER_IMAGE: $TESTBED_IMAGE
  RDOCKER_SOURCE: debian/output/*.changes
  RDOCKER_ARGS: -d
EOF
}

scenario_socket() {
    local dir=$TMP/socket ok=0 t before
    make_project "$dir"
    { common_vars; cat <<EOF
  RDOCKER_JOB_IMAGE: $BARE_JOB_IMAGE
  RDOCKER_RELEASE: $RELEASE_URL
autopkgtest-rdocker:
  services: []
  variables:
    DOCKER_HOST: ""
EOF
    } >"$dir/.gitlab-ci.yml"
    t=$(now)
    before=$(docker volume ls -q)
    run_pipeline socket "$dir" --volume "$SOCK:$SOCK"
    log "socket: the pipeline took $(( $(now) - t )) s (exit $RC)"
    check_run socket "$dir" "$LOGS/socket.log" "$RC" || ok=1
    grep -q "Setting up rdocker ($(dpkg-deb -f "$DEB" Version))" "$LOGS/socket.log" ||
        { log "socket: the job did not install rdocker from the release download"; ok=1; }
    grep -q 'copies go through the Engine API: rdocker runs inside a container' "$LOGS/socket.log" ||
        { log "socket: rdocker did not reach the daemon through the mounted socket from inside a container"; ok=1; }
    leftovers socket "$LOGS/socket.log" "$before" || ok=1
    cp -r "$dir/.gitlab-ci-local/artifacts/$JOB/autopkgtest-output" "$LOGS/socket-output" 2>/dev/null || true
    return $ok
}

scenario_dind() {
    local dir=$TMP/dind ok=0 t before wrapper=$TMP/docker-dind-wrapper
    make_project "$dir"
    # The template alone: only variables, the dind service's image among them.
    { common_vars; echo "  RDOCKER_JOB_IMAGE: $JOB_IMAGE"; echo "  RDOCKER_DIND_IMAGE: $DIND_IMAGE"; } >"$dir/.gitlab-ci.yml"
    cat >"$wrapper" <<EOF
#!/bin/bash
# gitlab-ci-local's docker: the dind service gets what --privileged would
# give, but CAP_SYS_RESOURCE, which this daemon cannot grant.
if [ "\$1" = create ] && printf '%s\n' "\$@" | grep -qxF "$DIND_IMAGE"; then
    shift
    exec docker create --cgroupns=private --cap-add=ALL --cap-drop=SYS_RESOURCE \\
        --security-opt seccomp=unconfined --security-opt apparmor=unconfined \\
        --security-opt systempaths=unconfined "\$@"
fi
exec docker "\$@"
EOF
    chmod +x "$wrapper"
    t=$(now)
    before=$(docker volume ls -q)
    run_pipeline dind "$dir" --container-executable "$wrapper" --volume "$PRELOAD:/preload:ro"
    log "dind: the pipeline took $(( $(now) - t )) s (exit $RC)"
    check_run dind "$dir" "$LOGS/dind.log" "$RC" || ok=1
    grep -Eq 'copies go through the Engine API: .*tcp://docker:2375' "$LOGS/dind.log" ||
        { log "dind: rdocker did not reach the daemon at tcp://docker:2375"; ok=1; }
    leftovers dind "$LOGS/dind.log" "$before" || ok=1
    cp -r "$dir/.gitlab-ci-local/artifacts/$JOB/autopkgtest-output" "$LOGS/dind-output" 2>/dev/null || true
    return $ok
}

failed=()
for s in "${SCENARIOS[@]}"; do
    rm -rf "$LOGS/$s-output"
    log "scenario $s"
    if "scenario_$s"; then log "scenario $s: passed"; else log "scenario $s: FAILED (log: $LOGS/$s.log)"; failed+=("$s"); fi
done
log "took $(( $(now) - T0 )) s in all"
[ ${#failed[@]} -eq 0 ] || die "failed: ${failed[*]}"
log "passed: ${SCENARIOS[*]}"
