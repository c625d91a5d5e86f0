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
#                           else build it from the action's checkout with cargo
#   INPUT_APT_CACHE         a directory for rdocker's package cache (--apt-cache),
#                           kept by an actions/cache step; empty: the run's own
#   INPUT_OUTPUT_DIR        autopkgtest's output directory
#                           (default: $RUNNER_TEMP/autopkgtest-output)
# It installs autopkgtest (apt) and rdocker when missing, runs
#   autopkgtest ARGS SOURCE -o OUTPUT_DIR -- rdocker RDOCKER_ARGS IMAGE [--platform P] DOCKER_RUN_ARGS
# with its log folded into ::group:: sections, appends a table of the
# tests (result, duration) to $GITHUB_STEP_SUMMARY, and writes output-dir
# and exit-code to $GITHUB_OUTPUT.  Exits with autopkgtest's status, except
# 2 (some test skipped), which passes.
set -euo pipefail

log() { echo "rdocker-action: $*" >&2; }
die() { echo "::error title=rdocker action::$*"; log "error: $*"; exit 1; }

HERE=$(cd "$(dirname "$0")" && pwd)
ACTION_PATH=${GITHUB_ACTION_PATH:-$(cd "$HERE/../.." && pwd)}
WORKSPACE=${GITHUB_WORKSPACE:-$PWD}
SOURCE=${INPUT_SOURCE:-.}
IMAGE=${INPUT_IMAGE:-}
OUTDIR=${INPUT_OUTPUT_DIR:-${RUNNER_TEMP:-/tmp}/autopkgtest-output}

[ -n "$IMAGE" ] || die "the input 'image' is required: the testbed image, e.g. debian:sid"
cd "$WORKSPACE" || die "cannot enter GITHUB_WORKSPACE=$WORKSPACE"
[ -e "$SOURCE" ] || die "no source package at '$SOURCE' (relative to $WORKSPACE): give a source tree or a .dsc as the input 'source'"

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

echo "::group::install autopkgtest and rdocker"
command -v autopkgtest >/dev/null || apt_install autopkgtest
deb=${INPUT_RDOCKER_DEB:-}
if [ -n "$deb" ]; then
    case "$deb" in
        http://*|https://*)
            tmpdeb=$(mktemp -d)/rdocker.deb
            if command -v curl >/dev/null; then
                curl -fsSL -o "$tmpdeb" "$deb" || die "cannot download the rdocker .deb from $deb"
            else
                python3 -c 'import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])' \
                    "$deb" "$tmpdeb" || die "cannot download the rdocker .deb from $deb"
            fi
            deb=$tmpdeb ;;
        /*) ;;
        *) deb=$WORKSPACE/$deb ;;
    esac
    [ -f "$deb" ] || die "no rdocker .deb at $deb (the input 'rdocker-deb')"
    # apt-get needs a path with a slash; an already installed same version is a no-op.
    if ! $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$deb"; then
        apt_install "$deb"
    fi
elif ! command -v autopkgtest-virt-rdocker >/dev/null; then
    command -v cargo >/dev/null ||
        die "rdocker is not installed and there is no cargo to build it: give the input 'rdocker-deb' (a release .deb's URL or path)"
    log "building rdocker from $ACTION_PATH"
    cargo build --release --locked --manifest-path "$ACTION_PATH/Cargo.toml" ||
        die "building rdocker from $ACTION_PATH failed"
    target=$(cd "$ACTION_PATH" && cargo metadata --format-version 1 --no-deps |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
    $SUDO install -m 0755 "$target/release/autopkgtest-virt-rdocker" /usr/local/bin/
fi
command -v autopkgtest-virt-rdocker >/dev/null || die "autopkgtest-virt-rdocker is not on PATH after installing it"
log "$(autopkgtest-virt-rdocker --version), $(dpkg-query -W -f '${Package} ${Version}' autopkgtest 2>/dev/null || echo autopkgtest)"
echo "::endgroup::"

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
log "autopkgtest ${at_args[*]} $SOURCE -o $OUTDIR -- ${virt[*]}"
token=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
start=$(date +%s)
set +e
autopkgtest "${at_args[@]}" "$SOURCE" -o "$OUTDIR" -- "${virt[@]}" 2>&1 | python3 -u "$HERE/report.py" fold "$token"
rc=${PIPESTATUS[0]}
set -e
took=$(( $(date +%s) - start ))

{
    python3 "$HERE/report.py" summary "$OUTDIR" "$title"
    echo
    echo "autopkgtest exit status $rc after $took s; output directory \`$OUTDIR\` (the output \`output-dir\`, for actions/upload-artifact)."
} >"$OUTDIR.summary.md" || true
if [ -n "${GITHUB_STEP_SUMMARY:-}" ]; then
    cat "$OUTDIR.summary.md" >>"$GITHUB_STEP_SUMMARY"
else
    cat "$OUTDIR.summary.md"
fi
if [ -n "${GITHUB_OUTPUT:-}" ]; then
    { echo "output-dir=$OUTDIR"; echo "exit-code=$rc"; } >>"$GITHUB_OUTPUT"
fi
case $rc in
    0) log "all tests passed ($took s)" ;;
    2) log "tests passed, some skipped ($took s)"; exit 0 ;;
    *) echo "::error title=autopkgtest::autopkgtest exited with status $rc (4: a test failed, 8: no tests, 12: erroneous package, 16: testbed failure); see the log and $OUTDIR"
       exit "$rc" ;;
esac
