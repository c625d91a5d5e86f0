#!/usr/bin/python3
"""Whole autopkgtest runs of real Debian packages (issue 18 item 5):
`apt-get source` of each package, then autopkgtest builds it in the
testbed and runs its tests, with rdocker and with the reference
autopkgtest-virt-docker, alternating, cold and warm, under

  5.28  the host's autopkgtest (bookworm), rdocker and
        autopkgtest-virt-docker run on the host beside the local daemon;
  6.0   sid's autopkgtest (a revert before every test) in CI job
        containers with only the Docker socket mounted, as
        ci/e2e-releases.sh runs them: rdocker in rdocker-test/ci-job:sid,
        the reference (--remote) in rdocker-test/ci-job:sid-docker-cli.

Cold and warm:

  rdocker    cold: --apt-cache DIR, DIR new and empty, --apt-proxy none
             (every .deb from the mirror); warm: --apt-cache DIR, the
             directory that the cold run of the same package and release
             filled, --apt-proxy none. So warm is rdocker's own cache
             alone, not the host's apt-cacher-ng.
  reference  it has no cache: cold is its first run of the package, warm
             the later ones (the same command; the mirror, the daemon and
             the page cache have seen it all once).

Round 0 is cold, rounds 1..N warm; each round runs rdocker, then the
reference. Every run must end with a summary, exit 0, 2 (a test skipped)
or 4 (a test failed: hello's upstream-tests under 5.28, which writes into
the build tree, owned by root, as the normal user) and give the same
verdicts with both servers, or the script stops and says which; a number
comes only from such a pair.

autopkgtest's output is read line by line and each line stamped with the
time since the run began (the .ts file beside the log); the profile
splits the whole run by what the last line said was going on (see
classify()): the server's open, revert and close; autopkgtest's own
setup between the lines it shows; apt-get update; apt resolving;
downloads (apt's Get: lines); dpkg (unpacking, setting up, triggers);
the build (dpkg-buildpackage); the tests themselves ("[-----" to
"-----]"). The downloads, per step (the build, each test): rdocker's -d
cache summary ("N fetched and kept": what came from the mirror) at every
revert and at close, and apt's "Fetched" lines (every byte apt received,
from the mirror or from rdocker's cache).

    bench/whole_runs.py                            # hello and figlet, 5.28 and 6.0, 2 warm rounds
    bench/whole_runs.py --packages hello --releases 6.0 --rounds 1
    bench/whole_runs.py --table-from target/test-logs/whole-runs
                                                   # the tables again from saved logs

Python 3 standard library only. Needs root (or the docker group), the
local daemon, the test images (ci/provision.sh) and, for 6.0, the job
images (ci/e2e-releases.sh bench builds them), deb-src lines for the
host's apt (ci/provision.sh adds them) and a release build of rdocker
(--rdocker; copied into the 6.0 job container over the packaged one).
Removes its job containers and every testbed it started on every exit.
"""

import argparse
import glob
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SOCK = "/var/run/docker.sock"
RDOCKER_LABEL = "org.debian.autopkgtest.rdocker"
OWNER_HOST_LABEL = "org.debian.autopkgtest.rdocker.owner-host"
SERVERS = ["rdocker", "docker"]
TITLES = {"rdocker": "rdocker", "docker": "autopkgtest-virt-docker"}
TS = re.compile(r"^autopkgtest \[(\d\d):(\d\d):(\d\d)\]: (.*)$")
CACHE_LINE = re.compile(r"autopkgtest-virt-rdocker: DBG: apt cache(?: so far)?: (\d+) \.debs from the cache "
                        r"\(([\d.]+) MiB\), (\d+) fetched and kept \(([\d.]+) MiB\)")
FETCHED = re.compile(r"^Fetched ([\d.,]+) ([kMG]?)B in ")
PHASES = ["virt", "setup", "apt-get update", "apt resolve", "download", "dpkg", "build", "tests"]


def die(msg):
    sys.exit(f"whole_runs: error: {msg}")


def note(msg):
    print(f"whole_runs: {msg}", file=sys.stderr, flush=True)


def sh(*args, check=True):
    r = subprocess.run(list(args), text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if check and r.returncode != 0:
        die(f"{' '.join(args)} failed ({r.returncode}): {r.stderr.strip()[-500:]}")
    return r.stdout.strip()


# --- classifying a log --------------------------------------------------------

def classify(line, state):
    """The phase that LINE starts (what goes on until the next line), or
    None to keep the phase of the line before. STATE is a dict carried
    over the lines (in a test, in the build)."""
    s = line.rstrip("\n")
    m = TS.match(s)
    if m:
        msg = m[4]
        if re.match(r"test \S+: \[-+$", msg):
            state["test"] = True
            return "tests"
        if re.match(r"test \S+: -+\]$", msg):
            state["test"] = False
            return "setup"
        if re.search(r": preparing testbed$", msg):
            state["build"] = False
            return "virt"
        # autopkgtest's own steps: "test bed setup", "build needed for
        # binaries", "testbed dpkg architecture", the summary, ...
        return "setup"
    if state.get("test"):
        return None
    if s.startswith(("autopkgtest-virt-rdocker: DBG:", "autopkgtest-virt-docker: DBG:")):
        if re.search(r"executing (revert|open|close)\b", s):
            return "virt"
        if re.search(r"executing (copydown|copyup|print-execute-command|capabilities)\b", s):
            return "setup"
        return None
    if re.match(r"dpkg-buildpackage: info: source package", s) or s.startswith(" dpkg-buildpackage "):
        state["build"] = True
        return "build"
    if state.get("build"):
        if re.match(r"dpkg-buildpackage: info: (binary-only upload|full upload|binary and diff)", s):
            state["build"] = False
            return "setup"
        return None
    if re.match(r"(Hit|Get|Ign|Err):\d+ \S+ \S+ (\S+ )?(InRelease|Release|Packages|Sources|Translation)", s) \
            or re.match(r"(Hit|Get|Ign):\d+ (copy|file):", s):
        return "apt-get update"
    if re.match(r"Get:\d+ ", s):
        return "download"
    if FETCHED.match(s):
        return "dpkg"
    if s.startswith(("Reading package lists", "Building dependency tree", "Reading state information",
                     "The following", "Need to get", "After this operation", "Starting pkgProblemResolver",
                     "Starting 2 pkgProblemResolver", "Correcting dependencies", "Calculating upgrade",
                     "Note, using directory", "Solving dependencies")):
        return "apt resolve"
    if s.startswith(("Preconfiguring packages", "Selecting previously unselected", "(Reading database",
                     "Preparing to unpack", "Unpacking ", "Setting up ", "Processing triggers",
                     "Extracting templates", "debconf:", "update-alternatives:")):
        return "dpkg"
    return None


def profile(stamped):
    """Seconds per phase from [(t, line)]; the time until each line goes
    to the phase current before it."""
    out = dict.fromkeys(PHASES, 0.0)
    state = {}
    phase, last = "virt", 0.0  # the open, before the first line
    for t, line in stamped:
        out[phase] += t - last
        last = t
        p = classify(line, state)
        if p:
            phase = p
    return out


def mib(n, unit):
    """apt's Fetched size (SI units: 309 kB, 79.1 MB) in MiB."""
    return float(n.replace(",", "")) * {"": 1, "k": 1e3, "M": 1e6, "G": 1e9}[unit] / 2**20


def downloads(text):
    """Per step (the build, then each test), in order: (name, MiB apt
    reported fetching, .debs and MiB rdocker's cache fetched from the
    mirror, or None when no summary closed the step). rdocker prints its
    cache's running totals at each revert, after autopkgtest's "test T:
    preparing testbed": those close the step before T; the summary at
    close closes the last."""
    steps = [["(build)", 0.0]]
    ends = {}  # step index -> (debs, MiB) fetched from the mirror so far
    for line in text.splitlines():
        m = TS.match(line)
        if m:
            t = re.match(r"test (\S+): preparing testbed$", m[4])
            if t:
                steps.append([t[1], 0.0])
            continue
        f = FETCHED.match(line)
        if f:
            steps[-1][1] += mib(f[1], f[2])
            continue
        c = CACHE_LINE.search(line)
        if c:
            i = len(steps) - 2 if "so far" in line else len(steps) - 1
            if i >= 0 and i not in ends:
                ends[i] = (int(c[3]), float(c[4]))
    rows, prev = [], (0, 0.0)
    for i, (name, fetched) in enumerate(steps):
        if i in ends:
            rows.append((name, fetched, ends[i][0] - prev[0], ends[i][1] - prev[1]))
            prev = ends[i]
        else:
            rows.append((name, fetched, None, None))
    return rows


def preparations(stamped):
    """Seconds from each test's "preparing testbed" to its "[-----" (the
    revert, autopkgtest's setup of the new testbed, the test's installs)."""
    out, start = [], {}
    for t, line in stamped:
        m = TS.match(line)
        if not m:
            continue
        p = re.match(r"test (\S+): preparing testbed$", m[4])
        if p:
            start[p[1]] = t
        p = re.match(r"test (\S+): \[-+$", m[4])
        if p and p[1] in start:
            out.append(t - start.pop(p[1]))
    return out


def verdicts_of(text):
    out, in_summary = {}, False
    for line in text.splitlines():
        m = TS.match(line)
        if m:
            in_summary = m[4].startswith("@@@@@@@@@@@@@@@@@@@@ summary")
            continue
        if in_summary:
            v = re.match(r"^(\S+)\s+(PASS|FAIL|SKIP|FLAKY|ERROR|NEUTRAL)\b", line)
            if v:
                out[v[1]] = v[2]
    return out


# --- running ------------------------------------------------------------------

def run_stamped(argv, logf, env=None):
    """Run ARGV, its stdout and stderr merged into LOGF, every line stamped
    in LOGF.ts (seconds since the start, tab, the line). Returns (exit
    status, wall seconds)."""
    t0 = time.monotonic()
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    with open(logf, "wb") as f, open(logf + ".ts", "w") as ts:
        for raw in p.stdout:
            t = time.monotonic() - t0
            f.write(raw)
            ts.write(f"{t:.3f}\t{raw.decode('utf-8', 'replace').rstrip().replace(chr(13), ' ')}\n")
    rc = p.wait()
    return rc, time.monotonic() - t0


def read_stamped(logf):
    out = []
    with open(logf + ".ts", newline="\n") as f:
        for line in f:
            t, _, rest = line.rstrip("\n").partition("\t")
            out.append((float(t), rest))
    return out


class Bench:
    def __init__(self, a):
        self.a = a
        self.jobs = {}
        self.tmp = tempfile.mkdtemp(prefix="whole-runs-")
        self.label = f"org.debian.autopkgtest.rdocker.bench.whole-runs={os.getpid()}"
        self.dscs = {}

    def sources(self):
        os.makedirs(self.a.src, exist_ok=True)
        for pkg in self.a.packages:
            d = os.path.join(self.a.src, pkg)
            have = glob.glob(os.path.join(d, "*.dsc"))
            if not have:
                os.makedirs(d, exist_ok=True)
                r = subprocess.run(["apt-get", "source", "--download-only", "-q", pkg], cwd=d,
                                   text=True, capture_output=True)
                have = glob.glob(os.path.join(d, "*.dsc"))
                if r.returncode != 0 or not have:
                    die(f"apt-get source --download-only {pkg} failed (does the mirror serve its source? "
                        f"deb-src lines?): {r.stderr.strip()[-300:]}")
            self.dscs[pkg] = have[0]
            note(f"{pkg}: {os.path.basename(have[0])}")

    def start_jobs(self):
        tag = f"{os.getpid()}-{int(time.time())}"
        for server, image in (("rdocker", self.a.job_image), ("docker", self.a.cli_image)):
            if subprocess.run(["docker", "image", "inspect", image], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL).returncode != 0:
                die(f"no image {image}: build it with ci/e2e-releases.sh bench")
            name = f"rdocker-whole-runs-{tag}-{server}"
            self.jobs[server] = name
            sh("docker", "run", "-d", "--name", name, "--hostname", name, "--label", self.label,
               "-v", f"{SOCK}:{SOCK}", image, "tail", "-f", "/dev/null")
            sh("docker", "exec", name, "mkdir", "-p", "/src")
            for pkg, dsc in self.dscs.items():
                sh("docker", "cp", os.path.dirname(dsc), f"{name}:/src/{pkg}")
        # This tree's rdocker over the packaged one, so that both releases
        # measure the same build.
        sh("docker", "cp", self.a.rdocker, f"{self.jobs['rdocker']}:/usr/bin/autopkgtest-virt-rdocker")
        v = sh("docker", "exec", self.jobs["rdocker"], "dpkg-query", "-W", "-f", "${Version}", "autopkgtest")
        if not v.startswith("6."):
            die(f"autopkgtest {v} in {self.a.job_image}, expected 6.x")
        return v

    def argv(self, release, server, pkg, state):
        """The command line of one run, and where rdocker's cache is."""
        out = f"out-{pkg}-{release}-{server}-{state}-{time.monotonic_ns()}"
        if release == "5.28":
            cache = os.path.join(self.tmp, f"cache-{pkg}")
            base = ["autopkgtest", self.dscs[pkg], "-o", os.path.join(self.tmp, out), "--"]
        else:
            cache = f"/cache-{pkg}"
            base = ["docker", "exec", self.jobs[server], "autopkgtest",
                    f"/src/{pkg}/{os.path.basename(self.dscs[pkg])}", "-o", f"/tmp/{out}", "--"]
        if server == "rdocker":
            virt = ["rdocker", "-d", "--apt-proxy", "none", "--apt-cache", cache, self.a.testbed]
        elif release == "5.28":
            virt = ["docker", "-d", self.a.testbed, "--label", self.label]
        else:
            virt = ["docker", "--remote", "-d", self.a.testbed, "--label", self.label]
        return base + virt, cache

    def fresh_cache(self, release, server, cache):
        if server != "rdocker":
            return
        if release == "5.28":
            shutil.rmtree(cache, ignore_errors=True)
        else:
            sh("docker", "exec", self.jobs["rdocker"], "rm", "-rf", cache)

    def run(self, release, server, pkg, rnd):
        state = "cold" if rnd == 0 else "warm"
        argv, cache = self.argv(release, server, pkg, state)
        if state == "cold":
            self.fresh_cache(release, server, cache)
        env = dict(os.environ)
        if release == "5.28":
            env["PATH"] = os.path.dirname(os.path.abspath(self.a.rdocker)) + ":" + env["PATH"]
        logf = os.path.join(self.a.logs, f"{pkg}-{release}-{server}-{rnd}.log")
        rc, took = run_stamped(argv, logf, env)
        with open(logf, errors="replace") as f:
            v = verdicts_of(f.read())
        if rc not in (0, 2, 4) or not v:
            die(f"{pkg} {release} {server} round {rnd}: autopkgtest exited {rc}, verdicts {v}; see {logf}")
        return took, rc, v

    def stop(self):
        for name in self.jobs.values():
            subprocess.run(["docker", "rm", "-f", name], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for flt in ([f"label={self.label}"],
                    *([f"label={RDOCKER_LABEL}=1", f"label={OWNER_HOST_LABEL}={n}"] for n in self.jobs.values())):
            ids = subprocess.run(["docker", "ps", "-aq", *sum((["--filter", x] for x in flt), [])],
                                 capture_output=True, text=True).stdout.split()
            if ids:
                subprocess.run(["docker", "rm", "-f", *ids], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
        shutil.rmtree(self.tmp, ignore_errors=True)


# --- tables ---------------------------------------------------------------------

def cell(xs, unit=" s", prec=0):
    if not xs:
        return "-"
    if len(xs) == 1:
        return f"{xs[0]:.{prec}f}{unit}"
    return f"{statistics.median(xs):.{prec}f}{unit} ({min(xs):.{prec}f} - {max(xs):.{prec}f})"


def load(logs):
    walls = {}
    if os.path.exists(os.path.join(logs, "walls.json")):
        with open(os.path.join(logs, "walls.json")) as f:
            walls = json.load(f)
    runs = []
    for fn in sorted(glob.glob(os.path.join(logs, "*.log"))):
        base = os.path.basename(fn)[:-4]
        pkg, release, server, rnd = base.rsplit("-", 3)
        if not os.path.exists(fn + ".ts"):
            continue
        stamped = read_stamped(fn)
        with open(fn, errors="replace") as f:
            text = f.read()
        wall = walls.get(base, {}).get("wall", stamped[-1][0] if stamped else 0.0)
        runs.append(dict(pkg=pkg, release=release, server=server, rnd=int(rnd),
                         state="cold" if int(rnd) == 0 else "warm", wall=wall,
                         profile=profile(stamped), downloads=downloads(text), prep=preparations(stamped),
                         verdicts=verdicts_of(text)))
    return runs


def tables(logs):
    runs = load(logs)
    if not runs:
        die(f"no logs in {logs}")
    out = []
    pkgs = sorted({r["pkg"] for r in runs})
    rels = sorted({r["release"] for r in runs})
    # 1. whole runs
    out.append("| package | autopkgtest | rdocker cold | reference cold | rdocker warm | reference warm "
               "| warm rdocker ÷ reference | target ≤ 0.6 |")
    out.append("|---|---|---:|---:|---:|---:|---:|---|")
    for pkg in pkgs:
        for rel in rels:
            sel = {(s, st): [r["wall"] for r in runs if (r["pkg"], r["release"], r["server"], r["state"])
                             == (pkg, rel, s, st)] for s in SERVERS for st in ("cold", "warm")}
            if not any(sel.values()):
                continue
            ratio = "-"
            met = "-"
            if sel[("rdocker", "warm")] and sel[("docker", "warm")]:
                x = statistics.median(sel[("rdocker", "warm")]) / statistics.median(sel[("docker", "warm")])
                ratio = f"{x:.2f}"
                met = "yes" if x <= 0.6 else f"**no** ({x / 0.6:.2f}× the target)"
            out.append(f"| {pkg} | {rel} | {cell(sel[('rdocker', 'cold')])} | {cell(sel[('docker', 'cold')])} "
                       f"| {cell(sel[('rdocker', 'warm')])} | {cell(sel[('docker', 'warm')])} | {ratio} | {met} |")
    out.append("")
    out.append("Wall time of the autopkgtest command (build and tests), medians (min - max); "
               "cold is one run each, warm the rounds after it.")
    out.append("")
    # 2. profile, warm medians
    out.append("| median s | " + " | ".join(PHASES) + " | whole | preparing one test |")
    out.append("|---|" + "---:|" * (len(PHASES) + 2))
    for pkg in pkgs:
        for rel in rels:
            for s in SERVERS:
                for st in ("cold", "warm"):
                    sel = [r for r in runs if (r["pkg"], r["release"], r["server"], r["state"]) == (pkg, rel, s, st)]
                    if not sel:
                        continue
                    cells = [f"{statistics.median([r['profile'][p] for r in sel]):.1f}" for p in PHASES]
                    out.append(f"| {pkg} {rel} {TITLES[s]} {st} | " + " | ".join(cells)
                               + f" | {statistics.median([r['wall'] for r in sel]):.1f} "
                               + f"| {cell(sum((r['prep'] for r in sel), []), prec=1)} |")
    out.append("")
    out.append("Seconds per phase, medians over the runs of the row; each line's time goes to what the line "
               "before it said was going on (bench/whole_runs.py's classify()): virt, the server's open, revert "
               "and close (from autopkgtest's \"preparing testbed\" or the server's \"executing revert\" to "
               "the next line); setup, autopkgtest's own work between the lines it shows (its quiet commands in "
               "the testbed: the apt-get update whose output it saves, the apt-utils install for its local "
               "repository, copies); apt-get update's visible lines; apt resolving; downloads (apt's Get: "
               "lines); dpkg (from apt's Fetched line through unpacking, setting up, triggers); the build "
               "(dpkg-buildpackage to its last line); the tests themselves (\"[-----\" to \"-----]\"). "
               "Preparing one test: \"test T: preparing testbed\" to \"test T: [-----\", over all tests "
               "of the row's runs (median, min - max).")
    out.append("")
    # 3. downloads per test (6.0 and 5.28, rdocker)
    out.append("| downloads per step | server | state | " + "build, then each test: MiB from the mirror "
               "(rdocker's cache summary) / MiB apt fetched |")
    out.append("|---|---|---|---|")
    for pkg in pkgs:
        for rel in rels:
            for s in SERVERS:
                for st in ("cold", "warm"):
                    sel = [r for r in runs if (r["pkg"], r["release"], r["server"], r["state"]) == (pkg, rel, s, st)]
                    if not sel:
                        continue
                    r = sel[0]
                    parts = []
                    for name, fetched, n, size in r["downloads"]:
                        mirror = "(with the next)" if n is None else f"{n} debs {size:.1f}"
                        if s != "rdocker":
                            mirror = f"{fetched:.1f}"
                        parts.append(f"{name}: {mirror} / {fetched:.1f}")
                    out.append(f"| {pkg} {rel} | {TITLES[s]} | {st} (round {r['rnd']}) | " + "; ".join(parts) + " |")
    out.append("")
    out.append("rdocker: .debs and MiB that its cache fetched from the mirror during the step (the -d summary "
               "printed at each revert and at close), then what apt reported fetching (its Fetched lines, "
               "from the cache or the mirror). The reference has no cache: all it fetches comes from the mirror.")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--packages", default="hello,figlet", help="source packages (hello,figlet)")
    ap.add_argument("--releases", default="5.28,6.0", help="5.28 (the host's), 6.0 (sid job containers)")
    ap.add_argument("--rounds", type=int, default=2, help="warm rounds after the cold one (2)")
    ap.add_argument("--rdocker", default=os.path.join(ROOT, "target/release/autopkgtest-virt-rdocker"))
    ap.add_argument("--testbed", default="rdocker-test/autopkgtest:bookworm")
    ap.add_argument("--job-image", default="rdocker-test/ci-job:sid")
    ap.add_argument("--cli-image", default="rdocker-test/ci-job:sid-docker-cli")
    ap.add_argument("--src", default=os.path.join(ROOT, "target/bench-whole-runs/src"),
                    help="where apt-get source puts the packages (kept)")
    ap.add_argument("--logs", default=os.path.join(ROOT, "target/test-logs/whole-runs"))
    ap.add_argument("--table-from", metavar="DIR", help="print the tables from the logs in DIR; run nothing")
    a = ap.parse_args()
    if a.table_from:
        print(tables(a.table_from))
        return
    a.packages = [p for p in a.packages.split(",") if p]
    a.releases = [r for r in a.releases.split(",") if r]
    for r in a.releases:
        if r not in ("5.28", "6.0"):
            die(f"--releases: 5.28 or 6.0, not {r}")
    if not os.access(a.rdocker, os.X_OK):
        die(f"no rdocker at {a.rdocker}: cargo build --release, or --rdocker PATH")
    if "5.28" in a.releases:
        v = sh("dpkg-query", "-W", "-f", "${Version}", "autopkgtest")
        if not v.startswith("5.28"):
            die(f"the host's autopkgtest is {v}, not 5.28")
    os.makedirs(a.logs, exist_ok=True)
    for old in glob.glob(os.path.join(a.logs, "*.log*")) + glob.glob(os.path.join(a.logs, "walls.json")):
        os.unlink(old)
    b = Bench(a)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    walls = {}
    t0 = time.monotonic()
    try:
        b.sources()
        v6 = b.start_jobs() if "6.0" in a.releases else None
        note(f"rdocker {sh(a.rdocker, '--version')}; host autopkgtest "
             f"{sh('dpkg-query', '-W', '-f', '${Version}', 'autopkgtest')}; job autopkgtest {v6}")
        for rel in a.releases:
            for pkg in a.packages:
                for rnd in range(0, a.rounds + 1):
                    for server in SERVERS:
                        took, rc, v = b.run(rel, server, pkg, rnd)
                        key = f"{pkg}-{rel}-{server}-{rnd}"
                        walls[key] = {"wall": took, "rc": rc, "verdicts": v}
                        with open(os.path.join(a.logs, "walls.json"), "w") as f:
                            json.dump(walls, f, indent=1)
                        note(f"{pkg} {rel} {server} {'cold' if rnd == 0 else 'warm'} round {rnd}: "
                             f"{took:.1f} s, exit {rc}, {v}")
                    other = walls[f"{pkg}-{rel}-docker-{rnd}"]["verdicts"]
                    if walls[f"{pkg}-{rel}-rdocker-{rnd}"]["verdicts"] != other:
                        die(f"{pkg} {rel} round {rnd}: verdicts differ: rdocker "
                            f"{walls[f'{pkg}-{rel}-rdocker-{rnd}']['verdicts']}, reference {other}")
    finally:
        b.stop()
    print(f"{len(walls)} runs, {time.monotonic() - t0:.0f} s in all; testbed {a.testbed}; logs in {a.logs}")
    print()
    print(tables(a.logs))


if __name__ == "__main__":
    main()
