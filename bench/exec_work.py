#!/usr/bin/python3
"""Does a command run slower in an rdocker testbed than through `docker
exec`? A CPU-bound shell loop and a command with a lot of output
(`seq 1 3000000`), through rdocker's execute command (print-execute-command,
as autopkgtest runs a build) and through `docker exec` into a plain
container of the same image, alternating; and the rdocker server's own
CPU time meanwhile. Prints each round's seconds.

    python3 bench/exec_work.py [--rdocker PATH] [--image IMAGE] [--rounds N]

Needs the daemon and the image (ci/provision.sh). Written for
docs/performance.md's whole runs, where a build took longer with rdocker
under 5.28 in one run.
"""

import argparse
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from apt_times import Server  # noqa: E402

WORK = "i=0; while [ $i -lt 3000000 ]; do i=$((i+1)); done"
NOISY = "seq 1 3000000"


def timed(argv):
    t = time.monotonic()
    r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if r.returncode != 0:
        sys.exit(f"exec_work: {argv[-1]!r} failed: {r.stderr[-300:]!r}")
    return time.monotonic() - t


def cpu(pid):
    with open(f"/proc/{pid}/stat") as f:
        x = f.read().rsplit(")", 1)[1].split()
    return (int(x[11]) + int(x[12])) / os.sysconf("SC_CLK_TCK")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rdocker", default="target/release/autopkgtest-virt-rdocker")
    ap.add_argument("--image", default="rdocker-test/autopkgtest:bookworm")
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    s = Server(a.rdocker, [a.image])
    s.cmd("open")
    argv = s.argv()
    cid = subprocess.run(["docker", "run", "-d", a.image, "sleep", "3600"], capture_output=True,
                         text=True, check=True).stdout.strip()
    rows = {"rdocker, shell loop": [], "docker exec, shell loop": [],
            "rdocker, seq 1 3000000": [], "docker exec, seq 1 3000000": [],
            "rdocker server's CPU": []}
    try:
        for _ in range(a.rounds):
            c0 = cpu(s.p.pid)
            rows["rdocker, shell loop"].append(timed(argv + ["sh", "-c", WORK]))
            rows["docker exec, shell loop"].append(timed(["docker", "exec", cid, "sh", "-c", WORK]))
            rows["rdocker, seq 1 3000000"].append(timed(argv + ["sh", "-c", NOISY]))
            rows["docker exec, seq 1 3000000"].append(timed(["docker", "exec", cid, "sh", "-c", NOISY]))
            rows["rdocker server's CPU"].append(cpu(s.p.pid) - c0)
    finally:
        subprocess.run(["docker", "rm", "-f", cid], capture_output=True)
        s.cmd("close")
        s.quit()
    for k, v in rows.items():
        print(f"{k}: " + " ".join(f"{x:.2f} s" for x in v))


if __name__ == "__main__":
    main()
