#!/bin/bash
# Build rdocker's source package, then its binary package on Debian trixie
# with Debian's own cargo and rustc, with no network at all, and lint both.
#
# Usage: ci/offline-build.sh [--dsc FILE] [--out DIR] [--fresh]
#   --dsc FILE  build this source package (default: make one from this
#               tree with ci/build-source.sh into OUT/source)
#   --out DIR   where results go (default: target/offline); the binary
#               build's .changes, .debs and .buildinfo land in OUT/build
#   --fresh     compile everything; by default cargo's build directory
#               (target/ in the unpacked tree) is kept in OUT/cargo-target
#               between runs, so that crates whose version, flags and
#               compiler did not change are not compiled again (cargo's own
#               fingerprints decide; rdocker's sources are touched after
#               unpacking so that rdocker itself is always rebuilt).  First
#               run, or --fresh: about 12 minutes on 2 busy cores.
#
# Steps:
#   1. ci/build-source.sh OUT/source (cargo vendor runs on this machine);
#   2. the build image rdocker-test/build:trixie: rdocker-test/debian:trixie
#      (ci/provision.sh imports it) with build-essential and the .dsc's
#      Build-Depends installed from the mirror; the only step with network.
#      Reused while the trixie image and the Build-Depends are the same;
#   3. in a container of it with --network none (checked: no interface but
#      lo): dpkg-source -x, then dpkg-buildpackage -us -uc (source and
#      binary; the package's unit tests run too);
#   4. lintian on the .changes (the source package and the .debs): any E:
#      or W: fails;
#   5. the .deb installs in a bare trixie container and its program runs.
# Needs root (or the docker group), the local daemon, dpkg-dev and lintian,
# and what ci/build-source.sh needs.
set -euo pipefail

log() { echo "offline-build: $*" >&2; }
die() { log "error: $*"; exit 1; }
usage() { sed -n '2,/^[^#]/{/^#/{s/^# \{0,1\}//;p}}' "$0"; }

TREE=$(cd "$(dirname "$0")/.." && pwd)
TRIXIE_IMAGE=${RDOCKER_TEST_TRIXIE_IMAGE:-rdocker-test/debian:trixie}
BUILD_IMAGE=rdocker-test/build:trixie
KEY_LABEL=org.debian.autopkgtest.rdocker.build.key
DSC=""
FRESH=""
OUT=$TREE/target/offline
while [ $# -gt 0 ]; do
    case "$1" in
        --dsc) [ $# -ge 2 ] || die "--dsc needs a file"; DSC=$2; shift 2 ;;
        --dsc=*) DSC=${1#*=}; shift ;;
        --out) [ $# -ge 2 ] || die "--out needs a directory"; OUT=$2; shift 2 ;;
        --out=*) OUT=${1#*=}; shift ;;
        --fresh) FRESH=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done

command -v docker >/dev/null || die "no docker CLI (ci/provision.sh installs docker.io)"
docker info >/dev/null 2>&1 || die "no Docker daemon answers: start one (ci/provision.sh does)"
docker image inspect "$TRIXIE_IMAGE" >/dev/null 2>&1 ||
    die "no image $TRIXIE_IMAGE on the daemon: make it with ci/provision.sh (it debootstraps trixie)"
command -v lintian >/dev/null || die "no lintian: apt-get install -y lintian"
mkdir -p "$OUT" || die "cannot create $OUT"
OUT=$(cd "$OUT" && pwd)
now() { date +%s; }
T0=$(now)
CID=""
cleanup() { [ -z "$CID" ] || docker rm -f "$CID" >/dev/null 2>&1 || true; }
trap cleanup EXIT

# --- 1. the source package -----------------------------------------------------
t=$(now)
if [ -z "$DSC" ]; then
    DSC=$("$TREE/ci/build-source.sh" "$OUT/source") || die "ci/build-source.sh failed (see above)"
fi
[ -f "$DSC" ] || die "no such .dsc: $DSC"
DSC=$(cd "$(dirname "$DSC")" && pwd)/$(basename "$DSC")
SRCDIR=$(dirname "$DSC")
T_SOURCE=$(( $(now) - t ))
log "source package: $DSC ($T_SOURCE s)"

# --- 2. the build image (network) ------------------------------------------------
t=$(now)
bdeps=$(grep -E '^Build-Depends(-Arch|-Indep)?:' "$DSC" || true)
key=$(printf '%s\n' "base=$(docker image inspect --format '{{.Id}}' "$TRIXIE_IMAGE")" "$bdeps" \
    "recipe=2" | sha256sum | cut -d' ' -f1)
have=$(docker image inspect --format "{{index .Config.Labels \"$KEY_LABEL\"}}" "$BUILD_IMAGE" 2>/dev/null || true)
if [ "$have" = "$key" ]; then
    log "build image $BUILD_IMAGE is up to date"
else
    log "making $BUILD_IMAGE: $TRIXIE_IMAGE with the build dependencies of $(basename "$DSC") (network)"
    CID=$(docker run -d -v "$SRCDIR:/src:ro" "$TRIXIE_IMAGE" sh -c '
        set -e
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends build-essential dpkg-dev
        DEBIAN_FRONTEND=noninteractive apt-get build-dep -y -q "/src/'"$(basename "$DSC")"'"
        apt-get clean; rm -rf /var/lib/apt/lists/*')
    rc=$(docker wait "$CID")
    docker logs "$CID" >"$OUT/build-image.log" 2>&1 || true
    if [ "$rc" != 0 ]; then
        tail -20 "$OUT/build-image.log" >&2
        die "installing the build dependencies in $TRIXIE_IMAGE failed (exit $rc; log $OUT/build-image.log); can containers reach the Debian mirror?"
    fi
    docker commit --change 'CMD ["/bin/bash"]' --change "LABEL $KEY_LABEL=$key" "$CID" "$BUILD_IMAGE" >/dev/null
    docker rm "$CID" >/dev/null; CID=""
fi
tools=$(docker run --rm --network none "$BUILD_IMAGE" sh -c 'cargo --version; rustc --version')
T_IMAGE=$(( $(now) - t ))
log "build image ready ($T_IMAGE s): ${tools//$'\n'/, }"

# --- 3. the build, with no network ---------------------------------------------
t=$(now)
rm -rf "$OUT/build"; mkdir -p "$OUT/build"
[ -z "$FRESH" ] || rm -rf "$OUT/cargo-target"
mkdir -p "$OUT/cargo-target"
log "dpkg-buildpackage in $BUILD_IMAGE with --network none${FRESH:+, from scratch} (log: $OUT/build/build.log)"
set +e
docker run --rm --network none -v "$SRCDIR:/src:ro" -v "$OUT/build:/out" -v "$OUT/cargo-target:/cargo-target" \
    -e DEB_BUILD_OPTIONS="parallel=$(nproc)" "$BUILD_IMAGE" bash -c '
    set -euo pipefail
    nets=$(ls /sys/class/net)
    [ "$nets" = lo ] || { echo "offline-build: the build container has network interfaces: $nets" >&2; exit 90; }
    if getent hosts deb.debian.org >/dev/null 2>&1 || getent hosts index.crates.io >/dev/null 2>&1; then
        echo "offline-build: names resolve in the build container" >&2; exit 90
    fi
    echo "offline-build: network interfaces: $nets"
    mkdir /build && cd /build
    dpkg-source -x "/src/'"$(basename "$DSC")"'" tree
    cd tree
    test -d vendor || { echo "offline-build: the source package unpacked without vendor/" >&2; exit 91; }
    # cargo s build directory from the last run; rdocker s own files newer
    # than anything in it, so that cargo rebuilds rdocker whatever its mtimes.
    ln -s /cargo-target target
    find . -path ./vendor -prune -o -type f -exec touch {} +
    dpkg-buildpackage -us -uc
    cd ..
    changes=$(ls ./*.changes)
    cp "$changes" $(sed -n "/^Files:/,/^[^ ]/{/^ /s/.* //p}" "$changes") /out/
' >"$OUT/build/build.log" 2>&1
rc=$?
set -e
T_BUILD=$(( $(now) - t ))
if [ $rc -ne 0 ]; then
    tail -40 "$OUT/build/build.log" >&2
    case $rc in
        90) die "the build container was not offline (see above)" ;;
        *) die "the offline build failed (exit $rc) after $T_BUILD s; log: $OUT/build/build.log" ;;
    esac
fi
grep -E '^debian/rules: ' "$OUT/build/build.log" | sed 's/^/offline-build:   /' >&2 || true
shopt -s nullglob
changes=("$OUT"/build/*.changes)
debs=("$OUT"/build/*.deb)
shopt -u nullglob
[ ${#changes[@]} -eq 1 ] || die "expected one .changes in $OUT/build, found ${#changes[@]}"
[ ${#debs[@]} -ge 1 ] || die "the offline build made no .deb"
log "built offline in $T_BUILD s: $(cd "$OUT/build" && ls -- *.deb *.dsc 2>/dev/null | tr '\n' ' ')"

# --- 4. lintian: source and binaries -------------------------------------------------
t=$(now)
set +e
report=$(lintian -i --tag-display-limit 0 "${changes[0]}" 2>&1)
lrc=$?
set -e
printf '%s\n' "$report" >"$OUT/lintian.txt"
bad=$(grep -E '^[EW]: ' "$OUT/lintian.txt" || true)
if [ -n "$bad" ]; then
    printf '%s\n' "$report"
    die "lintian reports errors or warnings on $(basename "${changes[0]}"):"$'\n'"$bad"
fi
[ $lrc -eq 0 ] || { printf '%s\n' "$report"; die "lintian failed (exit status $lrc)"; }
T_LINT=$(( $(now) - t ))
log "lintian ($(lintian --version)): no errors or warnings on the source and binary packages ($T_LINT s); $(grep -cE '^[IPX]: ' "$OUT/lintian.txt" || true) info/pedantic/experimental tags, in $OUT/lintian.txt"

# --- 5. the .deb installs and runs on trixie ---------------------------------------
deb=$(cd "$OUT/build" && ls rdocker_*.deb)
# The build was offline; installing takes its dependencies (python3) from the mirror.
v=$(docker run --rm -v "$OUT/build:/out:ro" "$TRIXIE_IMAGE" sh -c \
    "apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends /out/$deb >/dev/null && autopkgtest-virt-rdocker --version") ||
    die "$deb does not install or run in a bare $TRIXIE_IMAGE"
log "$deb installs on trixie: $v"
log "done in $(( $(now) - T0 )) s (source $T_SOURCE s, build image $T_IMAGE s, offline build $T_BUILD s, lintian $T_LINT s)"
