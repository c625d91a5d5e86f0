#!/usr/bin/python3
"""--init: open, revert and close of rdocker against autopkgtest-virt-docker,
both with --init, and autopkgtest's wall time for tests/pkg/rdocker-service
(a test with Restrictions: isolation-container). Servers alternate round by
round; every testbed is checked to run systemd as PID 1 and to have booted.
A third server, rdocker with --network host and a -v bind, is where revert
kills the old testbed (with a service listening on a port) before it
answers; the port is checked free when revert answers.

Usage: python3 bench/init_times.py [--rounds N] [--rdocker PATH] [--image IMAGE]
           [--no-reference] [--no-autopkgtest]
"""

import argparse
import os
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RUN_OPTIONS = ["--tmpfs", "/run", "--tmpfs", "/run/lock",
               "-v", "/sys/fs/cgroup:/sys/fs/cgroup:ro"]


class Server:
    def __init__(self, argv):
        self.p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, text=True, bufsize=1)
        self.expect_ok(self.p.stdout.readline(), "banner")

    def expect_ok(self, reply, what):
        if not reply.startswith("ok"):
            raise SystemExit(f"{what} answered {reply.strip()!r}")
        return reply.split()[1:]

    def cmd(self, line):
        t = time.monotonic()
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()
        reply = self.p.stdout.readline()
        took = time.monotonic() - t
        return self.expect_ok(reply, line), took

    def argv(self):
        words, _ = self.cmd("print-execute-command")
        return [urllib.parse.unquote(a) for a in words[0].split(",")]

    def listen(self, port):
        """A service of the testbed's systemd on this port of its network."""
        script = ("my $s = IO::Socket::INET->new(LocalAddr => '127.0.0.1', "
                  f"LocalPort => {port}, Listen => 5) or die $!; sleep")
        subprocess.run(self.argv() + ["systemd-run", "--unit=bench-listen", "perl",
                                      "-MIO::Socket::INET", "-e", script],
                       check=True, capture_output=True, timeout=60)
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit(f"the testbed's service never listened on {port}")
                time.sleep(0.05)

    def check_booted(self):
        argv = self.argv()
        out = subprocess.run(argv + ["sh", "-c", "cat /proc/1/comm; systemctl is-system-running"],
                             capture_output=True, text=True, timeout=60).stdout.split()
        if out[:1] != ["systemd"] or out[1:2] not in (["running"], ["degraded"]):
            raise SystemExit(f"testbed not booted: {out}")

    def quit(self):
        self.p.stdin.write("quit\n")
        self.p.stdin.flush()
        self.p.wait(60)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def session(argv, reverts, settle, port=None):
    s = Server(argv)
    _, open_t = s.cmd("open")
    s.check_booted()
    rev = []
    for _ in range(reverts):
        if port:
            s.listen(port)
        # As between two tests: the next testbed has time to boot.
        time.sleep(settle)
        _, t = s.cmd("revert")
        rev.append(t)
        if port:
            # The old testbed's service is gone when revert answers.
            with socket.socket() as probe:
                try:
                    probe.bind(("127.0.0.1", port))
                except OSError as e:
                    raise SystemExit(f"port {port} still taken after revert: {e}")
        s.check_booted()
    _, close_t = s.cmd("close")
    s.quit()
    return open_t, rev, close_t


def autopkgtest(server_argv):
    pkg = os.path.join(ROOT, "tests/pkg/rdocker-service") + "/"
    t = time.monotonic()
    r = subprocess.run(["autopkgtest", "-B", pkg, "--"] + server_argv,
                       capture_output=True, text=True)
    took = time.monotonic() - t
    if r.returncode != 0 or "services             PASS" not in r.stdout + r.stderr:
        raise SystemExit(f"autopkgtest through {server_argv[0]} failed ({r.returncode}):\n"
                         + r.stdout[-2000:] + r.stderr[-2000:])
    return took


def ms(x):
    return f"{x * 1000:.1f} ms" if x < 1 else f"{x:.2f} s"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reverts", type=int, default=3)
    ap.add_argument("--settle", type=float, default=2.0,
                    help="seconds between two reverts, as a test's run time")
    ap.add_argument("--rdocker", default=os.path.join(ROOT, "target/release/autopkgtest-virt-rdocker"))
    ap.add_argument("--image", default="rdocker-test/systemd:bookworm")
    ap.add_argument("--no-reference", action="store_true",
                    help="leave out autopkgtest-virt-docker (10 s a revert)")
    ap.add_argument("--no-autopkgtest", action="store_true",
                    help="leave out the autopkgtest runs")
    a = ap.parse_args()
    shared = tempfile.mkdtemp(prefix="rdocker-bench-shared-")
    servers = {
        "rdocker": [a.rdocker, "--init", a.image] + RUN_OPTIONS,
        "docker": ["autopkgtest-virt-docker", "--init", a.image] + RUN_OPTIONS,
        "rdocker-shared": [a.rdocker, "--init", a.image] + RUN_OPTIONS
        + ["--network", "host", "-v", f"{shared}:/shared"],
    }
    if a.no_reference:
        del servers["docker"]
    res = {k: {"open": [], "revert": [], "close": [], "autopkgtest": []} for k in servers}
    for rnd in range(a.rounds):
        for name, argv in servers.items():
            port = free_port() if name == "rdocker-shared" else None
            o, rev, c = session(argv, a.reverts, a.settle, port)
            res[name]["open"].append(o)
            res[name]["revert"].extend(rev)
            res[name]["close"].append(c)
            line = (f"round {rnd + 1} {name}: open {ms(o)}, reverts {[ms(x) for x in rev]}, "
                    f"close {ms(c)}")
            if not a.no_autopkgtest and name != "rdocker-shared":
                res[name]["autopkgtest"].append(autopkgtest(argv))
                line += f", autopkgtest {ms(res[name]['autopkgtest'][-1])}"
            print(line, flush=True)
    os.rmdir(shared)
    ops = ["open", "revert", "close"] + ([] if a.no_autopkgtest else ["autopkgtest"])
    if "docker" in servers:
        print()
        print("| --init | rdocker | autopkgtest-virt-docker | docker ÷ rdocker |")
        print("|---|---:|---:|---:|")
        for op in ops:
            r = statistics.median(res["rdocker"][op])
            d = statistics.median(res["docker"][op])
            print(f"| {op} | {ms(r)} | {ms(d)} | {d / r:.1f} |")
    # Both kill the old testbed before revert answers (--init alone does).
    print()
    print("| --init, medians (max) | rdocker | rdocker --network host -v DIR:/shared |")
    print("|---|---:|---:|")
    for op in ["open", "revert", "close"]:
        cells = [f"{ms(statistics.median(res[k][op]))} ({ms(max(res[k][op]))})"
                 for k in ("rdocker", "rdocker-shared")]
        print(f"| {op} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
