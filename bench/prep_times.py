#!/usr/bin/python3
"""Where the preparation of each test goes under autopkgtest 6.x (which
reverts before every test), to the tenth of a second, for one or more
rdocker builds ("variants") alternating in one session.

One CI job container (the job image: sid's autopkgtest and an rdocker
.deb, only the Docker socket mounted) stays up; before each run, the
variant's binary is copied over its /usr/bin/autopkgtest-virt-rdocker.
Each run is `autopkgtest -d PKG -- rdocker -d TESTBED`; every line of its
output is stamped on arrival with this script's monotonic clock (the log's
own timestamps are whole seconds). Each test's preparation, from "test T:
preparing testbed" to "test T: [-----", is cut into phases at autopkgtest's
own debug lines:

  revert      the revert command, to its reply
  reopen      autopkgtest's commands on the new testbed (wrapper, chown,
              nproc, dpkg arch, apt version, eatmydata), to "test bed setup"
  policy      `apt-cache policy ^base-files$`: the first apt call, which
              builds apt's binary cache if the testbed has none
  misc        the commands between (stamps, package list, copyup, uname,
              copydown of the built .debs)
  local-repo  the script that installs apt-utils if missing, makes the
              local repository of the built .debs and runs apt-get update
              on it
  satisfy     `apt-get satisfy` of the test's Depends (none: 0)
  rest        the commands after it, up to the test's start

It prints, per variant and phase, the median and range (min - max) over
every test of every round, and how many testbed commands and copies a
preparation issues. Every run must PASS every test, or it stops and says
which.

    bench/prep_times.py --variant main=/path/a --variant warm=/path/b --rounds 3
    bench/prep_times.py --table-from target/test-logs/prep
    bench/prep_times.py --first-apt-call 5

--first-apt-call N measures the warming's candidates on their own, in
fresh containers of the testbed image (no autopkgtest, no rdocker),
alternating N rounds: how long autopkgtest's first apt call (`apt-cache
policy ^base-files$`) and the one after it take when, before them, the
container did nothing ("none"), generated apt's binary cache
("gencaches", what rdocker's spare does), read apt's and dpkg's files
and binaries ("pagecache"), or, after gencaches, did what autopkgtest's
set-up does before `apt-get satisfy`: added a local source and updated it
alone ("local-update": the cache that satisfy then builds again).

Python 3 standard library only. Needs root (or the docker group) and the
local daemon at /var/run/docker.sock. Removes its job container and its
testbeds on every exit.
"""

import argparse
import glob
import os
import re
import signal
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SOCK = "/var/run/docker.sock"
RDOCKER_LABEL = "org.debian.autopkgtest.rdocker"
OWNER_HOST_LABEL = "org.debian.autopkgtest.rdocker.owner-host"
PHASES = ["revert", "reopen", "policy", "misc", "local-repo", "satisfy", "rest"]
LINE = re.compile(r"^\s*(\d+\.\d+) (.*)$")


def die(msg):
    sys.exit(f"prep_times: error: {msg}")


def note(msg):
    print(f"prep_times: {msg}", file=sys.stderr, flush=True)


def docker(*args):
    r = subprocess.run(["docker", *args], text=True, capture_output=True)
    if r.returncode != 0:
        die(f"docker {' '.join(args)} failed ({r.returncode}): {r.stderr.strip()}")
    return r.stdout.strip()


def phases(text):
    """{test: {phase: seconds}} and {test: commands issued}, the
    verdicts, and the seconds of each short testbed command (not one of
    the apt phases') during preparations, from a stamped log ("SECONDS
    LINE" per line)."""
    out, cmds, verdicts, short = {}, {}, {}, []
    started = None
    test = None
    marks = {}
    pending = None  # the phase whose command runs, till its exit
    in_summary = False
    for raw in text.splitlines():
        m = LINE.match(raw)
        if not m:
            continue
        t, line = float(m[1]), m[2]
        if "@@@@@@@@@@@@@@@@@@@@ summary" in line:
            in_summary = True
            continue
        if in_summary:
            v = re.match(r"^(\S+)\s+(PASS|FAIL|SKIP|FLAKY|ERROR)\b", line)
            if v:
                verdicts[v[1]] = v[2]
            continue
        s = re.search(r"autopkgtest \[[\d:]+\]: test (\S+): preparing testbed$", line)
        if s:
            test = s[1]
            marks = {"start": t}
            cmds[test] = 0
            continue
        if test is None:
            continue
        if "autopkgtest: DBG: testbed command [" in line:
            started = t
        elif "testbed command exited with code" in line and started is not None:
            if not pending:
                short.append(t - started)
            started = None
        if "autopkgtest: DBG: testbed command [" in line or \
                re.search(r"sending command to virtualisation server: (copyup|copydown)", line):
            cmds[test] += 1
        if "got reply from testbed: ok" in line and "revert" not in marks:
            marks["revert"] = t
        elif "@@@@@@@@@@@@@@@@@@@@ test bed setup" in line:
            marks["reopen"] = t
        elif "testbed command ['apt-cache', 'policy'" in line:
            marks["misc0"] = t
            pending = "policy"
        elif "if ! type apt-ftparchive" in line:
            marks["misc"] = t
            pending = "local-repo"
        elif "'run_apt_command'" in line and "'satisfy'" in line:
            marks["satisfy0"] = t
            pending = "satisfy"
        elif "testbed command exited with code" in line and pending:
            marks[pending] = t
            pending = None
        e = re.search(r"autopkgtest \[[\d:]+\]: test (\S+): \[-+$", line)
        if e and e[1] == test:
            s0 = marks["start"]
            get = marks.get
            r = {"revert": get("revert", s0) - s0,
                 "reopen": get("reopen", s0) - get("revert", s0),
                 "policy": get("policy", 0) - get("misc0", 0)}
            r["misc"] = get("misc", 0) - get("policy", 0)
            r["local-repo"] = get("local-repo", 0) - get("misc", 0)
            r["satisfy"] = get("satisfy", 0) - get("satisfy0", 0)
            r["total"] = t - s0
            r["rest"] = r["total"] - sum(r[p] for p in PHASES if p != "rest")
            out[test] = r
            test = None
    return out, cmds, verdicts, short


def table(logs):
    """The Markdown table from the logs in LOGS (VARIANT-ROUND.log)."""
    variants = {}
    for fn in sorted(glob.glob(os.path.join(logs, "*-*.log"))):
        v = os.path.basename(fn).rsplit("-", 1)[0]
        with open(fn) as f:
            p, c, _, short = phases(f.read())
        d = variants.setdefault(v, {"runs": 0, "tests": [], "cmds": [], "short": []})
        d["runs"] += 1
        d["short"] += short
        d["tests"] += list(p.values())
        d["cmds"] += list(c.values())
    if not variants:
        die(f"no logs (VARIANT-ROUND.log) in {logs}")

    def cell(xs):
        return f"{statistics.median(xs):.2f} ({min(xs):.2f} - {max(xs):.2f})"

    cols = PHASES + ["total"]
    out = ["| variant | runs | tests | " + " | ".join(cols) + " | commands | one short command |",
           "|---|---:|---:|" + "---:|" * len(cols) + "---:|---:|"]
    for v, d in variants.items():
        out.append(f"| {v} | {d['runs']} | {len(d['tests'])} | "
                   + " | ".join(cell([t[c] for t in d["tests"]]) for c in cols)
                   + f" | {statistics.median(d['cmds']):.0f} | {cell(d['short'])} |")
    out.append("")
    out.append("Seconds per test's preparation, median (min - max) over every test of every "
               "round; commands: testbed commands and copies issued per preparation (median); one short "
               "command: each testbed command outside the three apt phases, exec to exit.")
    return "\n".join(out)


FIRST_CALL = {
    "none": ":",
    "gencaches": "apt-cache gencaches >/dev/null 2>&1",
    "pagecache": "cat /var/lib/apt/lists/* /var/lib/dpkg/status /usr/bin/apt-cache "
                 "/usr/lib/*/libapt-pkg.so.* >/dev/null 2>&1",
    # As autopkgtest's set-up: the cache warm, then its local source added
    # and updated alone, which leaves a cache of that source only.
    "local-update": "apt-cache gencaches >/dev/null 2>&1; mkdir -p /tmp/repo; : >/tmp/repo/Packages; "
                    "echo 'deb [ trusted=yes ] file:///tmp/repo /' >/etc/apt/sources.list.d/autopkgtest.list; "
                    "apt-get -q --no-list-cleanup -o Dir::Etc::sourcelist=/etc/apt/sources.list.d/autopkgtest.list "
                    "-o Dir::Etc::sourceparts=/dev/null update >/dev/null 2>&1",
}
# Milliseconds of two apt-cache policy calls, after the variant's step.
FIRST_CALL_SCRIPT = """%s
t() { s=$(date +%%s%%N); apt-cache policy '^base-files$' >/dev/null 2>&1; echo $(( ($(date +%%s%%N) - s) / 1000000 )); }
echo "$(t) $(t)"
"""


def first_apt_call(a):
    """The warming's candidates on their own: see the module's doc."""
    got = {v: ([], []) for v in FIRST_CALL}
    for rnd in range(1, a.first_apt_call + 1):
        for v, step in FIRST_CALL.items():
            out = docker("run", "--rm", "--label", f"org.debian.autopkgtest.rdocker.bench.prep={os.getpid()}",
                         a.testbed, "sh", "-c", FIRST_CALL_SCRIPT % step).split()
            got[v][0].append(int(out[0]))
            got[v][1].append(int(out[1]))
            note(f"round {rnd}: {v}: first apt call {out[0]} ms, second {out[1]} ms")

    def cell(xs):
        return f"{statistics.median(xs):.0f} ms ({min(xs)} - {max(xs)})"

    load = open("/proc/loadavg").read().split()[:3]
    print(f"fresh containers of {a.testbed}, {a.first_apt_call} rounds alternating, load average "
          f"at the end {' '.join(load)}")
    print()
    print("| before autopkgtest's first apt call | first `apt-cache policy` | second |")
    print("|---|---:|---:|")
    for v, (first, second) in got.items():
        print(f"| {v} | {cell(first)} | {cell(second)} |")


class Session:
    def __init__(self, a):
        self.a = a
        self.job = f"rdocker-prep-{os.getpid()}-{int(time.time())}"
        self.pkg = os.path.basename(os.path.normpath(a.package))

    def start(self):
        docker("image", "inspect", self.a.job_image)
        docker("run", "-d", "--name", self.job, "--hostname", self.job,
               "--label", f"org.debian.autopkgtest.rdocker.bench.prep={os.getpid()}",
               "-v", f"{SOCK}:{SOCK}", self.a.job_image, "tail", "-f", "/dev/null")
        docker("exec", self.job, "mkdir", "-p", "/src")
        docker("cp", self.a.package, f"{self.job}:/src/{self.pkg}")
        v = docker("exec", self.job, "dpkg-query", "-W", "-f", "${Version}", "autopkgtest")
        if not v.startswith("6."):
            die(f"autopkgtest {v} in {self.a.job_image}: this measures 6.x's revert before every test")
        return v

    def run(self, variant, path, rnd):
        docker("cp", path, f"{self.job}:/usr/bin/autopkgtest-virt-rdocker")
        logf = os.path.join(self.a.logs, f"{variant}-{rnd}.log")
        cmd = ["docker", "exec", self.job, "autopkgtest", "-d", f"/src/{self.pkg}/",
               "-o", f"/tmp/out-{variant}-{rnd}", "--", "rdocker", "-d", self.a.testbed]
        t0 = time.monotonic()
        with open(logf, "w") as f:
            p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                 errors="replace")
            for line in p.stdout:
                f.write(f"{time.monotonic() - t0:9.3f} {line}")
            rc = p.wait()
        took = time.monotonic() - t0
        with open(logf) as f:
            _, _, verdicts, _ = phases(f.read())
        bad = {k: v for k, v in verdicts.items() if v != "PASS"}
        if rc != 0 or bad or len(verdicts) != self.a.tests:
            die(f"{variant} round {rnd}: autopkgtest exited {rc}, verdicts {verdicts} "
                f"(expected {self.a.tests} PASS); see {logf}")
        return took

    def stop(self):
        subprocess.run(["docker", "rm", "-f", self.job], capture_output=True)
        ids = subprocess.run(["docker", "ps", "-aq", "--filter", f"label={RDOCKER_LABEL}=1",
                              "--filter", f"label={OWNER_HOST_LABEL}={self.job}"],
                             capture_output=True, text=True).stdout.split()
        if ids:
            subprocess.run(["docker", "rm", "-f", *ids], capture_output=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=BINARY",
                    help="an autopkgtest-virt-rdocker binary to measure (repeat; run in turn)")
    ap.add_argument("--job-image", default="rdocker-test/ci-job:sid")
    ap.add_argument("--testbed", default="rdocker-test/user:bookworm")
    ap.add_argument("--package", default=os.path.join(ROOT, "tests/pkg/rdocker-five"))
    ap.add_argument("--tests", type=int, default=5, help="how many tests must PASS per run (5)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--logs", default=os.path.join(ROOT, "target/test-logs/prep"))
    ap.add_argument("--table-from", metavar="DIR", help="print the table from the logs in DIR; run nothing")
    ap.add_argument("--first-apt-call", type=int, metavar="N",
                    help="measure the warming's candidates alone, N rounds; no autopkgtest")
    a = ap.parse_args()
    if a.table_from:
        print(table(a.table_from))
        return
    if a.first_apt_call:
        first_apt_call(a)
        return
    variants = []
    for v in a.variant:
        name, _, path = v.partition("=")
        if not name or "-" in name or not os.path.isfile(path):
            die(f"--variant {v!r}: NAME=BINARY, a name without '-' and an existing file")
        variants.append((name, path))
    if not variants:
        die("no --variant NAME=BINARY to measure")
    os.makedirs(a.logs, exist_ok=True)
    for old in glob.glob(os.path.join(a.logs, "*.log")):
        os.unlink(old)
    s = Session(a)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    t0 = time.monotonic()
    try:
        version = s.start()
        for rnd in range(1, a.rounds + 1):
            for name, path in variants:
                note(f"round {rnd}: {name} {s.run(name, path, str(rnd)):.1f} s")
    finally:
        s.stop()
    load = open("/proc/loadavg").read().split()[:3]
    print(f"autopkgtest {version}, {a.package}, testbed {a.testbed}, {a.rounds} rounds "
          f"alternating, {time.monotonic() - t0:.0f} s in all, load average at the end "
          f"{' '.join(load)}; logs in {a.logs}")
    print()
    print(table(a.logs))


if __name__ == "__main__":
    main()
