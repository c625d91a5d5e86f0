#!/usr/bin/python3
"""One package's autopkgtests in parallel (issue 28): `rdocker-autopkgtest
-j N AUTOPKGTEST-ARGS...` against the same autopkgtest command run
serially, alternating in one run.

Per package and round, in a rotating order: the serial run
(`autopkgtest [-B] SRC -o OUT -- rdocker ... IMAGE`), then the runner
with the same arguments at each -j. Every run shares one rdocker
--apt-cache (--apt-proxy none), warmed by a serial run per package that
is not counted, so that downloads do not decide the ratio.

For each run: the wall time, each test's result (the summary file in the
output directory, else the summary autopkgtest printed), the exit status.
Results and exit status of every parallel run are compared with the
serial run of the same round, and the report says whether they are equal.
The default packages:

  rdocker-eight  tests/pkg/rdocker-eight, from source: eight tests of 2
                 to 30 s and one build. The builds are counted (distinct
                 dpkg-buildpackage processes in this run's testbeds; a
                 parallel run must have exactly one) and "tests after the
                 build" is the wall time from the build's end to the end.
  imagemagick    -B (the archive's binaries), 8 tests.
  dbus           -B, 11 tests, one skipped (isolation-machine): autopkgtest
                 exits 2, and so must the runner.

A profile is taken of every run (printed for the largest -j): a sampler
reads /proc every --sample seconds: /proc/stat (how busy the CPUs are),
and each process's CPU time, put in classes: in this run's testbeds
(containers whose rdocker owner is a process of this run) apt, dpkg,
the build, and the rest (the tests); on the host autopkgtest, rdocker,
the runner; the Docker daemon (shared with anyone else on the machine);
and every other process on the machine, which tells how loaded the
machine was. Processes that live less than one sampling period are
missed. From autopkgtest's own logs (every file named log in the output
directory): per test, the preparation (testbed, dependency install:
"preparing testbed" to "[-----") and the test itself ("[-----" to
"-----]"), 1 s resolution.

    bench/parallel.py --runner PATH                  # all, -j 2 and 4, 1 round
    bench/parallel.py --packages rdocker-eight --serial-only
    bench/parallel.py --rounds 3 --jobs 2,4 --output target/parallel.md
    bench/parallel.py --jobs 2,2q                    # a list per shard, or a process per test

Python 3 standard library only; reuses bench/whole_runs.py (stamped
runs, summaries) and bench/bench.py (/proc/stat). Needs root (or the
docker group), the local daemon, the test image (ci/provision.sh), deb-src
lines for the host's apt (ci/provision.sh adds them) and a release build
of rdocker (--rdocker). Removes the testbeds of its runs on every exit.
"""

import argparse
import collections
import glob
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import bench as vbench  # noqa: E402  (cpu_times)
import whole_runs  # noqa: E402  (run_stamped, verdicts_of, TS)

OWNER_PID = "org.debian.autopkgtest.rdocker.owner-pid"
LOCAL = {"rdocker-eight": os.path.join(ROOT, "tests/pkg/rdocker-eight")}
# Archive packages are tested with -B: their binaries, no build.
DEFAULT_PACKAGES = "rdocker-eight,imagemagick,dbus"
CLASSES = ["tests", "apt", "dpkg", "build", "autopkgtest", "rdocker", "runner", "daemon", "others"]
CLASS_TITLES = {
    "tests": "testbeds: tests and the rest", "apt": "testbeds: apt", "dpkg": "testbeds: dpkg",
    "build": "testbeds: build", "autopkgtest": "autopkgtest", "rdocker": "rdocker",
    "runner": "runner", "daemon": "Docker daemon (shared)", "others": "other processes (not this run)",
}
APT = {"apt-get", "apt", "apt-cache", "apt-config", "apt-key", "http", "https", "gpgv", "store", "copy",
       "file", "rred", "mirror", "apt-extracttemp", "apt-ftparchive"}
DPKG = ("dpkg", "dpkg-deb", "dpkg-split", "dpkg-trigger", "dpkg-divert", "dpkg-maintscript",
        "update-alternat", "ldconfig", "mandb", "debconf", "frontend", "install-info", "dpkg-statoverri")
DAEMON = {"dockerd", "containerd", "containerd-shim", "containerd-shim-runc-v2", "runc", "docker-proxy",
          "containerd-shi"}
CID = re.compile(r"[/-]([0-9a-f]{64})(?:\.scope|/|$)")
HZ = os.sysconf("SC_CLK_TCK")


def note(msg):
    print(f"parallel: {msg}", file=sys.stderr, flush=True)


def die(msg):
    sys.exit(f"parallel: error: {msg}")


# --- the sampler --------------------------------------------------------------

def read_procs():
    """{pid: (comm, ppid, starttime, cpu ticks)} of every process now."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                s = f.read()
        except OSError:
            continue
        comm = s[s.index("(") + 1:s.rindex(")")]
        f = s[s.rindex(")") + 2:].split()
        out[int(d)] = (comm, int(f[1]), int(f[19]), int(f[11]) + int(f[12]))
    return out


def container_of(pid):
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            m = CID.search(f.read())
    except OSError:
        return None
    return m[1] if m else None


def cgroup_cpu(cid):
    """CPU seconds of a container's cgroup, or None (gone, or not found)."""
    for path, scale in ((f"/sys/fs/cgroup/cpuacct/docker/{cid}/cpuacct.usage", 1e-9),
                        (f"/sys/fs/cgroup/system.slice/docker-{cid}.scope/cpu.stat", 1e-6),
                        (f"/sys/fs/cgroup/docker/{cid}/cpu.stat", 1e-6)):
        try:
            with open(path) as f:
                text = f.read()
        except OSError:
            continue
        if path.endswith("cpu.stat"):
            m = re.search(r"^usage_usec (\d+)", text, re.M)
            return int(m[1]) * scale if m else None
        return int(text) * scale
    return None


class Sampler(threading.Thread):
    """Samples /proc while one run goes on; see the module's docstring.
    ROOT_PID is the run's top process (autopkgtest or the runner)."""

    def __init__(self, root_pid, period):
        super().__init__(daemon=True)
        self.root, self.period = root_pid, period
        self.stop_ev = threading.Event()
        self.cpu = dict.fromkeys(CLASSES, 0.0)  # CPU seconds
        self.busy = []  # fraction of all CPUs busy, per period
        self.iowait = []
        self.last = {}  # (pid, start) -> ticks counted so far
        self.cids = {}  # container id -> ours?
        self.cls = {}  # (pid, start) -> (comm, class)
        self.builds = set()  # (pid, start) of dpkg-buildpackage in our testbeds
        self.build_seen = None  # seconds since start, last sample with a build running
        self.cg = {}  # our container id -> CPU seconds its cgroup reported last
        self.t0 = time.monotonic()
        self.first = True

    def ours(self, cid, host_pids):
        if cid not in self.cids:
            r = subprocess.run(["docker", "inspect", "-f", "{{index .Config.Labels \"%s\"}}" % OWNER_PID, cid],
                               capture_output=True, text=True)
            pid = r.stdout.strip()
            if r.returncode != 0 or not pid.isdigit():
                return False  # gone before we asked: do not cache a wrong answer
            self.cids[cid] = int(pid) in host_pids
        return self.cids[cid]

    def classify(self, pid, procs, host_pids):
        comm = procs[pid][0]
        if pid in host_pids:
            if comm.startswith("autopkgtest-vir") or comm == "rdocker":
                return "rdocker"
            if comm.startswith(("rdocker-autopkg", "rdocker_autopkg")) or pid == self.root and not comm.startswith("autopkgtest"):
                return "runner"
            if comm == "autopkgtest" or comm.startswith("python"):
                return "autopkgtest"
            return "runner"
        if comm in DAEMON:
            return "daemon"
        cid = container_of(pid)
        if cid is None or not self.ours(cid, host_pids):
            return "others"
        # In one of our testbeds: by the process and its ancestors.
        p, seen = pid, 0
        while p in procs and seen < 64:
            c = procs[p][0]
            if c.startswith("dpkg-buildpack"):
                return "build"
            if c in APT:
                return "apt"
            if c.startswith(DPKG):
                return "dpkg"
            p, seen = procs[p][1], seen + 1
        return "tests"

    def sample(self):
        procs = read_procs()
        kids = collections.defaultdict(list)
        for pid, (_, ppid, _, _) in procs.items():
            kids[ppid].append(pid)
        host_pids, todo = set(), [self.root]
        while todo:
            p = todo.pop()
            if p in procs and p not in host_pids:
                host_pids.add(p)
                todo.extend(kids[p])
        now = time.monotonic() - self.t0
        building = False
        for pid, (comm, _, start, ticks) in procs.items():
            key = (pid, start)
            if key not in self.last:
                # Processes that were there before the run count from now.
                self.last[key] = ticks if self.first else 0
            if self.cls.get(key, (None,))[0] != comm:  # new, or it ran exec
                self.cls[key] = (comm, self.classify(pid, procs, host_pids))
            c = self.cls[key][1]
            self.cpu[c] += (ticks - self.last[key]) / HZ
            self.last[key] = ticks
            if c == "build" and comm.startswith("dpkg-buildpack"):
                building = True
                # Not a fork of one (perl's system() before its exec).
                if not procs.get(procs[pid][1], ("",))[0].startswith("dpkg-buildpack"):
                    self.builds.add(key)
        if building:
            self.build_seen = now
        # The testbeds' whole CPU time, short-lived processes included: the
        # container's cgroup (v1 cpuacct or v2 cpu.stat), while it exists.
        for cid, mine in self.cids.items():
            if mine:
                v = cgroup_cpu(cid)
                if v is not None:
                    self.cg[cid] = max(v, self.cg.get(cid, 0.0))
        self.first = False

    def run(self):
        idle0, total0 = vbench.cpu_times()
        io0 = self.iowait_ticks()
        self.sample()
        while not self.stop_ev.wait(self.period):
            self.sample()
            idle1, total1 = vbench.cpu_times()
            io1 = self.iowait_ticks()
            if total1 > total0:
                self.busy.append(1 - (idle1 - idle0) / (total1 - total0))
                self.iowait.append((io1 - io0) / (total1 - total0))
            idle0, total0, io0 = idle1, total1, io1

    @staticmethod
    def iowait_ticks():
        with open("/proc/stat") as f:
            return int(f.readline().split()[5])

    def finish(self):
        self.stop_ev.set()
        self.join()


# --- logs ---------------------------------------------------------------------

def log_files(outdir):
    logs = sorted(glob.glob(os.path.join(outdir, "**", "log"), recursive=True))
    if len(logs) > 1:
        # The runner's top-level log is its shards' logs one after another.
        logs = [x for x in logs if x != os.path.join(outdir, "log")]
    return logs


def log_phases(outdir):
    """From every file named log under OUTDIR: {test: (preparation s, test s)}
    and the build's seconds ("build needed" to the first "preparing
    testbed" after it, summed over files)."""
    tests, build = {}, 0.0
    for fn in log_files(outdir):
        day, prev, marks, b0 = 0, None, collections.defaultdict(dict), None
        with open(fn, errors="replace") as f:
            for line in f:
                m = re.search(r"autopkgtest \[(\d\d):(\d\d):(\d\d)\]: (.*)$", line)
                if not m:
                    continue
                t = int(m[1]) * 3600 + int(m[2]) * 60 + int(m[3])
                if prev is not None and t + day < prev - 43200:
                    day += 86400  # past midnight
                t += day
                prev = t
                msg = m[4]
                if b0 is not None:
                    # The build prints no line of autopkgtest's until it ends.
                    build += t - b0
                    b0 = None
                if msg.startswith("build needed for binaries"):
                    b0 = t
                x = re.match(r"test (\S+): (preparing testbed|\[-+|-+\])$", msg)
                if x:
                    kind = "prep" if x[2].startswith("preparing") else "open" if x[2].startswith("[") else "close"
                    marks[x[1]].setdefault(kind, t)
        if b0 is not None:
            # autopkgtest --validate (the runner's build) stops after the
            # build with no line of its own: the log's last write ends it.
            lt = time.localtime(os.path.getmtime(fn))
            end = lt.tm_hour * 3600 + lt.tm_min * 60 + lt.tm_sec + day
            build += max(0, end - b0 + (86400 if end < b0 - 43200 else 0))
        for name, mk in marks.items():
            if "prep" in mk and "open" in mk and "close" in mk:
                tests[name] = (mk["open"] - mk["prep"], mk["close"] - mk["open"])
    return tests, build


def summary_of(outdir, printed):
    """{test: result} from OUTDIR/summary, else from what was printed."""
    fn = os.path.join(outdir, "summary")
    if os.path.exists(fn):
        out = {}
        with open(fn, errors="replace") as f:
            for line in f:
                v = re.match(r"^(\S+)\s+(PASS|FAIL|SKIP|FLAKY|ERROR|NEUTRAL)\b", line)
                if v:
                    out[v[1]] = v[2]
        if out:
            return out
    return whole_runs.verdicts_of(printed)


def count_build_lines(outdir):
    """dpkg-buildpackage's first line, in the logs that log_phases reads."""
    n = 0
    for fn in log_files(outdir):
        with open(fn, errors="replace") as f:
            n += f.read().count("dpkg-buildpackage: info: source package")
    return n


# --- runs -----------------------------------------------------------------------

class Bench:
    def __init__(self, a):
        self.a = a
        self.tmp = tempfile.mkdtemp(prefix="bench-parallel-")
        self.srcs = {}
        self.runs = []  # dicts, one per run
        self.top_pids = []

    def sources(self):
        suite = self.a.suite
        for pkg in self.a.packages:
            if pkg in LOCAL or os.path.isdir(pkg):
                self.srcs[pkg] = (os.path.abspath(LOCAL.get(pkg, pkg)) + "/", False)
                continue
            d = os.path.join(self.a.src, pkg)
            have = glob.glob(os.path.join(d, "*.dsc"))
            if not have:
                os.makedirs(d, exist_ok=True)
                # PKG/SUITE: the source of the testbed's own suite (the
                # mirror may not serve a newer -security one).
                r = subprocess.run(["apt-get", "source", "--download-only", "-q", f"{pkg}/{suite}"], cwd=d,
                                   text=True, capture_output=True)
                have = glob.glob(os.path.join(d, "*.dsc"))
                if r.returncode != 0 or not have:
                    die(f"apt-get source --download-only {pkg}/{suite} failed (does the mirror serve its "
                        f"source? deb-src lines, as ci/provision.sh adds?): {r.stderr.strip()[-300:]}")
            self.srcs[pkg] = (have[0], True)
            note(f"{pkg}: {os.path.basename(have[0])}, tested with -B")

    def argv(self, pkg, mode, out):
        src, binaries = self.srcs[pkg]
        virt = ["rdocker", "--apt-proxy", "none", "--apt-cache", self.a.apt_cache, self.a.image]
        at = (["-B"] if binaries else []) + [src, "-o", out, "--"] + virt
        if mode == SERIAL:
            return [self.a.autopkgtest] + at
        own = ["--split", "queue"] if mode.endswith("q") else []
        if self.a.durations:
            # The latest serial run of this package kept in the logs (this
            # round's if it came first, else the warm-up's or an earlier one).
            base = os.path.basename(pkg.rstrip("/"))
            have = sorted(glob.glob(os.path.join(self.a.logs, f"{base}-serial-*.out")), key=os.path.getmtime)
            if have:
                own += ["--durations", have[-1]]
        return [self.a.runner, "-j", str(njobs(mode))] + own + at

    def run(self, pkg, mode, rnd):
        name = f"{os.path.basename(pkg.rstrip('/'))}-{'serial' if mode == SERIAL else f'j{mode}'}-{rnd}"
        out = os.path.join(self.tmp, name)
        logf = os.path.join(self.a.logs, name + ".log")
        argv = self.argv(pkg, mode, out)
        env = dict(os.environ, PATH=os.path.dirname(os.path.abspath(self.a.rdocker)) + ":" + os.environ["PATH"])
        if self.a.autopkgtest != "autopkgtest":
            # The runner drives the same autopkgtest, with its modules:
            # those of its source layout (runner/autopkgtest beside lib/).
            at = os.path.abspath(self.a.autopkgtest)
            lib = os.path.join(os.path.dirname(os.path.dirname(at)), "lib")
            env.update(RDOCKER_AUTOPKGTEST=at,
                       RDOCKER_AUTOPKGTEST_LIB=lib if os.path.isdir(lib) else "/usr/share/autopkgtest/lib")
        note(f"{name}: {' '.join(shlex.quote(x) for x in argv)}")
        load0 = os.getloadavg()[0]
        t0 = time.monotonic()
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        self.top_pids.append(p.pid)
        self.current = p
        s = Sampler(p.pid, self.a.sample)
        s.start()
        with open(logf, "wb") as f:
            for raw in p.stdout:
                f.write(raw)
        rc = p.wait()
        wall = time.monotonic() - t0
        s.finish()
        with open(logf, errors="replace") as f:
            printed = f.read()
        results = summary_of(out, printed)
        tests, build_log = log_phases(out)
        # Keep the output directory's logs beside the printed one.
        keep = os.path.join(self.a.logs, name + ".out")
        shutil.rmtree(keep, ignore_errors=True)
        shutil.copytree(out, keep, ignore=shutil.ignore_patterns("binaries"), dirs_exist_ok=True) \
            if os.path.isdir(out) else None
        shutil.rmtree(out, ignore_errors=True)
        r = dict(pkg=pkg, jobs=mode, rnd=rnd, wall=wall, rc=rc, results=results, tests=tests,
                 build_log=build_log, builds=len(s.builds), build_lines=count_build_lines(keep),
                 build_end=s.build_seen, cpu=dict(s.cpu), testbeds_cg=sum(s.cg.values()), busy=s.busy, iowait=s.iowait,
                 load=(load0, os.getloadavg()[0]), logf=logf)
        after = f", tests after the build {wall - s.build_seen:.1f} s" if s.build_seen is not None else ""
        note(f"{name}: {wall:.1f} s, exit {rc}, {len(s.builds)} build(s){after}, results {results}; "
             f"other processes used {s.cpu['others']:.0f} CPU-s")
        if not results:
            note(f"{name}: no results; see {logf}")
        self.runs.append(r)
        return r

    def cleanup(self):
        # A run cut short (a signal to the bench): its autopkgtest or
        # runner closes its own testbeds when told to stop.
        p = getattr(self, "current", None)
        if p and p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout=120)
            except subprocess.TimeoutExpired:
                p.kill()
        # Testbeds whose rdocker owner was one of our processes (after a
        # kill, rdocker may not have closed them).
        r = subprocess.run(["docker", "ps", "-aq", "--filter", "label=org.debian.autopkgtest.rdocker=1",
                            "--format", "{{.ID}} {{index .Labels \"%s\"}}" % OWNER_PID],
                           capture_output=True, text=True)
        mine = []
        for line in r.stdout.splitlines():
            cid, _, pid = line.partition(" ")
            if pid.isdigit() and self.is_ours(int(pid)):
                mine.append(cid)
        if mine:
            subprocess.run(["docker", "rm", "-f", *mine], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def is_ours(self, pid):
        # A dead owner's PID: ours if it was a descendant, which we can no
        # longer tell; rdocker's --reap handles those. Only live ones here.
        try:
            p = pid
            for _ in range(64):
                if p in self.top_pids:
                    return True
                with open(f"/proc/{p}/stat") as f:
                    s = f.read()
                p = int(s[s.rindex(")") + 2:].split()[1])
                if p <= 1:
                    return False
        except OSError:
            return False
        return False


# --- report ---------------------------------------------------------------------

SERIAL = "1"


def njobs(mode):
    """-j of a mode: "2" is -j 2, "2q" is -j 2 --split queue."""
    return int(mode.rstrip("q"))


def label(mode):
    if mode == SERIAL:
        return "serial"
    return f"-j {njobs(mode)}" + (" --split queue" if mode.endswith("q") else "")


def med(xs):
    return statistics.median(xs) if xs else None


def cell(xs, prec=1):
    xs = [x for x in xs if x is not None]
    if not xs:
        return "-"
    if len(xs) == 1:
        return f"{xs[0]:.{prec}f} s"
    return f"{statistics.median(xs):.{prec}f} s ({min(xs):.{prec}f} - {max(xs):.{prec}f})"


def report(b, cmdline, started, loaded_note):
    a = b.a
    out = []
    p = out.append
    p(f"Command: `{cmdline}`, started {started}; testbed {a.image}; rdocker {a.rdocker}; "
      f"runner {a.runner if a.jobs else '(none: --serial-only)'}; autopkgtest {a.autopkgtest}; "
      f"{os.cpu_count()} CPUs.")
    p("")
    if loaded_note:
        p(f"**Measured on a loaded machine**: {loaded_note}")
        p("")
    p("| package | run | wall | ÷ serial | tests after the build | ÷ serial | builds | results as serial "
      "| exit (serial) | other load |")
    p("|---|---|---:|---:|---:|---:|---:|---|---|---:|")
    problems = []
    for pkg in a.packages:
        ser = [r for r in b.runs if r["pkg"] == pkg and r["jobs"] == SERIAL]
        sw = med([r["wall"] for r in ser])
        sa = med([r["wall"] - r["build_end"] for r in ser if r["build_end"] is not None])
        for jobs in [SERIAL] + a.jobs:
            rs = [r for r in b.runs if r["pkg"] == pkg and r["jobs"] == jobs]
            if not rs:
                continue
            w = med([r["wall"] for r in rs])
            after = [r["wall"] - r["build_end"] for r in rs if r["build_end"] is not None]
            ratio = f"{w / sw:.2f}" if jobs != SERIAL and sw else "-"
            aratio = f"{med(after) / sa:.2f}" if jobs != SERIAL and after and sa else "-"
            builds = ", ".join(f"{r['builds']} / {r['build_lines']}" for r in rs)
            same, exits = [], []
            for r in rs:
                if not r["results"] or r["rc"] >= 12:
                    # 12 and up: erroneous package, testbed failure, ...
                    problems.append(f"{pkg} {label(jobs)} round {r['rnd']}: "
                                    f"exit {r['rc']}, {len(r['results'])} results; see {r['logf']}")
                s = [x for x in ser if x["rnd"] == r["rnd"]]
                exits.append(f"{r['rc']}" + (f" ({s[0]['rc']})" if s and jobs != SERIAL else ""))
                if jobs == SERIAL:
                    continue
                if not s:
                    same.append("no serial run")
                elif r["results"] == s[0]["results"] and r["rc"] == s[0]["rc"] and r["results"]:
                    same.append("yes")
                else:
                    diff = {t: (s[0]["results"].get(t), r["results"].get(t))
                            for t in set(s[0]["results"]) | set(r["results"])
                            if s[0]["results"].get(t) != r["results"].get(t)}
                    same.append(f"**no**: {diff or 'exit status'}")
                    problems.append(f"{pkg} {label(jobs)} round {r['rnd']}: results {diff}, exit {r['rc']} "
                                    f"against serial {s[0]['rc']}")
                built = s and (s[0]["builds"] or s[0]["build_lines"])
                if (r["builds"] > 1 or r["build_lines"] > 1
                                 or built and (r["builds"] != 1 or r["build_lines"] != 1)):
                    problems.append(f"{pkg} {label(jobs)} round {r['rnd']}: {r['builds']} builds")
            p(f"| {pkg} | {label(jobs)} | {cell([r['wall'] for r in rs])} | {ratio} | {cell(after)} | {aratio} "
              f"| {builds} | {'; '.join(same) if same else '-'} | {', '.join(exits)} "
              f"| {', '.join('%.2f' % (r['cpu']['others'] / r['wall']) for r in rs)} |")
    p("")
    p("Wall time of the whole command, median (min - max) over the rounds. Tests after the build: from the "
      "last sample with a dpkg-buildpackage running in this run's testbeds to the end. Builds, per round: distinct "
      "dpkg-buildpackage processes sampled in this run's testbeds / dpkg-buildpackage's first line in autopkgtest's "
      "logs. Results as serial: every "
      "test's result and the exit status equal to the serial run of the same round. Other load: CPUs that "
      "processes not of this run used on average during the run, per round (of the machine's "
      f"{os.cpu_count()}).")
    p("")
    for pkg in a.packages:
        ser = [r for r in b.runs if r["pkg"] == pkg and r["jobs"] == SERIAL]
        if ser:
            p(f"- {pkg} serial results (round {ser[0]['rnd']}): "
              + ", ".join(f"{t} {v}" for t, v in ser[0]["results"].items()))
    p("")
    prof = max([SERIAL] + a.jobs, key=lambda m: (njobs(m), not m.endswith("q")))
    p(f"Profile (runs with {label(prof)}, and serial for comparison), medians over rounds:")
    p("")
    p("| package | run | CPUs busy | ≥ 90 % busy | iowait | testbeds (cgroups) | "
      + " | ".join(CLASS_TITLES[c] for c in CLASSES)
      + " | preparations (sum) | tests (sum) | longest test (preparation + test) | build (log) |")
    p("|---|---|---:|---:|---:|---:|" + "---:|" * len(CLASSES) + "---:|---:|---|---:|")
    for pkg in a.packages:
        for jobs in dict.fromkeys([SERIAL, prof]):
            rs = [r for r in b.runs if r["pkg"] == pkg and r["jobs"] == jobs]
            if not rs:
                continue
            busy = med([statistics.mean(r["busy"]) for r in rs if r["busy"]])
            hi = med([sum(x >= 0.9 for x in r["busy"]) / len(r["busy"]) for r in rs if r["busy"]])
            io = med([statistics.mean(r["iowait"]) for r in rs if r["iowait"]])
            cpus = [f"{med([r['cpu'][c] for r in rs]):.1f}" for c in CLASSES]
            cg = med([r.get("testbeds_cg", 0.0) for r in rs])
            prep = med([sum(x[0] for x in r["tests"].values()) for r in rs])
            body = med([sum(x[1] for x in r["tests"].values()) for r in rs])
            r0 = rs[0]
            if r0["tests"]:
                t, (pp, tb) = max(r0["tests"].items(), key=lambda kv: sum(kv[1]))
                longest = f"{t}: {pp} + {tb} s"
            else:
                longest = "-"
            pct = (lambda v: f"{100 * v:.0f} %" if v is not None else "-")
            p(f"| {pkg} | {label(jobs)} | {pct(busy)} | {pct(hi)} | {pct(io)} | {cg:.1f} | "
              + " | ".join(cpus) + f" | {prep:.0f} s | {body:.0f} s | {longest} | {med([r['build_log'] for r in rs]):.0f} s |")
    p("")
    p("CPUs busy: the mean over the run of 1 - idle share in /proc/stat (all CPUs, all processes); ≥ 90 % "
      "busy: the share of sampling periods with the CPUs at least 90 % busy. Testbeds (cgroups): CPU seconds of "
      "this run's testbeds by their containers' cgroups, every process included. The class columns are CPU "
      "seconds (user + system) of the sampled processes: in this run's testbeds (apt, dpkg and the build "
      "by the process or an ancestor, the rest is the tests), on the host (autopkgtest, rdocker, the runner), "
      "the Docker daemon (shared), and every other process on the machine; processes that live less than a "
      "sampling period are missed (dpkg's maintainer scripts, apt's methods). Preparations and tests: sums "
      "over the tests of autopkgtest's own timestamps (\"preparing testbed\" to \"[-----\": revert, "
      "testbed setup, dependency install; \"[-----\" to \"-----]\": the test), so with -j they add up "
      "time spent at once. Longest test: of the first round. Build (log): \"build needed\" to autopkgtest's next "
      "line (or the log's end), summed over the output directory's log files.")
    if problems:
        p("")
        p("**Failed runs, or differences from the serial runs**:")
        for x in problems:
            p(f"- {x}")
    return "\n".join(out), problems


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--packages", default=DEFAULT_PACKAGES,
                    help="rdocker-eight or a source directory (built in the testbed) and archive source "
                    "packages (-B) (%(default)s)")
    ap.add_argument("--jobs", default="2,4", help="-j values for the runner; 2q is -j 2 --split queue "
                    "(%(default)s)")
    ap.add_argument("--serial-only", action="store_true", help="only the serial runs (no runner needed)")
    ap.add_argument("--rounds", type=int, default=1, help="rounds (%(default)s)")
    ap.add_argument("--no-warmup", dest="warmup", action="store_false",
                    help="no uncounted serial run per package first to fill the apt cache")
    ap.add_argument("--durations", action="store_true",
                    help="give the runner --durations: the latest serial run of the package in --logs, "
                    "so that it balances the tests longest first")
    ap.add_argument("--runner", default=shutil.which("rdocker-autopkgtest")
                    or os.path.join(ROOT, "target/release/rdocker-autopkgtest"),
                    help="the parallel runner (default: rdocker-autopkgtest on PATH, else target/release/)")
    ap.add_argument("--rdocker", default=os.path.join(ROOT, "target/release/autopkgtest-virt-rdocker"),
                    help="rdocker, put first on PATH for autopkgtest (%(default)s)")
    ap.add_argument("--image", default="rdocker-test/autopkgtest:bookworm")
    ap.add_argument("--autopkgtest", default="autopkgtest",
                    help="autopkgtest to run, serially and under the runner; another version runs from its "
                    "source layout, e.g. the .deb's files with usr/bin/autopkgtest copied to runner/ and lib "
                    "pointing at usr/share/autopkgtest/lib (%(default)s)")
    ap.add_argument("--suite", default=None, help="suite of the sources (default: IMAGE's tag)")
    ap.add_argument("--src", default=os.path.join(ROOT, "target/bench-parallel/src"),
                    help="where apt-get source puts the archive packages (kept)")
    ap.add_argument("--apt-cache", default=os.path.join(ROOT, "target/bench-parallel/apt-cache"),
                    help="rdocker's --apt-cache for every run (kept)")
    ap.add_argument("--logs", default=os.path.join(ROOT, "target/test-logs/parallel"))
    ap.add_argument("--sample", type=float, default=0.5, help="sampling period, seconds (%(default)s)")
    ap.add_argument("--output", help="also write the report to this file")
    a = ap.parse_args()
    a.packages = [x for x in a.packages.split(",") if x]
    a.jobs = [] if a.serial_only else [x for x in a.jobs.split(",") if x]
    a.suite = a.suite or a.image.rpartition(":")[2].split("-")[0]
    if any(not re.fullmatch(r"[0-9]+q?", j) or njobs(j) < 2 for j in a.jobs) or a.rounds < 1:
        die("--jobs values are N or Nq (--split queue), N 2 or more; --rounds 1 or more")
    if not os.access(a.rdocker, os.X_OK):
        die(f"no rdocker at {a.rdocker}: cargo build --release --locked, or --rdocker PATH")
    if a.jobs and not (a.runner and os.access(a.runner, os.X_OK)):
        die(f"no runner at {a.runner}: build it, give --runner PATH, or --serial-only")
    if shutil.which(a.autopkgtest) is None:
        die("no autopkgtest: apt-get install autopkgtest")
    os.makedirs(a.logs, exist_ok=True)
    os.makedirs(a.apt_cache, exist_ok=True)
    cmdline = " ".join(shlex.quote(x) for x in [sys.argv[0]] + sys.argv[1:])
    started = time.strftime("%Y-%m-%d %H:%M %Z")
    b = Bench(a)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGHUP, lambda *_: sys.exit(129))
    t0 = time.monotonic()
    try:
        b.sources()
        if a.warmup:
            for pkg in a.packages:
                r = b.run(pkg, SERIAL, 0)
                b.runs.remove(r)
        modes = [SERIAL] + a.jobs
        for rnd in range(1, a.rounds + 1):
            for pkg in a.packages:
                k = (rnd - 1) % len(modes)
                for jobs in modes[k:] + modes[:k]:
                    b.run(pkg, jobs, rnd)
    except KeyboardInterrupt:
        note("interrupted, cleaning up")
        return 130
    finally:
        b.cleanup()
    others = sum(r["cpu"]["others"] for r in b.runs)
    walls = sum(r["wall"] for r in b.runs)
    share = others / (walls * os.cpu_count()) if walls else 0
    loaded = None
    if share > 0.05:
        loaded = (f"other processes used {others:.0f} CPU-seconds during the counted runs, {100 * share:.0f} % "
                  f"of the machine's {os.cpu_count()} CPUs over their {walls:.0f} s; load average at the "
                  f"starts {', '.join('%.1f' % r['load'][0] for r in b.runs)}")
    text, problems = report(b, cmdline, started, loaded)
    print(f"{len(b.runs)} counted runs, {time.monotonic() - t0:.0f} s in all; logs in {a.logs}")
    print()
    print(text)
    if a.output:
        with open(a.output, "w") as f:
            f.write(text + "\n")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
