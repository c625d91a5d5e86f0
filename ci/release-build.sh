#!/bin/bash
# Build a release's .deb in a Debian bookworm container, and its SHA256SUMS.
# .github/workflows/release.yml runs it on each architecture's runner; CI
# runs it too (ci/test.sh), so the workflow is only its caller.
#
# Usage: ci/release-build.sh [--arch ARCH] [--out DIR] [--base IMAGE]
#   --arch ARCH   the Debian architecture, amd64 or arm64 (default: this
#                 machine's); the container runs with --platform linux/ARCH
#   --out DIR     where rdocker_VERSION_ARCH.deb and SHA256SUMS go (default:
#                 TREE/target/release-assets); SHA256SUMS lists every
#                 rdocker_*.deb in DIR, so builds of several architectures
#                 into one DIR give one SHA256SUMS
#   --base IMAGE  the bookworm image (default: rdocker-test/debian:bookworm
#                 when the daemon has it, else debian:bookworm)
#
# Why bookworm: the .deb depends on the glibc it was linked against
# (libc6 >= the newest symbol version it uses), so one built on the oldest
# supported release installs on bookworm, trixie, sid and Ubuntu 24.04.  The
# script checks that the libc6 it depends on is at most bookworm's (2.36),
# and installs the .deb in trixie and sid containers when the daemon has
# rdocker-test/debian:trixie and :sid.
#
# Rust: bookworm's is too old (1.63), so the build uses rustup's
# (ci/build-deb.sh, build profile pkg.rdocker.rustup): this machine's
# ~/.rustup and ~/.cargo mounted into the container when the architecture
# is this machine's (the tree is mounted at its own path, so that cargo
# reuses target/debian from ci/build-deb.sh), else rustup installed inside
# the container (needs static.rust-lang.org).  The container's build
# dependencies (dpkg-dev, debhelper, lintian, gcc) are an image of their
# own, rdocker-test/release-build:bookworm-ARCH, rebuilt when its inputs
# change.  Needs root (or the docker group) and a daemon.
set -euo pipefail

log() { echo "release-build: $*" >&2; }
die() { log "error: $*"; exit 1; }
usage() { sed -n '2,/^[^#]/{/^#/{s/^# \{0,1\}//;p}}' "$0"; }

TREE=$(cd "$(dirname "$0")/.." && pwd)
ARCH=""
OUT=""
BASE=""
while [ $# -gt 0 ]; do
    case "$1" in
        --arch) [ $# -ge 2 ] || die "--arch needs amd64 or arm64"; ARCH=$2; shift 2 ;;
        --arch=*) ARCH=${1#*=}; shift ;;
        --out) [ $# -ge 2 ] || die "--out needs a directory"; OUT=$2; shift 2 ;;
        --out=*) OUT=${1#*=}; shift ;;
        --base) [ $# -ge 2 ] || die "--base needs an image"; BASE=$2; shift 2 ;;
        --base=*) BASE=${1#*=}; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done

command -v docker >/dev/null || die "no docker CLI"
docker version >/dev/null 2>&1 || die "no Docker daemon reachable (start dockerd)"
host_arch=$(dpkg --print-architecture 2>/dev/null || uname -m)
case "$host_arch" in x86_64) host_arch=amd64 ;; aarch64) host_arch=arm64 ;; esac
ARCH=${ARCH:-$host_arch}
case "$ARCH" in
    amd64|arm64) ;;
    *) die "unsupported architecture '$ARCH': amd64 or arm64" ;;
esac
if [ -z "$BASE" ]; then
    if [ "$ARCH" = amd64 ] && docker image inspect rdocker-test/debian:bookworm >/dev/null 2>&1; then
        BASE=rdocker-test/debian:bookworm
    elif [ "$ARCH" = arm64 ] && docker image inspect rdocker-test/debian:bookworm-arm64 >/dev/null 2>&1; then
        BASE=rdocker-test/debian:bookworm-arm64
    else
        BASE=debian:bookworm
    fi
fi
OUT=${OUT:-$TREE/target/release-assets}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
BUILD_IMAGE=rdocker-test/release-build:bookworm-$ARCH
KEY_LABEL=org.debian.autopkgtest.rdocker.release-build.key
t0=$(date +%s)

# --- the build image: bookworm and the package's build tools ---------------
if ! docker image inspect "$BASE" >/dev/null 2>&1; then
    log "pulling $BASE for linux/$ARCH"
    docker pull --platform "linux/$ARCH" "$BASE" >/dev/null || die "cannot pull $BASE"
fi
base_arch=$(docker image inspect --format '{{.Architecture}}' "$BASE")
[ "$base_arch" = "$ARCH" ] || die "$BASE is for $base_arch, not $ARCH: give --base a bookworm image for $ARCH"
dockerfile='FROM base
RUN set -eux; apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        build-essential dpkg-dev debhelper lintian ca-certificates curl; \
    apt-get clean; rm -rf /var/lib/apt/lists/*'
key=$(printf '%s\n' "$dockerfile" "$(docker image inspect --format '{{.Id}}' "$BASE")" | sha256sum | cut -d' ' -f1)
have=$(docker image inspect --format "{{index .Config.Labels \"$KEY_LABEL\"}}" "$BUILD_IMAGE" 2>/dev/null || true)
if [ "$have" != "$key" ]; then
    log "building $BUILD_IMAGE from $BASE"
    ctx=$(mktemp -d)
    printf '%s\n' "${dockerfile/FROM base/FROM $BASE}" >"$ctx/Dockerfile"
    if ! DOCKER_BUILDKIT=0 docker build --platform "linux/$ARCH" --label "$KEY_LABEL=$key" \
            -t "$BUILD_IMAGE" "$ctx" >"$ctx/build.log" 2>&1; then
        tail -30 "$ctx/build.log" >&2; rm -rf "$ctx"; die "building $BUILD_IMAGE failed"
    fi
    rm -rf "$ctx"
fi

# --- the build -----------------------------------------------------------------
name="rdocker-release-build-$$"
trap 'docker rm -f "$name" >/dev/null 2>&1 || true' EXIT
rust=()
if [ "$ARCH" = "$host_arch" ] && [ -d "${RUSTUP_HOME:-$HOME/.rustup}" ] && [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo" ]; then
    # At their own paths: cargo's records of the crates' sources name them.
    rustup_home=$(cd "${RUSTUP_HOME:-$HOME/.rustup}" && pwd)
    cargo_home=$(cd "${CARGO_HOME:-$HOME/.cargo}" && pwd)
    rust=(-v "$rustup_home:$rustup_home" -v "$cargo_home:$cargo_home" -e "RUSTUP_HOME=$rustup_home"
          -e "CARGO_HOME=$cargo_home" -e "CARGO=$cargo_home/bin/cargo")
    log "Rust: this machine's rustup toolchain ($("${CARGO_HOME:-$HOME/.cargo}/bin/cargo" --version))"
else
    log "Rust: rustup installed in the container (no $ARCH toolchain here)"
fi
inner='set -e
if [ -z "${CARGO:-}" ]; then
    curl --proto "=https" --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal >/dev/null
    export CARGO=$HOME/.cargo/bin/cargo
fi
export PATH=$(dirname "$CARGO"):$PATH
"$1/ci/build-deb.sh" --tree "$1" --out "$2"'
build_out=$TREE/target/release-build-$ARCH
rm -rf "$build_out"
log "building the .deb for $ARCH in $BASE"
if ! docker run --name "$name" --platform "linux/$ARCH" "${rust[@]}" -v "$TREE:$TREE" -w "$TREE" \
        "$BUILD_IMAGE" bash -c "$inner" inner "$TREE" "$build_out" >"$TREE/target/release-build-$ARCH.log" 2>&1; then
    tail -40 "$TREE/target/release-build-$ARCH.log" >&2
    die "the build failed (log: target/release-build-$ARCH.log)"
fi
shopt -s nullglob
debs=("$build_out"/rdocker_*_"$ARCH".deb)
shopt -u nullglob
[ ${#debs[@]} -eq 1 ] || die "the build made ${#debs[@]} rdocker_*_$ARCH.deb in $build_out, not one"
deb=${debs[0]}

# --- checks: one .deb for bookworm and later -----------------------------------
depends=$(dpkg-deb -f "$deb" Depends)
libc=$(sed -n 's/.*libc6 (>= \([^)]*\)).*/\1/p' <<<"$depends")
[ -n "$libc" ] || die "$(basename "$deb") has no libc6 (>= V) dependency: Depends: $depends"
dpkg --compare-versions "$libc" le 2.36 ||
    die "$(basename "$deb") needs libc6 >= $libc, newer than bookworm's 2.36: was it built on bookworm?"
log "$(basename "$deb"): Depends: $depends (libc6 >= $libc: bookworm's 2.36 and later)"
for rel in trixie sid; do
    img=rdocker-test/debian:$rel
    [ "$ARCH" = "$host_arch" ] && docker image inspect "$img" >/dev/null 2>&1 || continue
    if ! out=$(docker run --rm -v "$deb:/tmp/rdocker.deb:ro" "$img" \
            sh -c 'apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends /tmp/rdocker.deb >/dev/null && autopkgtest-virt-rdocker --version' 2>&1); then
        die "$(basename "$deb") does not install on $rel: $out"
    fi
    log "installs and runs on $rel: $out"
done

cp "$deb" "$OUT/"
(cd "$OUT" && sha256sum rdocker_*.deb >SHA256SUMS.new && mv SHA256SUMS.new SHA256SUMS)
log "in $OUT: $(basename "$deb") and SHA256SUMS ($(wc -l <"$OUT/SHA256SUMS") .deb(s)), in $(( $(date +%s) - t0 )) s"
cat "$OUT/SHA256SUMS"
