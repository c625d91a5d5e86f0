#!/bin/bash
# The GitHub Action's logic (action.yml at the top of the repository calls
# it; ci/e2e-container-job.sh runs it as the runner would).  Its inputs come
# as INPUT_* variables:
#   INPUT_SOURCE            source tree or .dsc, relative to GITHUB_WORKSPACE (.)
#   INPUT_IMAGE             the testbed image (required)
#   INPUT_PLATFORM          docker run --platform for the testbed (none)
#   INPUT_AUTOPKGTEST_ARGS  more autopkgtest arguments, split on blanks
#   INPUT_RDOCKER_ARGS      rdocker options (before the image: -d, --init, -H URL)
#   INPUT_DOCKER_RUN_ARGS   docker-run options for the testbed (after the image)
#   INPUT_RDOCKER_DEB       the rdocker .deb to install: a path or an
#                           http(s) URL; empty: keep an installed rdocker,
#                           else install the action's own release .deb:
#                           $GITHUB_SERVER_URL/$GITHUB_ACTION_REPOSITORY/
#                           releases/download/$GITHUB_ACTION_REF/, the
#                           rdocker_*_ARCH.deb that its SHA256SUMS lists,
#                           checked against it
#   INPUT_BUILD_FROM_SOURCE true: build rdocker from the action's checkout
#                           with cargo instead of installing the release
#   INPUT_APT_CACHE         a directory for rdocker's package cache (--apt-cache),
#                           kept by an actions/cache step; empty: the run's own
#   INPUT_OUTPUT_DIR        autopkgtest's output directory
#                           (default: $RUNNER_TEMP/autopkgtest-output)
#   INPUT_JOBS              testbeds at once (rdocker-autopkgtest -j); empty:
#                           the runner's processors; 1: autopkgtest alone
# INPUT_SOURCE may be a glob that matches one file (debian/output/*.changes).
# On GitLab CI (RDOCKER_CI=gitlab, as the template ci/gitlab/autopkgtest-rdocker.yml
# sets it when it runs this script as the .deb installs it,
# /usr/share/rdocker/ci-run.sh; or GITLAB_CI=true)
# the workspace is CI_PROJECT_DIR, the log is folded into collapsible
# sections, and the summary table goes to the job log.
# It installs autopkgtest (apt) and rdocker when missing, runs
#   autopkgtest ARGS SOURCE -o OUTPUT_DIR -- rdocker RDOCKER_ARGS IMAGE [--platform P] DOCKER_RUN_ARGS
# (through rdocker-autopkgtest -j JOBS when JOBS > 1)
# with its log folded into ::group:: sections, writes OUTPUT_DIR/junit.xml,
# appends a table of the tests (result, phases: testbed set-up,
# dependencies, the test) to $GITHUB_STEP_SUMMARY, and writes output-dir,
# exit-code and junit to $GITHUB_OUTPUT.  Exits with autopkgtest's status, except
# 2 (some test skipped), which passes.
set -euo pipefail

GITLAB=""
# (gitlab-ci-local sets GITLAB_CI=false, hence the template's own variable.)
if [ "${RDOCKER_CI:-}" = gitlab ] || [ "${GITLAB_CI:-}" = true ]; then GITLAB=1; fi
log() { echo "rdocker-action: $*" >&2; }
die() { [ -n "$GITLAB" ] || echo "::error title=rdocker action::$*"; log "error: $*"; exit 1; }
# A foldable part of the log: ::group:: on GitHub, a section on GitLab.
group() {
    if [ -n "$GITLAB" ]; then printf '\e[0Ksection_start:%s:rdocker_%s[collapsed=true]\r\e[0K%s\n' "$(date +%s)" "$1" "$2"
    else echo "::group::$2"; fi
}
endgroup() {
    if [ -n "$GITLAB" ]; then printf '\e[0Ksection_end:%s:rdocker_%s\r\e[0K\n' "$(date +%s)" "$1"
    else echo "::endgroup::"; fi
}

HERE=$(cd "$(dirname "$0")" && pwd)
# Beside it in the checkout; installed by the .deb under another name.
REPORT=$HERE/report.py
[ -f "$REPORT" ] || REPORT=$HERE/autopkgtest_report.py
ACTION_PATH=${GITHUB_ACTION_PATH:-$(cd "$HERE/../.." && pwd)}
WORKSPACE=${GITHUB_WORKSPACE:-${CI_PROJECT_DIR:-$PWD}}
SOURCE=${INPUT_SOURCE:-.}
IMAGE=${INPUT_IMAGE:-}
OUTDIR=${INPUT_OUTPUT_DIR:-${RUNNER_TEMP:-/tmp}/autopkgtest-output}

[ -n "$IMAGE" ] || die "the input 'image' is required: the testbed image, e.g. debian:sid"
cd "$WORKSPACE" || die "cannot enter the workspace $WORKSPACE"
if [[ $SOURCE == *[*?[]* ]]; then
    shopt -s nullglob
    # shellcheck disable=SC2206  # a glob, on purpose
    matches=($SOURCE)
    shopt -u nullglob
    [ ${#matches[@]} -eq 1 ] ||
        die "the source '$SOURCE' matches ${#matches[@]} files in $WORKSPACE (${matches[*]:-none}): it must match exactly one .dsc, .changes or tree"
    SOURCE=${matches[0]}
fi
[ -e "$SOURCE" ] || die "no source package at '$SOURCE' (relative to $WORKSPACE): give a source tree or a .dsc as the input 'source'"

# The daemon.  A docker:dind-style service at DOCKER_HOST=tcp://HOST:PORT
# may still be starting: wait for its port.  A HOST that does not resolve
# (no such service) with the runner's socket mounted: take the socket, so
# that one job definition serves both kinds of runner.
daemon_wait() {
    local hp host port i wait=${RDOCKER_DAEMON_WAIT:-120}
    [ -n "${DOCKER_HOST:-}" ] || { unset DOCKER_HOST; return 0; }
    case "$DOCKER_HOST" in tcp://*) ;; *) return 0 ;; esac
    hp=${DOCKER_HOST#tcp://}; hp=${hp%%/*}; host=${hp%:*}; port=${hp##*:}
    [ "$host" != "$hp" ] || port=2375
    if ! getent hosts "$host" >/dev/null 2>&1; then
        if [ -S /var/run/docker.sock ]; then
            log "DOCKER_HOST=$DOCKER_HOST: there is no host '$host' (no such service); taking the socket /var/run/docker.sock"
            unset DOCKER_HOST
            return 0
        fi
        die "DOCKER_HOST=$DOCKER_HOST: there is no host '$host', and no /var/run/docker.sock: add a docker:dind service with that alias (on a runner that allows privileged services), or mount the runner's socket"
    fi
    for ((i = 0; i < wait; i++)); do
        if (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; then
            [ "$i" = 0 ] || log "the daemon at $DOCKER_HOST took connections after $i s"
            return 0
        fi
        sleep 1
    done
    die "nothing listens at $DOCKER_HOST after $wait s: is the docker:dind service running? It needs a runner that allows privileged services (its log is in the job's services output)"
}
daemon_wait

SUDO=""
if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || die "not root and no sudo: cannot install packages"
    SUDO=sudo
fi
apt_updated=""
apt_install() {
    [ -n "$apt_updated" ] || { $SUDO apt-get update -q >/dev/null || die "apt-get update failed"; apt_updated=1; }
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" ||
        die "apt-get install $* failed"
}

# download URL FILE: with curl, else wget, else curl installed with apt.
# Fails (status 1) when the server answers with an error (404: no such
# release asset) or cannot be reached.
download() {
    local url=$1 file=$2
    if ! command -v curl >/dev/null && ! command -v wget >/dev/null; then
        log "no curl and no wget: installing curl"
        apt_install curl ca-certificates
    fi
    case "$url" in
        https://*) [ -e /etc/ssl/certs/ca-certificates.crt ] || apt_install ca-certificates ;;
    esac
    if command -v curl >/dev/null; then
        curl -fsSL --retry 3 -o "$file" "$url"
    else
        wget -q --tries=3 -O "$file" "$url"
    fi
}

# install_release: the .deb of the action's own release (its repository and
# ref, from the runner's GITHUB_ACTION_* variables), checked against the
# release's SHA256SUMS.  Nothing here names where rdocker is published.
install_release() {
    local repo=${GITHUB_ACTION_REPOSITORY:-} ref=${GITHUB_ACTION_REF:-}
    local server=${GITHUB_SERVER_URL:-https://github.com} arch base dir line name t0 rest
    # The runner leaves both empty in a composite action's steps
    # (actions/runner#2525); its checkout of the action is at
    # .../_actions/OWNER/REPO/REF, which says the same.
    if [ -z "$repo" ] || [ -z "$ref" ]; then
        case "$ACTION_PATH" in
            */_actions/?*/?*/?*)
                rest=${ACTION_PATH##*/_actions/}
                repo=${rest%%/*}/$(cut -d/ -f2 <<<"$rest")
                ref=$(cut -d/ -f3- <<<"$rest") ;;
        esac
    fi
    if [ -z "$repo" ] || [ -z "$ref" ]; then
        die "rdocker is not installed, and the action's release is unknown (GITHUB_ACTION_REPOSITORY='$repo', GITHUB_ACTION_REF='$ref': a local 'uses: ./' has none): use a release, 'uses: OWNER/rdocker@vX.Y.Z', or set build-from-source: true, or give the input 'rdocker-deb'"
    fi
    arch=$(dpkg --print-architecture) || die "dpkg --print-architecture failed: not a Debian-based job?"
    base="${server%/}/$repo/releases/download/$ref"
    dir=$(mktemp -d)
    chmod 755 "$dir"   # apt's _apt user reads the .deb from it
    t0=$(date +%s)
    if ! download "$base/SHA256SUMS" "$dir/SHA256SUMS"; then
        die "no release asset at $base/SHA256SUMS: use a release tag in 'uses: $repo@vX.Y.Z' (not a branch or a commit: '$ref' has no release), or set build-from-source: true"
    fi
    # Only a plain Debian file name is taken from the file: it becomes a path.
    line=$(grep -E "^[0-9a-f]{64} [ *]rdocker_[A-Za-z0-9.+~-]+_${arch}\.deb\$" "$dir/SHA256SUMS" | head -n1 || true)
    [ -n "$line" ] ||
        die "the release at $base lists no rdocker .deb for $arch in SHA256SUMS ($(grep -o 'rdocker_[^ ]*\.deb' "$dir/SHA256SUMS" | tr '\n' ' ')): run on a runner of a released architecture, or set build-from-source: true"
    name=${line##*[ *]}
    download "$base/$name" "$dir/$name" ||
        die "no release asset at $base/$name, though SHA256SUMS lists it: the release is incomplete; retry, or set build-from-source: true"
    if ! (cd "$dir" && printf '%s\n' "$line" | sha256sum -c --strict --quiet - >/dev/null 2>&1); then
        die "checksum mismatch: $name from $base does not match its line in SHA256SUMS (expected ${line%% *}, got $(sha256sum "$dir/$name" | cut -d' ' -f1)); the download is corrupt or the release was changed: retry, or report it to $repo"
    fi
    log "$name: sha256 matches SHA256SUMS of $base"
    apt_install "$dir/$name"
    rm -rf "$dir"
    log "installed $name from the release $ref of $repo in $(( $(date +%s) - t0 )) s"
}

group install "install autopkgtest and rdocker"
t_install=$(date +%s)
command -v autopkgtest >/dev/null || apt_install autopkgtest
deb=${INPUT_RDOCKER_DEB:-}
if [ -n "$deb" ]; then
    case "$deb" in
        http://*|https://*)
            tmpdeb=$(mktemp -d)/rdocker.deb
            download "$deb" "$tmpdeb" || die "cannot download the rdocker .deb from $deb"
            deb=$tmpdeb ;;
        /*) ;;
        *) deb=$WORKSPACE/$deb ;;
    esac
    [ -f "$deb" ] || die "no rdocker .deb at $deb (the input 'rdocker-deb')"
    # apt-get needs a path with a slash; an already installed same version is a no-op.
    if ! $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$deb"; then
        apt_install "$deb"
    fi
elif [ "${INPUT_BUILD_FROM_SOURCE:-false}" = true ]; then
    command -v cargo >/dev/null ||
        die "build-from-source: true, but there is no cargo: install Rust first (rustup), or drop build-from-source to install the release .deb"
    log "building rdocker from $ACTION_PATH"
    cargo build --release --locked --manifest-path "$ACTION_PATH/Cargo.toml" ||
        die "building rdocker from $ACTION_PATH failed"
    target=$(cd "$ACTION_PATH" && cargo metadata --format-version 1 --no-deps |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
    $SUDO install -m 0755 "$target/release/autopkgtest-virt-rdocker" /usr/local/bin/
elif ! command -v autopkgtest-virt-rdocker >/dev/null; then
    install_release
fi
command -v autopkgtest-virt-rdocker >/dev/null || die "autopkgtest-virt-rdocker is not on PATH after installing it"
log "$(autopkgtest-virt-rdocker --version), $(dpkg-query -W -f '${Package} ${Version}' autopkgtest 2>/dev/null || echo autopkgtest); installing took $(( $(date +%s) - t_install )) s"
endgroup install

read -r -a at_args <<<"${INPUT_AUTOPKGTEST_ARGS:-}"
read -r -a rd_args <<<"${INPUT_RDOCKER_ARGS:-}"
case "${INPUT_APT_CACHE:-}" in
    ""|false) ;;
    *) mkdir -p "$INPUT_APT_CACHE" || die "cannot make the apt cache directory '$INPUT_APT_CACHE'"
       rd_args+=(--apt-cache "$INPUT_APT_CACHE") ;;
esac
read -r -a run_args <<<"${INPUT_DOCKER_RUN_ARGS:-}"
virt=(rdocker "${rd_args[@]}" "$IMAGE")
[ -z "${INPUT_PLATFORM:-}" ] || virt+=(--platform "$INPUT_PLATFORM")
virt+=("${run_args[@]}")
rm -rf "$OUTDIR"
mkdir -p "$(dirname "$OUTDIR")"
title="autopkgtest of \`$SOURCE\` on \`$IMAGE\`${INPUT_PLATFORM:+ ($INPUT_PLATFORM)}"
jobs=${INPUT_JOBS:-}
[ -n "$jobs" ] || jobs=$(nproc 2>/dev/null || echo 1)
case $jobs in
    ''|*[!0-9]*|0) die "the input 'jobs' must be a number of testbeds at once (1 or more), not '$jobs'" ;;
esac
runner=(autopkgtest)
if [ "$jobs" -gt 1 ]; then
    if command -v rdocker-autopkgtest >/dev/null; then
        # The step summary is this script's, below.
        runner=(rdocker-autopkgtest -j "$jobs" --step-summary /dev/null)
        # It reads a .dsc's tests from its unpacked tree, as autopkgtest would.
        [ -d "$SOURCE" ] || command -v dpkg-source >/dev/null || apt_install dpkg-dev
    else
        w="no rdocker-autopkgtest in the installed rdocker (older than the parallel runner): the tests run one after another"
        if [ -n "$GITLAB" ]; then log "warning: $w"; else echo "::warning title=rdocker action::$w"; fi
    fi
fi
log "${runner[*]} ${at_args[*]} $SOURCE -o $OUTDIR -- ${virt[*]}"
token=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
fold=(fold "$token")
[ -z "$GITLAB" ] || fold=(fold-gitlab)
start=$(date +%s)
set +e
"${runner[@]}" "${at_args[@]}" "$SOURCE" -o "$OUTDIR" -- "${virt[@]}" 2>&1 | python3 -u "$REPORT" "${fold[@]}"
rc=${PIPESTATUS[0]}
set -e
took=$(( $(date +%s) - start ))

# JUnit XML beside autopkgtest's summary, for actions that show test reports.
junit=""
if python3 "$REPORT" junit "$OUTDIR" >&2; then
    junit=$OUTDIR/junit.xml
else
    [ -n "$GITLAB" ] || echo "::warning title=rdocker action::could not write $OUTDIR/junit.xml (see the log)"
    log "warning: could not write $OUTDIR/junit.xml (see the log)"
fi
{
    python3 "$REPORT" summary "$OUTDIR" "$title"
    echo
    if [ -n "$GITLAB" ]; then
        echo "autopkgtest exit status $rc after $took s; output directory \`$OUTDIR\` (the job's artifacts)${junit:+; JUnit XML \`$junit\` (the test report of the job)}."
    else
        echo "autopkgtest exit status $rc after $took s; output directory \`$OUTDIR\` (the output \`output-dir\`, for actions/upload-artifact)${junit:+; JUnit XML \`$junit\` (the output \`junit\`)}."
    fi
} >"$OUTDIR.summary.md" || true
if [ -n "${GITHUB_STEP_SUMMARY:-}" ]; then
    cat "$OUTDIR.summary.md" >>"$GITHUB_STEP_SUMMARY"
else
    cat "$OUTDIR.summary.md"
fi
if [ -n "${GITHUB_OUTPUT:-}" ]; then
    { echo "output-dir=$OUTDIR"; echo "exit-code=$rc"; echo "junit=$junit"; } >>"$GITHUB_OUTPUT"
fi
case $rc in
    0) log "all tests passed ($took s)" ;;
    2) log "tests passed, some skipped ($took s)"; exit 0 ;;
    *) [ -n "$GITLAB" ] || echo "::error title=autopkgtest::autopkgtest exited with status $rc (4: a test failed, 8: no tests, 12: erroneous package, 16: testbed failure); see the log and $OUTDIR"
       log "autopkgtest exited with status $rc (4: a test failed, 8: no tests, 12: erroneous package, 16: testbed failure); see the log and $OUTDIR"
       exit "$rc" ;;
esac
