#!/bin/bash
# The whole test suite, from a fresh Debian machine: provisions what it
# needs (packages, a running dockerd, the test images), then runs
#   0. clippy, rustfmt and the import-circle check,
#   1. unit and integration tests (cargo test; the real daemon, no mocks),
#   2. the Debian package build, lintian, install, and the man page check;
#      the source package (vendored crates) built offline on trixie with
#      Debian's Rust (--network none), lintian on source and binaries,
#   3. a real autopkgtest run of the project's test package through rdocker,
#      the parallel runner (rdocker-autopkgtest, ci/parallel-e2e.py),
#      and of rdocker's own package tests (debian/tests) through rdocker,
#   4. the CI container-job end-to-end scenarios (the GitHub Action too,
#      its apt cache kept between two jobs on networks of their own, and
#      the GitLab template under gitlab-ci-local, socket and dind),
#      and the autopkgtest that users run today: trixie's (5.49) and sid's
#      (6.x, a revert before every test) in container jobs, and the
#      parallel runner under sid's 6.x,
#   5. autopkgtest's own upstream suite (DockerRunner's tests) with rdocker,
#      then LxdRunner's (system container, logind, reboot) with rdocker
#      --init on Docker and on Podman,
#   6. load: 8 autopkgtest runs at once, and open/exec/revert cycles with
#      memory and descriptors checked flat (100 cycles; 1000 with --slow),
#   7. the daemon restarting under an open testbed (restarts dockerd, so last).
# Idempotent; what provisioning builds is cached under /var/cache/rdocker-test.
#
# Usage: sudo ci/test.sh [--reference] [--slow]
#   --reference  also run the upstream suite with autopkgtest-virt-docker,
#                for comparison (about 20 minutes more)
#   --slow       the slow tier: 1000 open/exec/revert cycles instead of 100,
#                the property tests with 2000 cases each instead of 32 to 256,
#                and the timing of a five-test package under sid's
#                autopkgtest, rdocker against autopkgtest-virt-docker
#                (ci/e2e-releases.sh bench, about 15 minutes), and whole
#                runs of hello from the mirror's source, cold and warm,
#                under 5.28 and 6.0 (bench/whole_runs.py, about 35 minutes),
#                and rdocker-autopkgtest -j 2, -j 4 and -j 2 --split queue
#                against serial runs of rdocker-eight, imagemagick and dbus
#                under autopkgtest 6.0 (bench/parallel.py, about 20 minutes)
set -euo pipefail
cd "$(dirname "$0")/.."

REFERENCE=""
SLOW=""
CYCLES=100
for a in "$@"; do
    case "$a" in
        --reference) REFERENCE=1 ;;
        --slow) CYCLES=1000; SLOW=1 ;;
        *) echo "usage: $0 [--reference] [--slow]" >&2; exit 2 ;;
    esac
done

export PATH="$HOME/.cargo/bin:$PATH"
IMAGE=${RDOCKER_TEST_IMAGE:-rdocker-test/autopkgtest:bookworm}
USER_IMAGE=${RDOCKER_TEST_USER_IMAGE:-rdocker-test/user:bookworm}
LOGIND_IMAGE=${RDOCKER_TEST_LOGIND_IMAGE:-rdocker-test/systemd-logind:bookworm}
CACHE=${RDOCKER_TEST_CACHE:-/var/cache/rdocker-test}
LOGS=${RDOCKER_TEST_LOGS:-target/test-logs}
mkdir -p "$LOGS"

step_start=0
step() { step_start=$(date +%s); echo; echo "=== test: $*"; }
done_step() { echo "=== test: $* ($(( $(date +%s) - step_start )) s)"; }

command -v cargo >/dev/null || {
    echo "test: cargo not found. Install the Rust toolchain with rustup:" >&2
    echo "  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal" >&2
    exit 1
}

step "provision"
ci/provision.sh
done_step "provisioned"

step "lint: clippy, rustfmt, no import circle in src/"
cargo clippy --locked --all-targets -- -D warnings
cargo fmt --check
python3 ci/check-imports.py
actionlint -no-color -oneline   # .github/workflows (ci/install-actionlint.sh)
/usr/bin/python3 -m unittest discover -s ci/tests   # JUnit, step summary; the parallel runner's merging
done_step "lint clean"

step "cargo test (unit and integration, against the real daemon)"
cargo test --locked
done_step "cargo test passed"

if [ -n "$SLOW" ]; then
    # The property tests of hostile input (frames, protocol lines, HTTP
    # heads, tar) with a budget many times CI's (about 10 minutes).
    step "property tests, long budget"
    PROPTEST_CASES=2000 cargo test --locked --bins
    done_step "long property tests passed"
fi

step "Debian package: build, lintian, install; man page"
ci/build-deb.sh --install
ci/check-manpage.sh /usr/bin/autopkgtest-virt-rdocker man/autopkgtest-virt-rdocker.1
man -w rdocker-autopkgtest >/dev/null   # installed with the runner (its page is checked in ci/tests)
done_step "package and man page ok"

step "release build: the .deb in a bookworm container, SHA256SUMS (what .github/workflows/release.yml runs)"
ci/release-build.sh --arch amd64
done_step "release build ok"

step "source package with vendored crates, built offline on trixie with Debian's cargo and rustc; lintian"
ci/offline-build.sh --out target/offline
done_step "offline build on trixie ok"

step "autopkgtest of tests/pkg/rdocker-hello through the installed rdocker"
out=$(mktemp -d)
if ! autopkgtest tests/pkg/rdocker-hello/ -o "$out/out" -- rdocker "$USER_IMAGE" >"$LOGS/e2e-local.log" 2>&1; then
    tail -40 "$LOGS/e2e-local.log"; echo "test: the local autopkgtest run failed (log: $LOGS/e2e-local.log)" >&2; exit 1
fi
ls "$out"/out/binaries/rdocker-hello*.deb >/dev/null
grep -qx 'hello, artifacts' "$out/out/artifacts/greeting"
rm -rf "$out"
done_step "local autopkgtest run passed"

step "rdocker-autopkgtest: parallel shards merged as autopkgtest's (status, retry, one build, two daemons)"
python3 ci/parallel-e2e.py /usr/bin/rdocker-autopkgtest
done_step "parallel runner ok"

step "rdocker's own autopkgtest (debian/tests/smoke) through rdocker, the daemon's socket mounted in the testbed"
out=$(mktemp -d)
debs=(target/deb/rdocker_*_amd64.deb)
dscs=(target/offline/source/rdocker_*.dsc)
# -B: test the .deb built above, do not build the source again in the testbed.
if ! autopkgtest -B "${debs[0]}" "${dscs[0]}" --env=RDOCKER_SMOKE_IMAGE="${RDOCKER_TEST_BASE_IMAGE:-rdocker-test/debian:bookworm}" \
        -o "$out/out" -- rdocker "$IMAGE" -v /var/run/docker.sock:/var/run/docker.sock >"$LOGS/self-test.log" 2>&1; then
    tail -40 "$LOGS/self-test.log"; echo "test: rdocker's own autopkgtest failed or was skipped (log: $LOGS/self-test.log)" >&2; exit 1
fi
grep -Eq '^smoke +PASS' "$out/out/summary" || { cat "$out/out/summary"; echo "test: debian/tests/smoke did not pass" >&2; exit 1; }
rm -rf "$out"
done_step "rdocker's own autopkgtest passed"

if [ -x ci/e2e-container-job.sh ]; then
    step "CI container jobs (socket mount, TCP, the Action, its apt cache between jobs)"
    ci/e2e-container-job.sh
    # The Action with no cargo: rdocker from a release download, checksum checked.
    ci/e2e-action-release.sh
    # The GitLab template under gitlab-ci-local: the runner's socket, and dind.
    ci/e2e-gitlab.sh
    done_step "container-job scenarios passed"
fi

step "the autopkgtest users run today: trixie's and sid's, in container jobs"
ci/e2e-releases.sh trixie sid
# The parallel runner under sid's autopkgtest 6.0 (its files from the job
# image, on the host): its test list, build and merging against 6.x's
# modules, which read dependencies and summaries differently from 5.x's.
at6=$(bench/autopkgtest-from-image.sh rdocker-test/ci-job:sid target/autopkgtest-sid)
(
    export RDOCKER_AUTOPKGTEST="$at6" RDOCKER_AUTOPKGTEST_LIB="$(dirname "$(dirname "$at6")")/lib"
    /usr/bin/python3 -m unittest discover -s ci/tests
    python3 ci/parallel-e2e.py /usr/bin/rdocker-autopkgtest results dbus build build_needed
)
done_step "trixie and sid jobs passed, and the parallel runner under 6.0"

if [ -n "$SLOW" ]; then
    step "timing: a five-test package under sid's autopkgtest, rdocker and autopkgtest-virt-docker"
    ci/e2e-releases.sh bench
    done_step "timing done"
    # Prints measurements; fails only when a run fails or the two servers'
    # verdicts differ (never on a time). The .deb installed above is this
    # tree's build; the job images are the ones the bench scenario built.
    step "timing: whole runs of hello (apt-get source) under autopkgtest 5.28 and 6.0, cold and warm, rdocker and autopkgtest-virt-docker"
    python3 bench/whole_runs.py --rdocker /usr/bin/autopkgtest-virt-rdocker --packages hello \
        --logs "$LOGS/whole-runs" | tee "$LOGS/whole-runs.md"
    done_step "whole runs done"
    # Prints measurements; fails only when a run ends without results or a
    # parallel run's results, exit status or build count differ from the
    # serial run's (never on a time).
    # Under sid's autopkgtest 6.0 (a fresh testbed per test, serially
    # too), laid out above from the job image; balanced by the durations
    # of the serial run before; -j 2 as lists and as a queue.
    step "timing: rdocker-autopkgtest -j 2, -j 4 and -j 2 --split queue against serial autopkgtest 6.0 (rdocker-eight, imagemagick, dbus)"
    python3 bench/parallel.py --rdocker /usr/bin/autopkgtest-virt-rdocker --runner /usr/bin/rdocker-autopkgtest \
        --autopkgtest "$at6" --durations --jobs 2,4,2q \
        --logs "$LOGS/parallel" | tee "$LOGS/parallel.md"
    done_step "parallel runs done"
fi

step "upstream autopkgtest suite with rdocker"
CONFORMANCE_EXPECTED_FAILURES=ci/conformance-expected-failures.txt \
    python3 ci/conformance.py "$CACHE/autopkgtest-src" "$IMAGE" rdocker \
    >"$LOGS/conformance-rdocker.log" 2>"$LOGS/conformance-rdocker.err" || {
        grep -E '^(FAIL|ERROR):' "$LOGS/conformance-rdocker.log" || true
        tail -5 "$LOGS/conformance-rdocker.log"
        echo "test: upstream suite failed with rdocker (logs: $LOGS/conformance-rdocker.*)" >&2
        exit 1; }
grep '^conformance:' "$LOGS/conformance-rdocker.log"
done_step "upstream suite ok with rdocker"

# LxdRunner's classes (DebTestsCanReboot: system container, logind,
# reboot) against a booted testbed, on an image with dbus and
# libpam-systemd (ci/provision.sh). Known failures, each for a reason
# outside rdocker: ci/conformance-system-expected-failures.txt.
system_suite() {  # NAME [--podman] [--run-options=...]
    local name=$1; shift
    CONFORMANCE_EXPECTED_FAILURES=ci/conformance-system-expected-failures.txt \
        python3 ci/conformance.py --system "$@" "$CACHE/autopkgtest-src" "$LOGIND_IMAGE" rdocker \
        >"$LOGS/conformance-$name.log" 2>"$LOGS/conformance-$name.err" || {
            grep -E '^(FAIL|ERROR):' "$LOGS/conformance-$name.log" || true
            tail -5 "$LOGS/conformance-$name.log"
            echo "test: upstream system tests failed with rdocker (logs: $LOGS/conformance-$name.*)" >&2
            exit 1; }
    grep '^conformance:' "$LOGS/conformance-$name.log"
}
if [ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ]; then
    systemd_opts="--tmpfs /run --tmpfs /run/lock --cgroupns host -v /sys/fs/cgroup:/sys/fs/cgroup"
else
    systemd_opts="--tmpfs /run --tmpfs /run/lock -v /sys/fs/cgroup:/sys/fs/cgroup:ro"
fi
step "upstream system-container and reboot tests with rdocker --init (Docker)"
system_suite system-docker "--run-options=$systemd_opts"
done_step "upstream system tests ok with rdocker --init on Docker"
step "upstream system-container and reboot tests with rdocker --podman --init"
system_suite system-podman --podman
done_step "upstream system tests ok with rdocker --init on Podman"

if [ -n "$REFERENCE" ]; then
    step "upstream autopkgtest suite with autopkgtest-virt-docker (reference)"
    python3 ci/conformance.py "$CACHE/autopkgtest-src" "$IMAGE" docker \
        >"$LOGS/conformance-docker.log" 2>"$LOGS/conformance-docker.err" || true
    grep '^conformance:' "$LOGS/conformance-docker.log"
    done_step "reference suite done"
fi

step "load: 8 parallel autopkgtest runs; $CYCLES open/exec/revert cycles"
python3 ci/load.py parallel 8
python3 ci/load.py cycles "$CYCLES"
done_step "load ok"

step "the daemon restarts under an open testbed"
cargo test --locked --test integration -- --ignored --test-threads=1
done_step "daemon restart ok"

leftover=$(docker ps -aq --filter label=org.debian.autopkgtest.rdocker=1 --filter "label=org.debian.autopkgtest.rdocker.owner-host=$(hostname)")
if [ -n "$leftover" ]; then
    echo "test: rdocker containers were left behind: $leftover" >&2
    exit 1
fi
echo
echo "test: all passed"
