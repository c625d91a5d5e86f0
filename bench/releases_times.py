#!/usr/bin/python3
"""How long autopkgtest 6.x (which reverts the testbed before every test)
takes for a package with five small tests, through rdocker and through
the reference autopkgtest-virt-docker, each in a CI job container with
only the Docker socket mounted.

Two job containers stay up for the whole session: one from the job image
(sid's autopkgtest and the rdocker .deb, no docker CLI), one from the
docker-CLI image (the same plus sid's docker CLI) for the reference, which
needs --remote there (without it, it bind-mounts its own temporary
directory, which the daemon does not see). The runs alternate (rdocker,
docker, rdocker, docker, ...). Each run must pass every test of the
package, or the script stops and says which; a number comes only from a
passing run.

It prints, per server: the whole run's median and spread (min - max), and
the per-test preparation time from autopkgtest's log ("test T: preparing
testbed" to "test T: [-----", the revert and the test's package installs;
one-second timestamps, so the median over all tests of all rounds), and
the reverts rdocker reported (its -d line "testbed container is now").

    ci/e2e-releases.sh bench               # builds the images, then runs this
    bench/releases_times.py --rounds 3     # with the images already built
    bench/releases_times.py --table-from target/test-logs/e2e-releases/bench
                                           # the table again from saved logs

Python 3 standard library only. Needs root (or the docker group) and the
local daemon at /var/run/docker.sock. Removes its job containers and
their testbeds (the reference's carry --label; rdocker's its owner-host
label) on every exit.
"""

import argparse
import glob
import json
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
SERVERS = ["rdocker", "docker"]
TITLES = {"rdocker": "rdocker",
          "docker": "autopkgtest-virt-docker --remote"}
TS = re.compile(r"^autopkgtest \[(\d\d):(\d\d):(\d\d)\]: (.*)$")


def die(msg):
    sys.exit(f"releases_times: error: {msg}")


def note(msg):
    print(f"releases_times: {msg}", file=sys.stderr, flush=True)


def docker(*args, check=True, capture=True):
    r = subprocess.run(["docker", *args], text=True,
                       stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
                       stderr=subprocess.PIPE)
    if check and r.returncode != 0:
        die(f"docker {' '.join(args)} failed ({r.returncode}): {r.stderr.strip()}")
    return r.stdout.strip() if capture else ""


def parse_log(text):
    """Per-test preparation seconds, and the tests' verdicts, from a log.

    Returns (prep, verdicts, reverts, span, opened): prep maps test -> seconds,
    verdicts maps test -> PASS/FAIL/..., reverts maps test -> whether
    rdocker handed out a new testbed after the last test ended and before
    this one started; span is the seconds from the first test's
    "preparing testbed" to the summary (the tests, without the build);
    opened maps test -> seconds from its "preparing testbed" to the first
    line autopkgtest logs about the testbed after it ("testbed dpkg
    architecture", when it set the new testbed up): the revert."""
    prep, started, verdicts, reverts, opened = {}, {}, {}, {}, {}
    current = None
    first = summary = None
    reverted = False
    day = 0
    last = None
    in_summary = False
    for line in text.splitlines():
        if "autopkgtest-virt-rdocker: DBG: testbed container is now " in line:
            reverted = True
        m = TS.match(line)
        if m:
            secs = int(m[1]) * 3600 + int(m[2]) * 60 + int(m[3])
            if last is not None and secs + day < last:
                day += 86400  # past midnight
            secs += day
            last = secs
            msg = m[4]
            in_summary = msg.startswith("@@@@@@@@@@@@@@@@@@@@ summary")
            if in_summary:
                summary = secs
            t = re.match(r"test (\S+): preparing testbed$", msg)
            if t:
                started[t[1]] = secs
                current = t[1]
                if first is None:
                    first = secs
            if msg.startswith("testbed dpkg architecture") and current and current not in opened:
                opened[current] = secs - started[current]
            t = re.match(r"test (\S+): \[-+$", msg)
            if t:
                if t[1] not in started:
                    die(f"test {t[1]} started with no 'preparing testbed' line before it")
                prep[t[1]] = secs - started[t[1]]
                current = None
                reverts[t[1]] = reverted
                reverted = False
            continue
        if in_summary:
            v = re.match(r"^(\S+)\s+(PASS|FAIL|SKIP|FLAKY|ERROR)\b", line)
            if v:
                verdicts[v[1]] = v[2]
    span = summary - first if first is not None and summary is not None else None
    return prep, verdicts, reverts, span, opened


class Session:
    def __init__(self, a):
        self.a = a
        self.jobs = {}
        self.pkg = os.path.basename(os.path.normpath(a.package))

    def start(self):
        tag = f"{os.getpid()}-{int(time.time())}"
        for server, image in (("rdocker", self.a.job_image), ("docker", self.a.cli_image)):
            if subprocess.run(["docker", "image", "inspect", image], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL).returncode != 0:
                die(f"no image {image}: build it with ci/e2e-releases.sh bench")
            name = f"rdocker-releases-{tag}-{server}"
            self.jobs[server] = name
            docker("run", "-d", "--name", name, "--hostname", name,
                   *(["--label", self.a.label] if self.a.label else []),
                   "-v", f"{SOCK}:{SOCK}", image, "tail", "-f", "/dev/null")
            docker("exec", name, "mkdir", "-p", "/src")
            docker("cp", self.a.package, f"{name}:/src/{self.pkg}")
        versions = {}
        for server, name in self.jobs.items():
            versions[server] = docker("exec", name, "dpkg-query", "-W", "-f", "${Version}", "autopkgtest")
            if not re.match(self.a.expect_autopkgtest, versions[server]):
                die(f"autopkgtest {versions[server]} in {name}, expected /{self.a.expect_autopkgtest}/")
        rd = docker("exec", self.jobs["rdocker"], "autopkgtest-virt-rdocker", "--version")
        cli = docker("exec", self.jobs["docker"], "docker", "--version")
        note(f"autopkgtest {versions['rdocker']} (rdocker job), {versions['docker']} (docker job); "
             f"{rd}; {cli}")
        return versions

    def run(self, server, rnd):
        name = self.jobs[server]
        if server == "rdocker":
            virt = ["rdocker", "-d", self.a.testbed]
        else:
            # The reference's testbeds carry our label, so that stop() finds them.
            virt = ["docker", "--remote", "-d", self.a.testbed] + (
                ["--label", self.a.label] if self.a.label else [])
        logf = os.path.join(self.a.logs, f"{server}-{rnd}.log")
        t = time.monotonic()
        with open(logf, "w") as f:
            r = subprocess.run(["docker", "exec", name, "autopkgtest", f"/src/{self.pkg}/",
                                "-o", f"/tmp/out-{rnd}", "--", *virt],
                               stdout=f, stderr=subprocess.STDOUT)
        took = time.monotonic() - t
        with open(logf) as f:
            prep, verdicts, reverts, _, _ = parse_log(f.read())
        bad = {k: v for k, v in verdicts.items() if v != "PASS"}
        if r.returncode != 0 or bad or len(verdicts) != self.a.tests:
            die(f"{server} round {rnd}: autopkgtest exited {r.returncode}, verdicts {verdicts} "
                f"(expected {self.a.tests} PASS); see {logf}")
        if server == "rdocker" and not all(reverts.values()):
            die(f"rdocker round {rnd}: no revert before "
                f"{[k for k, v in reverts.items() if not v]} under autopkgtest 6.x; see {logf}")
        return took

    def stop(self):
        for name in self.jobs.values():
            subprocess.run(["docker", "rm", "-f", name], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            filters = [["--filter", f"label={RDOCKER_LABEL}=1",
                        "--filter", f"label={OWNER_HOST_LABEL}={name}"]]
            if self.a.label:
                filters.append(["--filter", f"label={self.a.label}"])
            for flt in filters:
                ids = subprocess.run(["docker", "ps", "-aq", *flt], capture_output=True,
                                     text=True).stdout.split()
                if ids:
                    subprocess.run(["docker", "rm", "-f", *ids], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)


def table(logs, walls=None):
    """The Markdown table from the logs in LOGS (SERVER-ROUND.log) and the
    wall times (this session's, else LOGS/walls.json's); without them the
    whole run is taken from the log's first and last timestamps."""
    if walls is None and os.path.exists(os.path.join(logs, "walls.json")):
        with open(os.path.join(logs, "walls.json")) as f:
            walls = {tuple(k.split("-", 1)): v for k, v in json.load(f).items()}
    rows = []
    for server in SERVERS:
        files = sorted(glob.glob(os.path.join(logs, f"{server}-*.log")))
        if not files:
            continue
        runs, spans, preps, opens, setups, nrev, ntests = [], [], [], [], [], 0, 0
        for fn in files:
            with open(fn) as f:
                text = f.read()
            prep, verdicts, reverts, span, opened = parse_log(text)
            preps += list(prep.values())
            opens += list(opened.values())
            setups += [prep[k] - opened[k] for k in opened if k in prep]
            if span is None:
                die(f"{fn}: no test or no summary in it")
            spans.append(span)
            nrev += sum(reverts.values())
            ntests += len(prep)
            rnd = os.path.basename(fn)[len(server) + 1:-4]
            if walls and (server, rnd) in walls:
                runs.append(walls[(server, rnd)])
            else:
                stamps = [TS.match(line) for line in text.splitlines()]
                stamps = [int(m[1]) * 3600 + int(m[2]) * 60 + int(m[3]) for m in stamps if m]
                runs.append(float((stamps[-1] - stamps[0]) % 86400))
        rows.append((server, runs, spans, preps, opens, setups, nrev, ntests))
    if not rows:
        die(f"no logs (SERVER-ROUND.log) in {logs}")

    def cell(xs, unit=" s"):
        return f"{statistics.median(xs):.0f}{unit} ({min(xs):.0f} - {max(xs):.0f})"

    out = ["| autopkgtest 6.x, tests/pkg/rdocker-five | runs | whole run | the 5 tests (no build) "
           "| preparing one test | of which revert | of which setup and installs | reverts seen (rdocker -d) |",
           "|---|---:|---:|---:|---:|---:|---:|---|"]
    for server, runs, spans, preps, opens, setups, nrev, ntests in rows:
        out.append(f"| {TITLES[server]} | {len(runs)} | {cell(runs)} | {cell(spans)} | {cell(preps)} "
                   f"| {cell(opens) if opens else '-'} | {cell(setups) if setups else '-'} "
                   f"| {f'{nrev} of {ntests} tests' if server == 'rdocker' else '-'} |")
    out.append("")
    out.append("Medians (min - max). Whole run: the autopkgtest step's wall time (with the build "
               "in the testbed); the rest from autopkgtest's log, whose timestamps are whole seconds: "
               "preparing a test is \"test T: preparing testbed\" to \"test T: [-----\", its revert "
               "up to autopkgtest's first line about the new testbed, the setup and installs the rest.")
    if len(rows) == 2:
        ratio = [statistics.median(rows[1][i]) / statistics.median(rows[0][i]) for i in (1, 2, 3)]
        out.append(f"docker ÷ rdocker: whole run {ratio[0]:.2f}, the tests {ratio[1]:.2f}, "
                   f"preparation {ratio[2]:.2f}.")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--job-image", default="rdocker-test/ci-job:sid")
    ap.add_argument("--cli-image", default="rdocker-test/ci-job:sid-docker-cli")
    ap.add_argument("--testbed", default="rdocker-test/user:bookworm")
    ap.add_argument("--package", default=os.path.join(ROOT, "tests/pkg/rdocker-five"))
    ap.add_argument("--tests", type=int, default=5, help="how many tests must PASS per run (5)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--logs", default=os.path.join(ROOT, "target/test-logs/e2e-releases/bench"))
    ap.add_argument("--label", default="", help="KEY=VALUE on the job containers and the reference's testbeds")
    ap.add_argument("--expect-autopkgtest", default=r"6\.", help="regexp for the job's autopkgtest version")
    ap.add_argument("--table-from", metavar="DIR", help="print the table from the logs in DIR; run nothing")
    a = ap.parse_args()

    if a.table_from:
        print(table(a.table_from))
        return
    if not a.label:
        # The reference labels nothing of its own: this finds its testbeds.
        a.label = f"org.debian.autopkgtest.rdocker.bench.releases={os.getpid()}"
    os.makedirs(a.logs, exist_ok=True)
    for old in glob.glob(os.path.join(a.logs, "*.log")) + glob.glob(os.path.join(a.logs, "walls.json")):
        os.unlink(old)
    s = Session(a)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    walls = {}
    t0 = time.monotonic()
    try:
        versions = s.start()
        for rnd in range(1, a.rounds + 1):
            for server in SERVERS:
                took = s.run(server, str(rnd))
                walls[(server, str(rnd))] = took
                with open(os.path.join(a.logs, "walls.json"), "w") as f:
                    json.dump({f"{k[0]}-{k[1]}": v for k, v in walls.items()}, f)
                note(f"round {rnd}: {server} {took:.1f} s")
    finally:
        s.stop()
    print(f"autopkgtest {versions['rdocker']}, testbed {a.testbed}, {a.rounds} rounds alternating, "
          f"{time.monotonic() - t0:.0f} s in all; logs in {a.logs}")
    print()
    print(table(a.logs, walls))


if __name__ == "__main__":
    main()
