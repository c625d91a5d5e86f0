#!/bin/bash
# Foreign-architecture testbeds (issue 20): qemu-user-static with an
# aarch64 binfmt_misc handler the kernel applies to containers too (flag
# F), and arm64 test images built like the amd64 ones:
#   rdocker-test/debian:bookworm-arm64       debootstrap --arch=arm64, imported
#   rdocker-test/autopkgtest:bookworm-arm64  autopkgtest-build-docker on it
# Idempotent; the debootstrap tree is cached under /var/cache/rdocker-test.
# Called by ci/provision.sh; runs on its own too (as root).
set -euo pipefail

ARM64_BASE_IMAGE=${RDOCKER_TEST_ARM64_BASE_IMAGE:-rdocker-test/debian:bookworm-arm64}
ARM64_IMAGE=${RDOCKER_TEST_ARM64_IMAGE:-rdocker-test/autopkgtest:bookworm-arm64}
CACHE=${RDOCKER_TEST_CACHE:-/var/cache/rdocker-test}
MIRROR=${RDOCKER_TEST_MIRROR:-http://deb.debian.org/debian}
BINFMT=/proc/sys/fs/binfmt_misc
HANDLER=qemu-aarch64

log() { echo "provision-foreign: $*" >&2; }
die() { log "$*"; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (it installs packages, mounts binfmt_misc and registers a handler)"
t0=$(date +%s)
mkdir -p "$CACHE"

need_pkgs=()
for p in qemu-user-static binfmt-support debootstrap autopkgtest docker.io python3; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || need_pkgs+=("$p")
done
if [ ${#need_pkgs[@]} -gt 0 ]; then
    log "installing ${need_pkgs[*]}"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need_pkgs[@]}" >/dev/null ||
        die "installing ${need_pkgs[*]} failed; run apt-get install ${need_pkgs[*]} by hand to see why"
fi

# The handler, registered as a user would: binfmt-support's update-binfmts
# from qemu-user-static's /usr/share/binfmts entry; else the systemd-binfmt
# line written to the kernel directly.
if [ ! -e "$BINFMT/register" ]; then
    log "mounting binfmt_misc on $BINFMT"
    mount -t binfmt_misc binfmt_misc "$BINFMT" ||
        die "cannot mount binfmt_misc on $BINFMT (in a container: it needs --privileged; else load the module: modprobe binfmt_misc)"
fi
[ "$(cat "$BINFMT/status")" = enabled ] || echo 1 >"$BINFMT/status"
if [ ! -e "$BINFMT/$HANDLER" ]; then
    log "registering $HANDLER with update-binfmts"
    if ! update-binfmts --enable "$HANDLER" >"$CACHE/binfmt.log" 2>&1 || [ ! -e "$BINFMT/$HANDLER" ]; then
        log "update-binfmts could not register $HANDLER ($(tr '\n' ' ' <"$CACHE/binfmt.log")); writing /usr/lib/binfmt.d/$HANDLER.conf to $BINFMT/register"
        [ -s "/usr/lib/binfmt.d/$HANDLER.conf" ] || die "/usr/lib/binfmt.d/$HANDLER.conf is missing; is qemu-user-static installed?"
        grep -v '^#' "/usr/lib/binfmt.d/$HANDLER.conf" >"$BINFMT/register" ||
            die "the kernel refused the $HANDLER line; see dmesg"
    fi
    rm -f "$CACHE/binfmt.log"
fi
# A handler left disabled (a test that disables it for a moment and was
# killed) is enabled again.
head -1 "$BINFMT/$HANDLER" | grep -qx enabled || { log "enabling $HANDLER"; echo 1 >"$BINFMT/$HANDLER"; }
flags=$(sed -n 's/^flags: //p' "$BINFMT/$HANDLER")
case "$flags" in
    *F*) ;;
    *) die "$BINFMT/$HANDLER has flags '$flags', without F: the kernel would look for the interpreter inside each container.
  Remove it (echo -1 > $BINFMT/$HANDLER) and run this again; qemu-user-static's entries carry F." ;;
esac
interp=$(sed -n 's/^interpreter //p' "$BINFMT/$HANDLER")
[ -x "$interp" ] || die "$HANDLER's interpreter $interp is missing; reinstall qemu-user-static"
log "$HANDLER: enabled, flags $flags, interpreter $interp"

# Set an image's recorded architecture: a foreign image made by import,
# build or commit may say the host's. Through docker save/load: the config's
# "architecture" and "variant", renamed to its new digest.
set_arch() { # IMAGE ARCH VARIANT
    local img=$1 arch=$2 variant=$3 have tmp
    have=$(docker image inspect -f '{{.Architecture}}/{{.Variant}}' "$img")
    [ "$have" = "$arch/$variant" ] && return 0
    log "$img says $have; rewriting its config to $arch${variant:+/$variant}"
    tmp=$(mktemp -d "$CACHE/save.XXXXXX")
    docker save -o "$tmp/in.tar" "$img"
    python3 - "$tmp/in.tar" "$tmp/out.tar" "$arch" "$variant" <<'EOF'
import hashlib, io, json, sys, tarfile
src, dst, arch, variant = sys.argv[1:]
with tarfile.open(src) as t:
    members = {m.name: (m, t.extractfile(m).read() if m.isfile() else None) for m in t.getmembers()}
manifest = json.loads(members['manifest.json'][1])
renames = {}
for entry in manifest:
    old = entry['Config']
    cfg = json.loads(members[old][1])
    cfg['architecture'] = arch
    if variant:
        cfg['variant'] = variant
    else:
        cfg.pop('variant', None)
    data = json.dumps(cfg, separators=(',', ':')).encode()
    new = hashlib.sha256(data).hexdigest() + '.json'
    renames[old] = (new, data)
    entry['Config'] = new
with tarfile.open(dst, 'w') as out:
    for name, (m, data) in members.items():
        if name in renames:
            name, data = renames[name]
            m.name = name
        elif name == 'manifest.json':
            data = json.dumps(manifest).encode()
        if data is not None:
            m.size = len(data)
            out.addfile(m, io.BytesIO(data))
        else:
            out.addfile(m)
EOF
    docker load -i "$tmp/out.tar" >/dev/null
    rm -rf "$tmp"
    have=$(docker image inspect -f '{{.Architecture}}/{{.Variant}}' "$img")
    [ "$have" = "$arch/$variant" ] || die "$img still says $have after docker load"
}

if ! docker image inspect "$ARM64_BASE_IMAGE" >/dev/null 2>&1; then
    tarball="$CACHE/bookworm-arm64-minbase.tar"
    if [ ! -s "$tarball" ]; then
        # One pass: with the F handler, debootstrap's second stage runs its
        # arm64 binaries in the chroot through qemu.
        log "debootstrapping bookworm arm64 (second stage through qemu; cached in $tarball)"
        root=$(mktemp -d "$CACHE/root-arm64.XXXXXX")
        debootstrap --arch=arm64 --variant=minbase bookworm "$root" "$MIRROR" >"$CACHE/debootstrap-arm64.log" 2>&1 || {
            tail -20 "$CACHE/debootstrap-arm64.log" >&2; rm -rf "$root"
            die "debootstrap --arch=arm64 failed (log: $CACHE/debootstrap-arm64.log)"; }
        chroot "$root" dpkg --print-architecture | grep -qx arm64 ||
            die "the arm64 chroot does not run: $(chroot "$root" /bin/true 2>&1)"
        tar -C "$root" -cf "$tarball.tmp" .
        mv "$tarball.tmp" "$tarball"
        rm -rf "$root"
    fi
    log "importing $ARM64_BASE_IMAGE"
    # --platform sets the recorded architecture where the daemon honours it;
    # docker.io 20.10 accepts it and records the host's anyway: set_arch.
    docker import --platform linux/arm64 "$tarball" "$ARM64_BASE_IMAGE" >/dev/null 2>&1 ||
        docker import "$tarball" "$ARM64_BASE_IMAGE" >/dev/null
    set_arch "$ARM64_BASE_IMAGE" arm64 ""
fi

if ! docker image inspect "$ARM64_IMAGE" >/dev/null 2>&1; then
    log "building $ARM64_IMAGE with autopkgtest-build-docker (through qemu: minutes)"
    autopkgtest-build-docker --docker --arch arm64 --image "$ARM64_BASE_IMAGE" --release bookworm --vendor debian \
        --mirror "$MIRROR" --tag "$ARM64_IMAGE" >"$CACHE/build-docker-arm64.log" 2>&1 || {
        tail -30 "$CACHE/build-docker-arm64.log" >&2
        die "autopkgtest-build-docker --arch arm64 failed (log: $CACHE/build-docker-arm64.log)"; }
    set_arch "$ARM64_IMAGE" arm64 ""
fi

# What the tests rely on: the image runs as arm64 through the handler.
got=$(docker run --rm --platform linux/arm64 "$ARM64_IMAGE" sh -c 'echo $(uname -m) $(dpkg --print-architecture)' 2>&1) ||
    die "$ARM64_IMAGE does not run: $got"
[ "$got" = "aarch64 arm64" ] || die "$ARM64_IMAGE runs as '$got', not 'aarch64 arm64'"

log "ready: $HANDLER handler (flags $flags), $ARM64_BASE_IMAGE and $ARM64_IMAGE ($(( $(date +%s) - t0 )) s)"
