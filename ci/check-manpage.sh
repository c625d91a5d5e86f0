#!/bin/bash
# Check man/autopkgtest-virt-rdocker.1 against the binary:
#  (a) every option that --help shows (rdocker's own, short and long, and
#      the docker run options its closing text lists) has an entry of its
#      own in the page: it appears in the tag of a .TP paragraph.  The
#      docker run options that src/docker/runopts.rs accepts (aliases such
#      as -m and --net included) are checked too, when the source is there;
#  (b) man --warnings reports nothing, neither with the defaults nor with
#      the UTF-8, 80-column settings that lintian uses.
#
# Usage: ci/check-manpage.sh [BINARY [MANPAGE]]
#   BINARY   default target/release/autopkgtest-virt-rdocker
#   MANPAGE  default man/autopkgtest-virt-rdocker.1
set -euo pipefail

cd "$(dirname "$0")/.."
BIN=${1:-target/release/autopkgtest-virt-rdocker}
PAGE=${2:-man/autopkgtest-virt-rdocker.1}
RUNOPTS=src/docker/runopts.rs

die() { echo "check-manpage: $*" >&2; exit 1; }

[ -x "$BIN" ] || die "no executable $BIN (build it with: cargo build --release)"
[ -r "$PAGE" ] || die "cannot read the man page $PAGE"
command -v man >/dev/null || die "man is not installed (apt-get install man-db)"

help=$("$BIN" --help) || die "$BIN --help failed"
optre='--?[A-Za-z0-9][A-Za-z0-9-]*'

# rdocker's own options: the first column of the "Options:" lines, e.g.
# "  -d, --debug   ..." and "      --shared-dir <PATH>  ...".
own=$(printf '%s\n' "$help" | sed -n 's/^ \{2,\}\(-[^ ].*\)$/\1/p' |
    sed 's/  .*//' | grep -oE -- "$optre" || true)
# The docker run options named in the closing text: "docker run options
# after IMAGE: -v/--volume, -e/--env, --network, ...".
run=$(printf '%s\n' "$help" | sed -n 's/^docker run options after IMAGE: *//p' |
    grep -oE -- "$optre" || true)
[ "$(printf '%s\n' "$own" | grep -c -- '^--')" -ge 3 ] ||
    die "found almost no options in '$BIN --help'; has its format changed? Update $0"
[ -n "$run" ] ||
    die "found no 'docker run options after IMAGE:' line in '$BIN --help'; has its wording changed? Update $0"
# The match arms of RunOptions::parse: '"-m" | "--memory" => ...'.
src=""
if [ -r "$RUNOPTS" ]; then
    src=$(grep -oE '^ +"--?[a-z][a-z-]*"( \| "--?[a-z][a-z-]*")* =>' "$RUNOPTS" |
        grep -oE -- "\"$optre\"" | tr -d '"' || true)
    src+=$'\n'$(grep -oE 'name == "--?[a-z][a-z-]*"' "$RUNOPTS" | grep -oE -- "$optre" || true)
    [ -n "$src" ] || die "found no options in $RUNOPTS; has its parser changed? Update $0"
fi
options=$(printf '%s\n%s\n%s\n' "$own" "$run" "$src" | grep -E -- '^-' | sort -u)

# The words of the page's .TP tags (the line after each .TP), with the
# font escapes, quotes and separators removed: ".BR \-d ", " \-\-debug"
# gives -d and --debug; "\fB\-\-privileged\fR[\fB=true\fR..." gives
# --privileged and =true.
tags=$(awk 'prev ~ /^\.TP/ { print } { prev = $0 }' "$PAGE" |
    sed -e 's/\\f[BIRP]//g' -e 's/\\f(..//g' -e 's/\\-/-/g' -e 's/^\.[BIR][BIR]\{0,1\}[[:space:]]//' -e 's/"//g' |
    tr -s ' \t,[]|/' '\n')

missing=()
for opt in $options; do
    # Not `printf | grep -q`: grep -q quits at the first match, and under
    # pipefail printf's SIGPIPE then failed the check now and then.
    grep -qxF -- "$opt" <<<"$tags" || missing+=("$opt")
done
if [ ${#missing[@]} -gt 0 ]; then
    die "$PAGE has no entry (.TP tag) for: ${missing[*]}"
fi
# shellcheck disable=SC2086 # one line, words split on purpose
echo "check-manpage: $PAGE documents all $(printf '%s\n' "$options" | wc -l) options:" $options

# (b)
for settings in "" "LC_ALL=C.UTF-8 MANWIDTH=80"; do
    # shellcheck disable=SC2086 # $settings is a list of VAR=value words
    out=$(env $settings man --warnings -E UTF-8 -l "$PAGE" 2>&1 >/dev/null) ||
        die "man failed on $PAGE: $out"
    [ -z "$out" ] || die "man --warnings (${settings:-default settings}) reports on $PAGE:"$'\n'"$out"
done
out=$(man --warnings -l "$PAGE" 2>&1 >/dev/null) || die "man failed on $PAGE: $out"
[ -z "$out" ] || die "man --warnings reports on $PAGE:"$'\n'"$out"
echo "check-manpage: man --warnings is silent"
