#!/usr/bin/python3
"""Exec of `true` in a CI job container, for one or more rdocker builds in
one run: the job container (only the Docker socket mounted) opens one
session per build, and the builds' commands alternate, each run as
autopkgtest runs it (print-execute-command's argv, stdin /dev/null).
Prints the median and range per build.

    bench/job_exec_times.py --rounds 30 BUILD [BUILD...]

Python 3 standard library only. Needs the local daemon and the job image
(ci/e2e-container-job.sh builds it). Removes its job container on exit;
the sessions remove their testbeds.
"""

import argparse
import os
import subprocess
import sys

INNER = r'''
import statistics, subprocess, sys, time
from urllib.parse import unquote
rounds, image, builds = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
sessions = []
for b in builds:
    p = subprocess.Popen([b, image], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    p.stdout.readline()
    for line in ("open", "print-execute-command"):
        p.stdin.write(line + "\n"); p.stdin.flush()
        reply = p.stdout.readline().split()
        if not reply or reply[0] != "ok":
            sys.exit("%s: %s got %r" % (b, line, reply))
    sessions.append((b, p, [unquote(c) for c in reply[1].split(",")], []))
for _ in range(rounds):
    for b, p, argv, took in sessions:
        t = time.monotonic()
        subprocess.run(argv + ["true"], stdin=subprocess.DEVNULL, check=True)
        took.append(time.monotonic() - t)
for b, p, argv, took in sessions:
    print("%s: exec true %.1f ms (%.1f - %.1f), %d runs" % (
        b, statistics.median(took) * 1000, min(took) * 1000, max(took) * 1000, len(took)))
    p.stdin.write("quit\n"); p.stdin.flush(); p.wait()
'''


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("builds", nargs="+", help="rdocker binaries")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--job-image", default="rdocker-test/ci-job:sid")
    ap.add_argument("--testbed", default="rdocker-test/user:bookworm")
    a = ap.parse_args()
    name = "rdocker-job-exec-%d" % os.getpid()
    mounts = []
    inside = []
    for i, b in enumerate(a.builds):
        mounts += ["-v", "%s:/b/%d-%s:ro" % (os.path.abspath(b), i, os.path.basename(b))]
        inside.append("/b/%d-%s" % (i, os.path.basename(b)))
    try:
        r = subprocess.run(["docker", "run", "--rm", "--name", name,
                            "-v", "/var/run/docker.sock:/var/run/docker.sock", *mounts,
                            a.job_image, "python3", "-c", INNER, str(a.rounds), a.testbed, *inside])
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)
    sys.exit(r.returncode)


if __name__ == "__main__":
    main()
