#!/bin/bash
# Make sure everything the test suite needs exists: packages, a running
# Docker daemon, and the locally built test images.  Idempotent; the
# debootstrap tree and the images are cached, so a second run is quick.
set -euo pipefail

BASE_IMAGE=${RDOCKER_TEST_BASE_IMAGE:-rdocker-test/debian:bookworm}
TEST_IMAGE=${RDOCKER_TEST_IMAGE:-rdocker-test/autopkgtest:bookworm}
USER_IMAGE=${RDOCKER_TEST_USER_IMAGE:-rdocker-test/user:bookworm}
SYSTEMD_IMAGE=${RDOCKER_TEST_SYSTEMD_IMAGE:-rdocker-test/systemd:bookworm}
TRIXIE_IMAGE=${RDOCKER_TEST_TRIXIE_IMAGE:-rdocker-test/debian:trixie}
LOGIND_IMAGE=${RDOCKER_TEST_LOGIND_IMAGE:-rdocker-test/systemd-logind:bookworm}
SID_IMAGE=${RDOCKER_TEST_SID_IMAGE:-rdocker-test/debian:sid}
CACHE=${RDOCKER_TEST_CACHE:-/var/cache/rdocker-test}
MIRROR=${RDOCKER_TEST_MIRROR:-http://deb.debian.org/debian}
# A registry that wants a login, for --pull with credentials
# (tests/integration/pull.rs has the same defaults).
REGISTRY=${RDOCKER_TEST_REGISTRY:-127.0.0.1:5123}
REGISTRY_USER=tester
REGISTRY_PASSWORD=s3cret
PRIVATE_IMAGE=$REGISTRY/rdocker-test/private:bookworm

log() { echo "provision: $*" >&2; }

if [ "$(id -u)" != 0 ]; then
    log "must run as root (it installs packages and starts dockerd)"
    exit 1
fi

need_pkgs=()
for p in docker.io autopkgtest debootstrap dpkg-dev debhelper lintian man-db curl socat devscripts fakeroot build-essential \
         openssl openssh-server openssh-client podman autodep8 git docker-registry apache2-utils apt-cacher-ng rsync; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || need_pkgs+=("$p")
done
# apt-get source autopkgtest needs deb-src entries
if [ -f /etc/apt/sources.list.d/debian.sources ] && ! grep -q '^Types: deb deb-src' /etc/apt/sources.list.d/debian.sources; then
    sed -i 's/^Types: deb$/Types: deb deb-src/' /etc/apt/sources.list.d/debian.sources
    need_update=1
fi
if [ ${#need_pkgs[@]} -gt 0 ] || [ -n "${need_update:-}" ]; then
    log "installing ${need_pkgs[*]:-(source lists only)}"
    apt-get update -q >/dev/null
    [ ${#need_pkgs[@]} -gt 0 ] && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi

# A daemon: reuse a running one, else start dockerd in the background.
if ! docker info >/dev/null 2>&1; then
    log "starting dockerd"
    mkdir -p /var/log
    nohup dockerd >/var/log/rdocker-test-dockerd.log 2>&1 &
    for _ in $(seq 1 60); do
        docker info >/dev/null 2>&1 && break
        sleep 0.5
    done
    if ! docker info >/dev/null 2>&1; then
        log "dockerd did not come up; see /var/log/rdocker-test-dockerd.log"
        tail -20 /var/log/rdocker-test-dockerd.log >&2 || true
        exit 1
    fi
fi

# debian_image SUITE TAG: a minbase SUITE from the mirror, imported as TAG
# (unless TAG exists).  The debootstrap tree is cached as
# $CACHE/SUITE-minbase.tar.  Its apt ignores Valid-Until (a snapshot or a
# slow mirror of sid/testing must not stop apt-get update; harmless for a
# stable suite).
debian_image() {
    local suite=$1 tag=$2 tarball root
    docker image inspect "$tag" >/dev/null 2>&1 && return 0
    mkdir -p "$CACHE"
    tarball="$CACHE/$suite-minbase.tar"
    if [ ! -s "$tarball" ]; then
        log "debootstrapping $suite from $MIRROR (cached in $tarball)"
        root=$(mktemp -d "$CACHE/root.XXXXXX")
        debootstrap --variant=minbase "$suite" "$root" "$MIRROR" >"$CACHE/debootstrap-$suite.log" 2>&1 || {
            tail -20 "$CACHE/debootstrap-$suite.log" >&2; rm -rf "$root"
            log "debootstrap of $suite failed (log: $CACHE/debootstrap-$suite.log); can this machine reach $MIRROR?"
            exit 1; }
        echo 'Acquire::Check-Valid-Until "false";' >"$root/etc/apt/apt.conf.d/80rdocker-test-valid-until"
        tar -C "$root" -cf "$tarball.tmp" .
        mv "$tarball.tmp" "$tarball"
        rm -rf "$root"
    fi
    log "importing $tag"
    docker import "$tarball" "$tag" >/dev/null
}
debian_image bookworm "$BASE_IMAGE"
# trixie, for the offline package build with Debian's own Rust (ci/offline-build.sh).
debian_image trixie "$TRIXIE_IMAGE"
# sid, for the job image with unstable's autopkgtest (6.x) in
# ci/e2e-releases.sh.
debian_image sid "$SID_IMAGE"

if ! docker image inspect "$TEST_IMAGE" >/dev/null 2>&1; then
    log "building $TEST_IMAGE with autopkgtest-build-docker"
    autopkgtest-build-docker --docker --image "$BASE_IMAGE" --release bookworm --vendor debian \
        --mirror "$MIRROR" --tag "$TEST_IMAGE" >"$CACHE/build-docker.log" 2>&1 || {
        tail -30 "$CACHE/build-docker.log" >&2; exit 1; }
fi

# The same image with a normal user, for suggested-normal-user and su tests.
if ! docker image inspect "$USER_IMAGE" >/dev/null 2>&1; then
    log "building $USER_IMAGE"
    cid=$(docker run -d "$TEST_IMAGE" sh -c 'useradd -m -u 1000 -s /bin/bash tester')
    docker wait "$cid" >/dev/null
    docker commit --change 'CMD ["/bin/bash"]' "$cid" "$USER_IMAGE" >/dev/null
    docker rm "$cid" >/dev/null
fi

# The same image with systemd as /sbin/init, for --init. Plain on purpose:
# no dbus, no libpam-systemd (no recommends), as a minimal systemd image
# is; tests/integration/reboot_plain.rs checks what rdocker says of it.
if ! docker image inspect "$SYSTEMD_IMAGE" >/dev/null 2>&1; then
    log "building $SYSTEMD_IMAGE"
    cid=$(docker run -d "$TEST_IMAGE" sh -c 'apt-get update -q && DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends systemd systemd-sysv && apt-get clean')
    rc=$(docker wait "$cid")
    if [ "$rc" != 0 ]; then
        docker logs "$cid" 2>&1 | tail -20 >&2
        docker rm "$cid" >/dev/null
        log "installing systemd in $SYSTEMD_IMAGE failed (exit $rc); can the container reach $MIRROR?"
        exit 1
    fi
    docker commit --change 'CMD ["/bin/bash"]' "$cid" "$SYSTEMD_IMAGE" >/dev/null
    docker rm "$cid" >/dev/null
fi

# And with D-Bus and pam_systemd, as a system image for autopkgtest has
# them (README.md, --init): logind sessions for tests (upstream's
# test_logind), and a `reboot` that does not complain of a missing bus
# on a test's stderr (upstream's test_reboot_prepare).
if ! docker image inspect "$LOGIND_IMAGE" >/dev/null 2>&1; then
    log "building $LOGIND_IMAGE"
    cid=$(docker run -d "$SYSTEMD_IMAGE" sh -c 'apt-get update -q && DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends libpam-systemd dbus && apt-get clean')
    rc=$(docker wait "$cid")
    if [ "$rc" != 0 ]; then
        docker logs "$cid" 2>&1 | tail -20 >&2
        docker rm "$cid" >/dev/null
        log "installing libpam-systemd and dbus in $LOGIND_IMAGE failed (exit $rc); can the container reach $MIRROR?"
        exit 1
    fi
    docker commit --change 'CMD ["/bin/bash"]' "$cid" "$LOGIND_IMAGE" >/dev/null
    docker rm "$cid" >/dev/null
fi

# The private registry: Debian's docker-registry with htpasswd auth, on
# loopback (which dockerd lets speak plain HTTP), holding the base image.
registry_says() { curl -s -o /dev/null -w '%{http_code}' "$@"; }
if [ "$(registry_says "http://$REGISTRY/v2/")" != 401 ]; then
    log "starting a registry on $REGISTRY"
    mkdir -p "$CACHE/registry"
    htpasswd -Bbn "$REGISTRY_USER" "$REGISTRY_PASSWORD" >"$CACHE/registry.htpasswd"
    printf '%s\n' 'version: 0.1' 'log:' '  level: warn' 'storage:' '  filesystem:' \
        "    rootdirectory: $CACHE/registry" 'http:' "  addr: $REGISTRY" 'auth:' '  htpasswd:' \
        '    realm: rdocker-test' "    path: $CACHE/registry.htpasswd" >"$CACHE/registry.yml"
    nohup docker-registry serve "$CACHE/registry.yml" >/var/log/rdocker-test-registry.log 2>&1 &
    for _ in $(seq 1 40); do
        [ "$(registry_says "http://$REGISTRY/v2/")" = 401 ] && break
        sleep 0.25
    done
    [ "$(registry_says "http://$REGISTRY/v2/")" = 401 ] || {
        log "the registry did not come up; see /var/log/rdocker-test-registry.log"
        tail -20 /var/log/rdocker-test-registry.log >&2 || true
        exit 1; }
fi
if [ "$(registry_says -u "$REGISTRY_USER:$REGISTRY_PASSWORD" \
        -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
        "http://$REGISTRY/v2/rdocker-test/private/manifests/bookworm")" != 200 ]; then
    log "pushing $PRIVATE_IMAGE"
    login=$(mktemp -d)
    DOCKER_CONFIG=$login docker login -u "$REGISTRY_USER" --password-stdin "$REGISTRY" \
        <<<"$REGISTRY_PASSWORD" >"$CACHE/registry-push.log" 2>&1 &&
    docker tag "$BASE_IMAGE" "$PRIVATE_IMAGE" &&
    DOCKER_CONFIG=$login docker push "$PRIVATE_IMAGE" >>"$CACHE/registry-push.log" 2>&1 || {
        tail -20 "$CACHE/registry-push.log" >&2
        log "pushing $PRIVATE_IMAGE failed"
        exit 1; }
    docker rmi "$PRIVATE_IMAGE" >/dev/null
    rm -rf "$login"
fi

# autopkgtest's upstream suite is our conformance reference.
if [ ! -d "$CACHE/autopkgtest-src" ]; then
    log "fetching autopkgtest source"
    tmp=$(mktemp -d)
    (cd "$tmp" && apt-get source -q --download-only autopkgtest >/dev/null 2>&1 && dpkg-source -x autopkgtest_*.dsc src >/dev/null)
    mv "$tmp/src" "$CACHE/autopkgtest-src"
    rm -rf "$tmp"
fi
# Podman's Docker-compatible API, a second backend (tests/integration/daemons.rs).
# Its default open-files limit is above this machine's hard limit, so none.
mkdir -p /etc/containers
if ! grep -qs '^default_ulimits' /etc/containers/containers.conf; then
    printf '[containers]\ndefault_ulimits = []\n' >>/etc/containers/containers.conf
fi
PODMAN_SOCKET=/run/podman/podman.sock
if ! curl -fsS --unix-socket "$PODMAN_SOCKET" http://d/_ping >/dev/null 2>&1; then
    log "starting podman system service on $PODMAN_SOCKET"
    mkdir -p /run/podman
    rm -f "$PODMAN_SOCKET"
    nohup podman system service --time=0 "unix://$PODMAN_SOCKET" >/var/log/rdocker-test-podman.log 2>&1 &
    for _ in $(seq 1 60); do
        curl -fsS --unix-socket "$PODMAN_SOCKET" http://d/_ping >/dev/null 2>&1 && break
        sleep 0.5
    done
    curl -fsS --unix-socket "$PODMAN_SOCKET" http://d/_ping >/dev/null || {
        log "podman system service did not come up; see /var/log/rdocker-test-podman.log"
        tail -20 /var/log/rdocker-test-podman.log >&2 || true
        exit 1; }
fi
for img in "$TEST_IMAGE" "$SYSTEMD_IMAGE" "$LOGIND_IMAGE"; do
    if ! podman image exists "$img"; then
        log "loading $img into podman"
        docker save "$img" | podman load >/dev/null
    fi
done
# An apt-cacher-ng, for rdocker's apt proxy discovery (tests/integration/apt.rs):
# on port 3142 of every interface (acng.conf's default, no BindAddress), as
# the testbeds reach it at their bridge's gateway, not on loopback. Its
# Debian backend is the mirror this machine reaches (the default list of
# mirrors names hosts that may not resolve here).
ACNG_BACKEND=/etc/apt-cacher-ng/backends_debian
if [ "$(grep -v '^#' "$ACNG_BACKEND" 2>/dev/null | head -1)" != "${MIRROR%/}/" ]; then
    echo "${MIRROR%/}/" >"$ACNG_BACKEND"
    acng_restart=1
fi
if grep -qs '^BindAddress' /etc/apt-cacher-ng/acng.conf; then
    sed -i 's/^BindAddress/# BindAddress/' /etc/apt-cacher-ng/acng.conf
    acng_restart=1
fi
acng_says() { curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:3142/acng-report.html"; }
if [ -n "${acng_restart:-}" ] || [ "$(acng_says)" != 200 ]; then
    log "starting apt-cacher-ng on port 3142"
    /etc/init.d/apt-cacher-ng stop >/dev/null 2>&1 || true
    /etc/init.d/apt-cacher-ng start >/dev/null
    for _ in $(seq 1 40); do
        [ "$(acng_says)" = 200 ] && break
        sleep 0.25
    done
    [ "$(acng_says)" = 200 ] || { log "apt-cacher-ng did not come up; see /var/log/apt-cacher-ng/"; exit 1; }
fi
# gitlab-ci-local runs the GitLab template's pipelines (ci/e2e-gitlab.sh);
# 4.55 is the newest that runs on Node 20.  It also needs rsync (above).
GCL_VERSION=4.55
if ! gitlab-ci-local --version 2>/dev/null | grep -q "^$GCL_VERSION\."; then
    command -v npm >/dev/null || { log "installing npm"; DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends npm >/dev/null; }
    log "installing gitlab-ci-local@$GCL_VERSION with npm"
    npm install -g --no-audit --no-fund "gitlab-ci-local@$GCL_VERSION" >"$CACHE/npm-gitlab-ci-local.log" 2>&1 || {
        tail -20 "$CACHE/npm-gitlab-ci-local.log" >&2; log "npm install gitlab-ci-local@$GCL_VERSION failed"; exit 1; }
fi

# sshd's privilege separation directory, for the throwaway sshd of the tests.
mkdir -p /run/sshd
"$(dirname "$0")/provision-foreign.sh"  # arm64 testbeds through qemu-user-static (issue 20)
"$(dirname "$0")/install-actionlint.sh"  # lints .github/workflows (issue 27)

log "ready: daemon up, images $BASE_IMAGE, $TRIXIE_IMAGE, $SID_IMAGE, $TEST_IMAGE, $USER_IMAGE, $SYSTEMD_IMAGE and $LOGIND_IMAGE, $PRIVATE_IMAGE behind a login, autopkgtest source in $CACHE/autopkgtest-src; podman API on $PODMAN_SOCKET; apt-cacher-ng on port 3142; gitlab-ci-local $GCL_VERSION"
