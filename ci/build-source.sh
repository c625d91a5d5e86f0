#!/bin/bash
# Make rdocker's Debian source package, vendored crates included.
#
# Usage: ci/build-source.sh OUTDIR
#
# Writes to OUTDIR (created if missing; earlier results of the same version
# are replaced):
#   rdocker_UPSTREAM.orig.tar.xz         the files git knows (tracked, or
#                                        untracked and not ignored), without
#                                        debian/, under rdocker-UPSTREAM/
#   rdocker_UPSTREAM.orig-vendor.tar.xz  `cargo vendor --locked` of Cargo.lock,
#                                        unpacked by dpkg-source into vendor/
#   rdocker_VERSION.debian.tar.xz, rdocker_VERSION.dsc  (3.0 (quilt))
# and prints the .dsc's path.  An orig-vendor tarball already in OUTDIR is
# reused when Cargo.lock has not changed since it was made.
# The vendored crates are exactly Cargo.lock's, with one change: the
# prebuilt Windows import libraries (*.a, *.lib, *.dll in the
# winapi-*-pc-windows-gnu and windows_* crates, which only Windows targets
# link) are removed, and with them their entries in the crates'
# .cargo-checksum.json (cargo checks only the files listed there).
#
# Needs git, dpkg-dev, xz-utils, python3, and cargo (from rustup or Debian)
# with network access to crates.io, or with every crate of Cargo.lock
# already in cargo's cache.  Unsigned.
set -euo pipefail

log() { echo "build-source: $*" >&2; }
die() { log "error: $*"; exit 1; }
usage() { sed -n '2,/^[^#]/{/^#/{s/^# \{0,1\}//;p}}' "$0"; }

case "${1:-}" in
    -h|--help) usage; exit 0 ;;
    ""|-*) usage >&2; die "give the output directory" ;;
esac
[ $# -eq 1 ] || { usage >&2; die "one argument: the output directory"; }

TREE=$(cd "$(dirname "$0")/.." && pwd)
export PATH="$PATH:${CARGO_HOME:-$HOME/.cargo}/bin"
missing=()
for tool in git:git dpkg-source:dpkg-dev xz:xz-utils python3:python3; do
    command -v "${tool%%:*}" >/dev/null || missing+=("${tool#*:}")
done
[ ${#missing[@]} -eq 0 ] || die "missing tools; install them with: apt-get install -y ${missing[*]}"
command -v cargo >/dev/null ||
    die "no cargo on PATH or in ~/.cargo/bin: install Rust (see debian/README.source) to vendor the crates"

mkdir -p "$1" || die "cannot create the output directory $1"
OUT=$(cd "$1" && pwd)
cd "$TREE"
src=$(dpkg-parsechangelog -S Source)
version=$(dpkg-parsechangelog -S Version)
upstream=${version#*:}
upstream=${upstream%-*}
[ "$upstream" != "${version#*:}" ] ||
    die "version $version has no Debian revision: the source format is 3.0 (quilt), which needs one"
# Timestamps in the tarballs: the changelog's, so that a rebuild of the same
# tree gives the same tarballs.
SOURCE_DATE_EPOCH=$(dpkg-parsechangelog -S Timestamp)
export SOURCE_DATE_EPOCH

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
top="$src-$upstream"
orig="${src}_$upstream.orig.tar.xz"
vorig="${src}_$upstream.orig-vendor.tar.xz"
tarc() { tar --sort=name --mtime="@$SOURCE_DATE_EPOCH" --owner=0 --group=0 --numeric-owner "$@"; }
xzc() { xz -T2 -6 -c; }
t0=$(date +%s)

# --- the upstream tarball: what git knows, minus debian/ ----------------------
git -C "$TREE" rev-parse --git-dir >/dev/null 2>&1 || die "$TREE is not a git checkout"
mkdir -p "$TMP/up/$top"
git -C "$TREE" ls-files -z --cached --others --exclude-standard |
    while IFS= read -r -d '' f; do
        case "$f" in debian/*) continue ;; esac
        [ -e "$f" ] || [ -L "$f" ] || continue    # deleted but not yet committed
        printf '%s\0' "$f"
    done >"$TMP/files"
tar -C "$TREE" --null -T "$TMP/files" -cf - | tar -C "$TMP/up/$top" -xf -
tarc -C "$TMP/up" -cf - "$top" | xzc >"$TMP/$orig"
log "$orig: $(tr -cd '\0' <"$TMP/files" | wc -c) files, $(du -k "$TMP/$orig" | cut -f1) KiB"

# --- the vendor component ----------------------------------------------------
# Reused from OUTDIR when Cargo.lock and this script are what made it (the
# orig tarball of a version does not change; compressing it takes minutes).
vkey=$(cat "$TREE/Cargo.lock" "$0" | sha256sum | cut -d' ' -f1)
if [ -f "$OUT/$vorig" ] && [ "$(cat "$OUT/.$vorig.key" 2>/dev/null)" = "$vkey" ]; then
    log "$vorig: reusing the one in $OUT (same Cargo.lock)"
    cp "$OUT/$vorig" "$TMP/$vorig"
    tar -C "$TMP" -xJf "$TMP/$vorig"
else
    log "cargo vendor --locked ($(cargo --version))"
    if ! cargo vendor --locked --manifest-path "$TREE/Cargo.toml" "$TMP/vendor" >/dev/null 2>"$TMP/vendor.log"; then
        tail -20 "$TMP/vendor.log" >&2
        die "cargo vendor failed: it needs crates.io (network) or every crate of Cargo.lock in cargo's cache"
    fi
    python3 - "$TMP/vendor" <<'EOF'
# Drop the Windows import libraries and their checksum entries.
import json, os, re, sys
vendor = sys.argv[1]
crate_re = re.compile(r'^(winapi-(i686|x86_64)-pc-windows-gnu|windows_[a-z0-9_]+)(-[0-9][0-9.]*)?$')
removed = 0
for crate in sorted(os.listdir(vendor)):
    if not crate_re.match(crate):
        continue
    sums = os.path.join(vendor, crate, '.cargo-checksum.json')
    with open(sums) as f:
        meta = json.load(f)
    for name in list(meta['files']):
        if re.search(r'\.(a|lib|dll)$', name):
            os.unlink(os.path.join(vendor, crate, name))
            del meta['files'][name]
            removed += 1
    with open(sums, 'w') as f:
        json.dump(meta, f, sort_keys=True, separators=(',', ':'))
print(f"build-source: removed {removed} Windows import libraries from the vendored crates", file=sys.stderr)
EOF
    tarc -C "$TMP" -cf - vendor | xzc >"$TMP/$vorig"
    log "$vorig: $(ls "$TMP/vendor" | wc -l) crates, $(du -k "$TMP/$vorig" | cut -f1) KiB"
    cp "$TMP/$vorig" "$OUT/$vorig.tmp" && mv "$OUT/$vorig.tmp" "$OUT/$vorig"
    echo "$vkey" >"$OUT/.$vorig.key"
fi

# --- the source package: both tarballs unpacked, debian/ added ----------------
mkdir -p "$TMP/build"
mv "$TMP/$orig" "$TMP/$vorig" "$TMP/build/"
tar -C "$TMP/build" -xf "$TMP/build/$orig"
mv "$TMP/vendor" "$TMP/build/$top/vendor"
git -C "$TREE" ls-files -z --cached --others --exclude-standard -- debian |
    while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done >"$TMP/debfiles"
tar -C "$TREE" --null -T "$TMP/debfiles" -cf - | tar -C "$TMP/build/$top" -xf -
if ! (cd "$TMP/build" && dpkg-source -b "$top") >"$TMP/dpkg-source.log" 2>&1; then
    cat "$TMP/dpkg-source.log" >&2
    die "dpkg-source -b failed (see above)"
fi
dsc="${src}_$version.dsc"
[ -f "$TMP/build/$dsc" ] || die "dpkg-source made no $dsc"
files=("$dsc")
while read -r f; do files+=("$f"); done < <(sed -n '/^Files:/,/^[^ ]/{/^ /s/.* //p}' "$TMP/build/$dsc")
for f in "${files[@]}"; do mv -f "$TMP/build/$f" "$OUT/"; done
log "in $OUT: ${files[*]} ($(( $(date +%s) - t0 )) s)"
echo "$OUT/$dsc"
