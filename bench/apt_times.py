#!/usr/bin/env python3
"""apt-get install in a fresh testbed, cold and warm: straight from the
mirror, through rdocker's package cache, through the host's apt-cacher-ng,
and through both. Each round is a fresh testbed (revert); `apt-get update`
runs first and is not timed. Prints a markdown table of medians.

    python3 bench/apt_times.py [--rdocker PATH] [--rounds N] [--image IMAGE] [--download-only]
        [--packages "PKG ..."] [--modes 1,2]

Needs the daemon, the test image and, for the apt-cacher-ng rows, an
apt-cacher-ng on port 3142 (ci/provision.sh makes all three).
"""

import argparse
import statistics
import subprocess
import time
import urllib.parse

SETS = {
    "4 small (hello figlet sl cowsay, 337 kB)": "hello figlet sl cowsay",
    "python3 (17 packages, 4.4 MB)": "python3",
}

# (label, rdocker options, which rounds count: "first" or "rest")
MODES = [
    ("mirror, no proxy, no cache (cold every time)", ["--apt-proxy", "none", "--apt-cache", "off"], "rest"),
    ("rdocker's cache, cold (first testbed)", ["--apt-proxy", "none"], "first"),
    ("rdocker's cache, warm (after revert)", ["--apt-proxy", "none"], "rest"),
    ("apt-cacher-ng alone, warm", ["--apt-cache", "off"], "rest"),
    ("apt-cacher-ng + rdocker's cache, warm (after revert)", [], "rest"),
]


class Server:
    def __init__(self, exe, args):
        self.p = subprocess.Popen([exe] + args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.p.stdout.readline().strip() == "ok"

    def cmd(self, line):
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()
        r = self.p.stdout.readline().strip()
        assert r.startswith("ok"), (line, r)
        return r

    def argv(self):
        r = self.cmd("print-execute-command")
        return [urllib.parse.unquote(a) for a in r[3:].split(",")]

    def quit(self):
        self.cmd("quit")
        self.p.wait(60)


def run(argv, script):
    r = subprocess.run(argv + ["sh", "-c", script], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{script!r} failed: {r.stderr[-500:]}")


DOWNLOAD_ONLY = False


def times(exe, image, opts, pkgs, rounds):
    s = Server(exe, opts + [image])
    s.cmd("open")
    out = []
    for i in range(rounds + 1):
        if i:
            s.cmd("revert")
        argv = s.argv()
        run(argv, "apt-get update -q >/dev/null 2>&1")
        t = time.monotonic()
        run(argv, f"DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends {'--download-only ' if DOWNLOAD_ONLY else ''}{pkgs} >/dev/null")
        out.append(time.monotonic() - t)
    s.cmd("close")
    s.quit()
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rdocker", default="target/release/autopkgtest-virt-rdocker")
    ap.add_argument("--image", default="rdocker-test/autopkgtest:bookworm")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--download-only", action="store_true", help="time apt-get install --download-only: the fetch alone, without dpkg")
    ap.add_argument("--packages", help="one set of packages (space-separated) instead of the two default sets")
    ap.add_argument("--modes", help="the rows to run, by number from 1 (default: all)")
    a = ap.parse_args()
    if a.packages:
        SETS.clear()
        SETS[a.packages] = a.packages
    if a.modes:
        keep = [MODES[int(i) - 1] for i in a.modes.split(",")]
        MODES[:] = keep
    global DOWNLOAD_ONLY
    DOWNLOAD_ONLY = a.download_only
    rows = []
    for label, opts, which in MODES:
        cells = []
        for pkgs in SETS.values():
            if which == "first":
                t = [times(a.rdocker, a.image, opts, pkgs, 0)[0] for _ in range(a.rounds)]
            else:
                t = times(a.rdocker, a.image, opts, pkgs, a.rounds)[1:]
            cells.append(f"{statistics.median(t):.2f} s ({min(t):.2f}-{max(t):.2f})")
        rows.append((label, cells))
    print("| apt-get install in a fresh testbed | " + " | ".join(SETS) + " |")
    print("|---" * (len(SETS) + 1) + "|")
    for label, cells in rows:
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
