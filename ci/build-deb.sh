#!/bin/bash
# Build the rdocker .deb with dpkg-buildpackage, collect it, lint it.
#
# Usage: ci/build-deb.sh [--tree DIR] [--out DIR] [--install]
#   --tree DIR  the source tree to build (default: this repository)
#   --out DIR   where the .deb, its -dbgsym .deb, .buildinfo and .changes
#               go (default: TREE/target/deb)
#   --install   then install the .deb with apt-get and check that the
#               installed program and man page work (needs root)
#
# It fails when the build fails or lintian reports any error (E:) or
# warning (W:) on the .deb or its -dbgsym package; it prints lintian's
# report and the package's file list.  Running it again rebuilds and replaces the earlier results.
#
# Needs dpkg-dev, debhelper and lintian from Debian, and cargo from rustup
# (see debian/README.source): it builds with the pkg.rdocker.rustup build
# profile, which is what makes the package build on bookworm.  (Debian's own
# cargo, offline from vendored crates, is ci/offline-build.sh's route.)
set -euo pipefail

log() { echo "build-deb: $*" >&2; }
die() { log "error: $*"; exit 1; }
usage() { sed -n '2,/^[^#]/{/^#/{s/^# \{0,1\}//;p}}' "$0"; }

TREE=$(cd "$(dirname "$0")/.." && pwd)
OUT=""
INSTALL=""
while [ $# -gt 0 ]; do
    case "$1" in
        --tree) [ $# -ge 2 ] || die "--tree needs a directory"; TREE=$2; shift 2 ;;
        --tree=*) TREE=${1#*=}; shift ;;
        --out) [ $# -ge 2 ] || die "--out needs a directory"; OUT=$2; shift 2 ;;
        --out=*) OUT=${1#*=}; shift ;;
        --install) INSTALL=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done

[ -d "$TREE" ] || die "no source tree at $TREE"
TREE=$(cd "$TREE" && pwd)
{ [ -f "$TREE/debian/changelog" ] && [ -f "$TREE/debian/rules" ]; } ||
    die "$TREE has no debian/changelog and debian/rules: not an rdocker source tree"
[ "$TREE" != / ] || die "cannot build in /: dpkg-buildpackage writes its results to the parent directory"
OUT=${OUT:-$TREE/target/deb}
mkdir -p "$OUT" || die "cannot create the output directory $OUT"
OUT=$(cd "$OUT" && pwd)

missing=()
for tool in dpkg-buildpackage:dpkg-dev dh:debhelper lintian:lintian; do
    command -v "${tool%%:*}" >/dev/null || missing+=("${tool#*:}")
done
[ ${#missing[@]} -eq 0 ] || die "missing tools; install them with: apt-get install -y ${missing[*]}"

cd "$TREE"
src=$(dpkg-parsechangelog -S Source)
version=$(dpkg-parsechangelog -S Version)
arch=$(dpkg-architecture -qDEB_HOST_ARCH)
parent=$(dirname "$TREE")
changes="${src}_${version}_${arch}.changes"
deb="${src}_${version}_${arch}.deb"

log "building $src $version for $arch in $TREE"
start=$(date +%s)
# -b: binary only (no source package); results land in $parent.
if ! dpkg-buildpackage -us -uc -b -Ppkg.rdocker.rustup; then
    die "dpkg-buildpackage failed (see above)"
fi
elapsed=$(( $(date +%s) - start ))
log "dpkg-buildpackage took ${elapsed} s"

# Collect exactly what this build produced: the .changes and what it lists.
[ -f "$parent/$changes" ] || die "dpkg-buildpackage made no $parent/$changes"
files=("$changes")
while read -r f; do files+=("$f"); done < <(
    sed -n '/^Files:/,/^[^ ]/{/^ /s/.* //p}' "$parent/$changes")
for f in "${files[@]}"; do
    [ -f "$parent/$f" ] || die "$parent/$changes lists $f, which is not there"
    mv -f "$parent/$f" "$OUT/"
done
[ -f "$OUT/$deb" ] || die "the build produced no $deb"
log "results in $OUT: ${files[*]}"

# The .changes covers the .deb and its -dbgsym package.
echo "== lintian -i --tag-display-limit 0 $changes"
set +e
report=$(lintian -i --tag-display-limit 0 "$OUT/$changes" 2>&1)
lintian_rc=$?
set -e
[ -z "$report" ] || printf '%s\n' "$report"
bad=$(printf '%s\n' "$report" | grep -E '^[EW]: ' || true)
if [ -n "$bad" ]; then
    die "lintian reports errors or warnings on the packages of $changes:"$'\n'"$bad"
fi
[ $lintian_rc -eq 0 ] || die "lintian failed (exit status $lintian_rc)"
log "lintian: no errors or warnings"

echo "== dpkg -c $deb"
dpkg -c "$OUT/$deb"

if [ -n "$INSTALL" ]; then
    [ "$(id -u)" = 0 ] || die "--install needs root (it runs apt-get install)"
    log "installing $OUT/$deb"
    DEBIAN_FRONTEND=noninteractive apt-get install -y "$OUT/$deb"
    installed=$(dpkg-query -W -f '${Version}' "$src")
    [ "$installed" = "$version" ] || die "after apt-get install, $src is at version '$installed', not $version"
    v=$(/usr/bin/autopkgtest-virt-rdocker --version) ||
        die "the installed /usr/bin/autopkgtest-virt-rdocker does not run"
    page=$(man -w autopkgtest-virt-rdocker) || die "man cannot find the installed autopkgtest-virt-rdocker(1)"
    log "installed: $v; man page $page"
fi
