#!/usr/bin/python3
"""rdocker-autopkgtest: one package's autopkgtests across N testbeds at once.

Usage: rdocker-autopkgtest [-j N] [--durations DIR] [--split list|queue]
           [-H URL | --context NAME]... [--step-summary FILE]
           AUTOPKGTEST-ARGS... -- rdocker IMAGE [...]

AUTOPKGTEST-ARGS are what one gives autopkgtest.  The runner drives
autopkgtest itself: it reads the arguments and the tests with autopkgtest's
own code (autopkgtest_args, testdesc), builds the package once when the
tests need built binaries (one autopkgtest --validate run, or the run of the
build-needed tests), then runs N autopkgtest processes at once, each with its
own rdocker session, a disjoint set of tests (--test-name) and, when a build
was needed, the built .debs with -B.  Their output directories are merged
into one, as autopkgtest lays it out, with a merged summary and the exit
status combined as autopkgtest combines it.  docs/parallel.md has the design.
"""
import inspect
import io
import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import contextlib

PROG = 'rdocker-autopkgtest'
AUTOPKGTEST_LIB = os.environ.get('RDOCKER_AUTOPKGTEST_LIB', '/usr/share/autopkgtest/lib')
AUTOPKGTEST = os.environ.get('RDOCKER_AUTOPKGTEST', 'autopkgtest')
# A shard that ends in a testbed failure is retried once.
TESTBED_FAILURE = 16
# Options of autopkgtest that the runner sets for each shard itself; the
# user's go to the merged result instead.
OWN_VALUE_OPTS = {'-o': 'output_dir', '--output-dir': 'output_dir',
                  '-l': 'logfile', '--log-file': 'logfile',
                  '--summary-file': 'summary',
                  '--test-name': 'only_tests', '--testname': 'only_tests'}
USAGE = __doc__.split('\n\n')[1]
OPTIONS = '''Options (before the autopkgtest arguments):
  -j, --jobs N           autopkgtest processes at once (default: the processors)
  --durations DIR        balance with the test durations of an earlier run
                         (its output directory or its log), longest first
  --split list|queue     list: at most N shards, each a list of tests (default);
                         queue: one autopkgtest process per test
  -H, --host URL         a daemon for shards (rdocker -H); repeat it to spread
                         the shards over several daemons
  --context NAME         a docker context for shards (rdocker --context)
  --step-summary FILE    append a Markdown table of the results (default:
                         $GITHUB_STEP_SUMMARY)
  -h, --help             print this help

The exit status is autopkgtest's, for all the tests.'''


class Error(Exception):
    """What failed and what to do; exits with autopkgtest's 20 (or CODE)."""

    def __init__(self, msg, code=20):
        super().__init__(msg)
        self.code = code


def here_report():
    """ci/action/report.py (the source tree) or the installed copy: the one
    reader of autopkgtest's summary and log."""
    here = os.path.dirname(os.path.abspath(__file__))
    for path in (os.path.join(here, '..', 'ci', 'action', 'report.py'),
                 '/usr/share/rdocker/autopkgtest_report.py'):
        if os.path.exists(path):
            import importlib.util
            spec = importlib.util.spec_from_file_location('autopkgtest_report', path)
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
            return mod
    raise Error('cannot find autopkgtest_report.py (/usr/share/rdocker/autopkgtest_report.py): '
                'reinstall the rdocker package')


report = here_report()


# ---------- the runner's own options

def parse_own(argv):
    """(options, the rest): the runner's options come first; the first word
    that is not one of them starts autopkgtest's arguments."""
    o = {'jobs': os.cpu_count() or 1, 'durations': None, 'split': 'list',
         'daemons': [], 'step_summary': os.environ.get('GITHUB_STEP_SUMMARY')}
    i = 0

    def value(name):
        nonlocal i
        a = argv[i]
        if '=' in a and a.startswith('--'):
            return a.split('=', 1)[1]
        if len(a) > 2 and not a.startswith('--'):
            return a[2:]
        i += 1
        if i >= len(argv):
            raise Error('%s needs a value (%s --help)' % (name, PROG))
        return argv[i]

    while i < len(argv):
        a = argv[i]
        key = a.split('=', 1)[0] if a.startswith('--') else a[:2]
        if a in ('-h', '--help'):
            print(USAGE + '\n\n' + OPTIONS)
            sys.exit(0)
        elif key in ('-j', '--jobs'):
            v = value(key)
            if not v.isdigit() or int(v) < 1:
                raise Error('-j wants a number of shards of at least 1, not %r' % v)
            o['jobs'] = int(v)
        elif key == '--durations':
            o['durations'] = value(key)
        elif key == '--split':
            o['split'] = value(key)
            if o['split'] not in ('list', 'queue'):
                raise Error('--split is list or queue, not %r' % o['split'])
        elif key in ('-H', '--host'):
            o['daemons'].append(['-H', value(key)])
        elif key == '--context':
            o['daemons'].append(['--context', value(key)])
        elif key == '--step-summary':
            o['step_summary'] = value(key)
        else:
            break
        i += 1
    return o, argv[i:]


# ---------- autopkgtest's own reading of its arguments and of the tests

def autopkgtest_lib():
    if AUTOPKGTEST_LIB not in sys.path:
        sys.path.insert(0, AUTOPKGTEST_LIB)
    try:
        import autopkgtest_args  # noqa: F401
        import testdesc  # noqa: F401
        import adtlog  # noqa: F401
    except ImportError as e:
        raise Error('cannot load autopkgtest\'s Python modules from %s (%s): '
                    'install autopkgtest (apt-get install autopkgtest)' % (AUTOPKGTEST_LIB, e))


def read_args(args):
    """autopkgtest's own parse of ARGS: (opts, actions, virt args)."""
    autopkgtest_lib()
    import autopkgtest_args
    saved = os.environ.get('AUTOPKGTEST_VIRT_COPY_TIMEOUT')
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return autopkgtest_args.parse_args(list(args))
    except SystemExit:
        raise Error('autopkgtest does not take these arguments:\n%s' % err.getvalue().strip())
    finally:
        if saved is None:
            os.environ.pop('AUTOPKGTEST_VIRT_COPY_TIMEOUT', None)


def split_args(args):
    """(autopkgtest's part, the virt server's part) of ARGS, at '--'."""
    if '--' not in args:
        raise Error('no "-- rdocker IMAGE": give the virt server as autopkgtest wants it, '
                    'for example: %s -j 2 PKG -- rdocker debian:sid' % PROG)
    sep = args.index('--')
    return args[:sep], args[sep + 1:]


def strip_own(at_args):
    """AT_ARGS without -o, -l, --summary-file and --test-name, which the
    runner sets per shard; {dest: [values]} of what was removed."""
    kept, removed, i = [], {}, 0
    while i < len(at_args):
        a = at_args[i]
        name, eq, val = a.partition('=') if a.startswith('--') else (a[:2], '', a[2:])
        if name in OWN_VALUE_OPTS and (eq or val or i + 1 < len(at_args)):
            if not eq and not val:
                i += 1
                val = at_args[i]
            removed.setdefault(OWN_VALUE_OPTS[name], []).append(val)
        else:
            kept.append(a)
        i += 1
    return kept, removed


def parse_tests(srcdir, opts, depends=None):
    """[(name, restrictions)] of SRCDIR as autopkgtest reads them: its
    testdesc, every capability given so that only what no testbed could
    run is left out (a shard reports those as autopkgtest does).  Each
    test's Depends (@ expanded) goes into the dict DEPENDS if given."""
    autopkgtest_lib()
    import testdesc
    import adtlog
    caps = set()
    for need in testdesc.RESTRICTIONS_REQUIRE_CAPS.values():
        for c in need:
            caps |= {c} if isinstance(c, str) else set(c)
    caps.add('revert')
    arch = subprocess.run(['dpkg', '--print-architecture'], capture_output=True,
                          text=True).stdout.strip() or 'amd64'
    params = inspect.signature(testdesc.parse_debian_source).parameters
    kw = {'control_path': opts.override_control,
          'auto_control': getattr(opts, 'auto_control', True),
          'ignore_restrictions': getattr(opts, 'ignore_restrictions', None) or []}
    if 'test_arch' in params:   # 6.x
        kw.update(test_arch=arch, test_arch_is_foreign=False)
    else:
        kw.update(testbed_arch=arch)
    skipped = []
    real_report = adtlog.report
    adtlog.report = lambda name, result: skipped.append(name)
    try:
        tests, _ = testdesc.parse_debian_source(srcdir, list(caps), **kw)
    except testdesc.InvalidControl as e:
        raise Error('%s: invalid debian/tests/control: %s' % (srcdir, e), 12)
    finally:
        adtlog.report = real_report
    found = [(t.name, set(t.restrictions)) for t in tests]
    if depends is not None:
        depends.update((t.name, list(t.depends)) for t in tests)
    names = {n for n, _ in found}
    # Tests that no testbed can run (an unknown restriction): a shard
    # given their name reports them SKIP, as the serial run does.
    found += [(n, set()) for n in skipped if n != '*' and n not in names]
    return found


def binary_packages(srcdir):
    """The binary packages that SRCDIR's debian/control builds."""
    autopkgtest_lib()
    import testdesc
    return {r['Package'] for r in testdesc.parse_rfc822(os.path.join(srcdir, 'debian', 'control'))
            if 'Package' in r}


def needs_binaries(depends, packages):
    """Whether a test with DEPENDS installs one of PACKAGES (the source's
    own binaries), in any alternative: then it waits for the build."""
    for dep in depends:
        # 5.x: "a (>= 1) | b"; 6.x: the alternatives as a list
        for alt in (dep.split('|') if isinstance(dep, str) else dep):
            name = re.split(r'[\s(\[<>=:]', str(alt).strip(), maxsplit=1)[0]
            if name in packages:
                return True
    return False


def control_without_builds(srcdir, opts, tmp):
    """A copy of the tests' control file with no build-needed restriction,
    or None when no control file has one.  autopkgtest builds the tree
    when any test in the file is build-needed, whichever tests it runs:
    the shards that run none of those read this copy, so that only the
    shard that runs them builds.  Every stanza stays, so that
    Test-Command stanzas keep their names (command1, ...)."""
    autopkgtest_lib()
    import testdesc
    path = opts.override_control or os.path.join(srcdir, 'debian', 'tests', 'control')
    records = list(testdesc.parse_rfc822(path))
    if not any('build-needed' in r.get('Restrictions', '').replace(',', ' ').split()
               for r in records):
        return None
    dest = os.path.join(tmp, 'control-no-build')
    with open(dest, 'w', encoding='UTF-8') as f:
        for r in records:
            rest = [x for x in r.get('Restrictions', '').replace(',', ' ').split()
                    if x != 'build-needed']
            r.pop('Restrictions', None)
            if rest:
                r['Restrictions'] = ', '.join(rest)
            f.write(''.join('%s: %s\n' % kv for kv in r.items()) + '\n')
    return dest


def source_tree(kind, arg, tmp):
    """A directory with the package's debian/ as autopkgtest would unpack it."""
    if kind in ('unbuilt-tree', 'built-tree'):
        return arg
    if kind == 'source':
        dest = os.path.join(tmp, 'src')
        try:
            r = subprocess.run(['dpkg-source', '--no-check', '-x', arg, dest],
                               capture_output=True, text=True)
        except FileNotFoundError:
            raise Error('cannot read the tests of %s: no dpkg-source to unpack it; install '
                        'dpkg-dev (apt-get install dpkg-dev)' % arg) from None
        if r.returncode != 0:
            raise Error('dpkg-source -x %s failed (%s): install dpkg-dev, or check the .dsc'
                        % (arg, r.stderr.strip()[-500:]))
        return dest
    raise Error('%s: %s sources are not supported by %s (it supports a source tree, a .dsc '
                'or .changes, and an apt source package name)' % (arg, kind, PROG))


def fetch_apt_source(pkg, tmp):
    """The .dsc of PKG, downloaded once with the host's apt-get source."""
    d = os.path.join(tmp, 'apt-source')
    os.makedirs(d)
    r = subprocess.run(['apt-get', 'source', '--download-only', '-q', '--only-source', pkg],
                       cwd=d, capture_output=True, text=True)
    dscs = [f for f in os.listdir(d) if f.endswith('.dsc')]
    if r.returncode != 0 or len(dscs) != 1:
        raise Error('apt-get source --download-only %s failed on this host (%s): the runner '
                    'fetches the source once on the host, so it needs deb-src lines in the '
                    'host\'s apt sources (then apt-get update); or download it yourself and give '
                    'the .dsc with -B' % (pkg, (r.stderr or r.stdout).strip()[-500:]))
    return os.path.join(d, dscs[0])


# ---------- balancing

def load_durations(path, names):
    """{test: seconds} from a previous run's output directory (or its log)."""
    if not path:
        return {}
    if os.path.isfile(path):
        tmp = tempfile.mkdtemp(prefix='rdocker-durations-')
        os.symlink(os.path.abspath(path), os.path.join(tmp, 'log'))
        try:
            return load_durations(tmp, names)
        finally:
            shutil.rmtree(tmp)
    if not os.path.exists(os.path.join(path, 'log')):
        raise Error('--durations %s: no log there; give a previous run\'s output directory '
                    '(autopkgtest -o) or its log file' % path)
    return {n: t.seconds() for n, t in report.parse_log(path, set(names)).items()
            if t.seconds() is not None}


def balance(units, durations, n, split='list'):
    """Jobs (lists of test names) for N workers.  UNITS are lists of tests
    that go together.  list: at most N jobs, longest first into the least
    loaded (round robin in control order when nothing is known); queue:
    one job per unit, longest first."""
    known = [durations[t] for u in units for t in u if t in durations]
    guess = (sum(known) / len(known)) if known else 1.0
    cost = [sum(durations.get(t, guess) for t in u) for u in units]
    # Stable: equal costs keep the control file's order.
    order = sorted(range(len(units)), key=lambda i: -cost[i])
    if split == 'queue':
        return [list(units[i]) for i in order]
    bins = [[] for _ in range(min(n, len(units)))]
    load = [0.0] * len(bins)
    for i in order:
        b = min(range(len(bins)), key=lambda k: (load[k], k))
        bins[b].append(i)
        load[b] += cost[i]
    # Each job runs its tests in the control file's order, as serial does.
    return [[t for i in sorted(b) for t in units[i]] for b in bins if b]


# ---------- merging

def merge_status(rows, shard_codes, erroneous=False):
    """autopkgtest's exit status for the merged summary ROWS
    ([(name, result, details)]), as its run_tests() computes it; a fatal
    status of a shard (testbed failure 16, other 20) stands for the run, as
    it would have ended a serial one."""
    fatal = [c for c in shard_codes if c >= 16]
    if fatal:
        return max(fatal)
    code, positive = 0, False
    for _, result, details in rows:
        if result == 'PASS':
            if 'superficial' not in details:
                positive = True
        elif result in ('SKIP', 'FLAKY'):
            code |= 2
        elif result == 'FAIL':
            code |= 12 if details.split()[:1] == ['badpkg'] else 4
        elif result != 'NEUTRAL':
            code |= 4
    if erroneous:
        code |= 12
    if code in (0, 2) and not positive:
        code = 8
    return code


def merge_summary(order, shard_rows, other_lines):
    """Summary lines in the control file's ORDER, then what else the shards
    said (blame, badpkg, testbed failure, retries)."""
    by_name = {}
    for name, result, details in shard_rows:
        by_name.setdefault(name, (name, result, details))
    rows = [by_name[n] for n in order if n in by_name]
    rows += [r for n, r in by_name.items() if n not in order]
    lines = [('%-20s %s %s' % r).rstrip() for r in rows]
    return rows, lines + list(other_lines)


# ---------- running

class Shard:
    def __init__(self, name, tests, daemon=None, at_args=None):
        self.name, self.tests, self.daemon = name, tests, daemon
        self.at_args = at_args   # beside the build: its own arguments
        self.code = None
        self.seconds = 0.0
        self.retry_of = None
        self.dir = self.out = None
        self.proc = None


class Runner:
    def __init__(self, own, args):
        self.own = own
        self.args = args
        self.procs = set()
        self.running = set()
        self.early_halted = False
        self.lock = threading.Lock()
        self.stopping = False

    def log(self, msg):
        line = '%s [%s]: %s' % (PROG, time.strftime('%H:%M:%S'), msg)
        print(line, file=sys.stderr, flush=True)
        self.notes.append(line)

    def argv(self, shard, extra):
        virt = list(self.virt)
        if self.is_rdocker:
            add = []
            if shard.daemon:
                add += shard.daemon
            if self.apt_cache:
                add += ['--apt-cache', self.apt_cache]
            virt[1:1] = add
        at_args = self.at_args if shard.at_args is None else shard.at_args
        return [AUTOPKGTEST] + at_args + extra + ['-o', shard.dir, '--'] + virt

    def run_one(self, shard, extra):
        shard.dir = os.path.join(self.shards_dir, shard.name)
        shard.out = shard.dir + '.out'
        argv = self.argv(shard, extra + [a for t in shard.tests for a in ('--test-name', t)])
        where = ' on %s' % ' '.join(shard.daemon) if shard.daemon else ''
        self.log('shard %s%s: %s' % (shard.name, where, ' '.join(shard.tests) or '(build)'))
        t0 = time.monotonic()
        with open(shard.out, 'wb') as out:
            with self.lock:
                if self.stopping or self.halted(shard):
                    shard.code = 20
                    return
                shard.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                              stderr=subprocess.STDOUT)
                self.procs.add(shard.proc)
                self.running.add(shard)
            code = shard.proc.wait()
            # Killed by a signal: "other unexpected failure", as autopkgtest.
            shard.code = code if code >= 0 else 20
            with self.lock:
                self.procs.discard(shard.proc)
                self.running.discard(shard)
        shard.seconds = time.monotonic() - t0
        self.log('shard %s: exit %d after %.1f s' % (shard.name, shard.code, shard.seconds))

    def run_with_retry(self, shard, extra):
        self.run_one(shard, extra)
        if shard.code != TESTBED_FAILURE or self.stopping or self.halted(shard):
            return [shard]
        rows, _ = report.parse_summary(shard.dir)
        done = {r[0] for r in rows}
        rest = [t for t in shard.tests if t not in done]
        if shard.tests and not rest:
            return [shard]
        again = Shard(shard.name + '-retry', rest, shard.daemon, shard.at_args)
        again.retry_of = shard
        self.log('shard %s: testbed failure (exit 16); retrying %s once on a fresh testbed'
                 % (shard.name, ' '.join(rest) or 'the build'))
        self.run_one(again, extra)
        return [shard, again]

    def stop(self, signum, frame):
        with self.lock:
            self.stopping = True
            for p in self.procs:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signal.SIGTERM)

    def main(self):
        self.notes = []
        at_all, virt = split_args(self.args)
        opts, actions, _ = read_args(self.args)
        self.at_args, removed = strip_own(at_all)
        # What autopkgtest reads of the stripped arguments must hold none of
        # those options (an abbreviation such as --output would slip by).
        check, _, _ = read_args(self.at_args + ['--'] + virt)
        for dest in ('output_dir', 'logfile', 'summary'):
            if getattr(check, dest):
                raise Error('write -o, -l and --summary-file in full (-o DIR, --output-dir=DIR, ...)')
        if check.only_tests:
            raise Error('write --test-name in full')
        self.virt = virt
        self.is_rdocker = os.path.basename(virt[0]) in ('rdocker', 'autopkgtest-virt-rdocker')
        if self.own['daemons'] and not self.is_rdocker:
            raise Error('-H and --context are rdocker\'s: the virt server here is %s' % virt[0])
        if self.own['daemons'] and any(a in ('-H', '--host', '--context') or
                                       a.startswith(('--host=', '--context='))
                                       for a in virt[1:]):
            raise Error('give the daemons to %s (-H/--context before the autopkgtest arguments), '
                        'not to rdocker after "--"' % PROG)
        src = [a for a in actions if a[0] != 'binary']
        if not src:
            raise Error('no source package among the arguments')
        kind, arg, built = src[0]
        out = removed.get('output_dir', [None])[-1]
        if out and os.path.exists(out) and os.listdir(out):
            raise Error('output directory %s is not empty (autopkgtest wants it new or empty)' % out)
        tmp = tempfile.mkdtemp(prefix='rdocker-autopkgtest-')
        try:
            return self.run(opts, kind, arg, built, out, removed, tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def run(self, opts, kind, arg, built, out, removed, tmp):
        t_start = time.monotonic()
        if kind == 'apt-source':
            dsc = fetch_apt_source(arg, tmp)
            self.log('fetched the source of %s once: %s' % (arg, os.path.basename(dsc)))
            # Every shard tests that same source, with the archive's
            # binaries as autopkgtest PKG does (-B).
            i = source_index(self.at_args, arg)
            self.at_args[i:i + 1] = [dsc]
            self.at_args.insert(0, '-B')
            kind, arg, built = 'source', dsc, False
        srcdir = source_tree(kind, arg, tmp)
        depends = {}
        tests = parse_tests(srcdir, opts, depends)
        no_build = control_without_builds(srcdir, opts, tmp) if any(
            'build-needed' in r for _, r in tests) else None
        skip = set(opts.skip_tests or [])
        wanted = set(opts.only_tests or [])
        tests = [(n, r) for n, r in tests if n not in skip and (not wanted or n in wanted)]
        order = [n for n, _ in tests]
        outdir = out or os.path.join(tmp, 'out')
        os.makedirs(outdir, exist_ok=True)
        self.shards_dir = os.path.join(outdir, 'shards')
        os.makedirs(self.shards_dir)
        self.apt_cache = None
        if self.is_rdocker and not any(a == '--apt-cache' or a.startswith('--apt-cache=')
                                       for a in self.virt[1:]):
            self.apt_cache = os.path.join(tmp, 'apt-cache')
            os.makedirs(self.apt_cache)
        daemons = self.own['daemons'] or [None]
        n = self.own['jobs']
        needs_build = [t for t, r in tests if 'build-needed' in r]
        self.no_build, self.build_tests = no_build, set(needs_build)
        shards = []
        extra = []
        if not tests:
            # Nothing to split: autopkgtest says what it says of no tests.
            # (the user's --test-name, if any, so that it says "no test
            # matching" as it would, rather than running every test).
            self.log('no tests to split: one autopkgtest run')
            shards += self.run_with_retry(Shard('1', removed.get('only_tests', []),
                                                daemons[0]), [])
        else:
            build = None
            if built:
                # One build: with the build-needed tests, else --validate
                # (autopkgtest builds, reads the tests and stops).
                b = Shard('build', needs_build, daemons[0])
                bextra = [] if needs_build else ['--validate']
                what = 'with the build-needed tests' if needs_build else 'autopkgtest --validate'
                built_shards = []

                def build():
                    self.log('building the package once (%s)' % what)
                    got = self.run_with_retry(b, bextra)
                    built_shards.extend(got)
                    last = got[-1]
                    bins = os.path.join(last.dir, 'binaries')
                    debs = sorted(os.path.join(bins, f) for f in os.listdir(bins)
                                  if f.endswith('.deb')) if os.path.isdir(bins) else []
                    if not debs:
                        self.log('the build gave no .deb (exit %d): no tests run' % last.code)
                        return False
                    # The .debs go beside the source: autopkgtest's
                    # positional arguments must be one run of words.
                    i = source_index(self.at_args, arg)
                    self.at_args[i:i] = debs
                    self.at_args.insert(0, '-B')
                    return True

                tests = [(t, r) for t, r in tests if t not in needs_build]
                needs_build = []
            units = [[t] for t, _ in tests if t not in needs_build]
            if needs_build:
                units.append(needs_build)   # one shard builds the tree, once
            durations = load_durations(self.own['durations'], [t for t, _ in tests])
            split = self.own['split']
            early = set()
            if built and n > 1:
                # Tests that install none of the package's binaries run
                # beside the build, on the other workers (-B, no .debs).
                own = binary_packages(srcdir)
                early = {t for t, _ in tests if not needs_binaries(depends.get(t, []), own)}
            early_args = ['-B'] + self.at_args
            jobs = [dict(tests=j, at_args=early_args) for j in balance(
                [u for u in units if u[0] in early], durations, n - 1, split)]
            jobs += [dict(tests=j, after_build=built) for j in balance(
                [u for u in units if u[0] not in early], durations, n, split)]
            self.log('%d tests in %d jobs on %d workers (%s%s%s)' % (
                len(tests), len(jobs), min(n, len(jobs) + bool(built)), split,
                ', durations of %d tests known' % len(durations) if durations else '',
                ', %d beside the build: they install none of its packages' % len(early)
                if early else ''))
            got = self.pool(jobs, extra, daemons, n, build)
            if built and not got[1]:
                return self.finish(opts, built_shards, order, outdir, out, removed, t_start,
                                   build_failed=True)
            shards += (built_shards if built else []) + got[0]
        return self.finish(opts, shards, order, outdir, out, removed, t_start)

    def pool(self, jobs, extra, daemons, n, build=None):
        """Run JOBS (dicts: tests, at_args for their own arguments,
        after_build) on N workers, at most N autopkgtest runs at once.
        BUILD, when given, is run first, by one worker, and the jobs
        after_build wait for it; when it fails, the other jobs are
        stopped.  (shards, whether the build gave its .debs)."""
        pending = list(enumerate(jobs, 1))
        done = []
        cv = threading.Condition()
        state = {'build': build, 'built': build is None, 'ok': True}

        def take():
            with cv:
                while not self.stopping and state['ok']:
                    if state['build']:
                        job, state['build'] = state['build'], None
                        return job
                    ready = [i for i, (_, j) in enumerate(pending)
                             if state['built'] or not j.get('after_build')]
                    if ready:
                        return pending.pop(ready[0])
                    if not pending:
                        return None
                    cv.wait(1)   # and see self.stopping
                return None

        def worker(w):
            while True:
                item = take()
                if item is None:
                    return
                if callable(item):
                    ok = False
                    try:
                        ok = item()
                    finally:
                        with cv:
                            state['built'], state['ok'] = True, ok
                            cv.notify_all()
                        if not ok:
                            self.halt_early()
                    continue
                k, job = item
                mine = extra
                if self.no_build and not self.build_tests & set(job['tests']):
                    mine = extra + ['--override-control', self.no_build]
                shard = Shard(str(k), job['tests'], daemons[w % len(daemons)], job.get('at_args'))
                got = self.run_with_retry(shard, mine)
                with cv:
                    done.extend(got)

        count = min(n, len(jobs) + (build is not None))
        threads = [threading.Thread(target=worker, args=(w,)) for w in range(count)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return (sorted(done, key=lambda s: (int(s.name.split('-')[0]), s.retry_of is not None)),
                state['ok'])

    def halted(self, shard):
        return self.early_halted and shard.at_args is not None

    def halt_early(self):
        """Stop the shards beside the build (their autopkgtest closes its
        testbed): the build failed, and a serial run would have run no
        test."""
        with self.lock:
            self.early_halted = True
            for s in self.running:
                if s.at_args is not None and s.proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        s.proc.send_signal(signal.SIGTERM)

    def finish(self, opts, shards, order, outdir, out, removed, t_start, build_failed=False):
        rows, other, codes, erroneous = [], [], [], False
        final = [s for s in shards if not any(o.retry_of is s for o in shards)]
        for s in shards:
            srows, sother = report.parse_summary(s.dir)
            if s.name.startswith('build') and not s.tests:
                # autopkgtest --validate's "* Test specification is valid"
                srows = [r for r in srows if r[0] != '*']
            rows += srows
            other += [o for o in sother if 'Test specification is valid' not in o]
            if any(o.startswith('erroneous package') for o in sother):
                erroneous = True
            if s.retry_of is not None:
                other.append('%s: %s retried on a fresh testbed after a testbed failure (exit 16)'
                             % (PROG, ' '.join(s.tests) or 'the build'))
        for s in final:
            if s.code not in (0, 2, 4, 6, 8, 12, 14):
                codes.append(s.code)
        if build_failed and not codes:
            codes.append(final[-1].code if final and final[-1].code else 20)
        rows, lines = merge_summary(order, rows, other)
        code = merge_status(rows, codes, erroneous)
        if not rows and not codes and all(s.code == 8 for s in final):
            code = 8
        missing = [t for t in order if t not in {r[0] for r in rows}]
        self.merge_dirs(shards, outdir)
        self.log('%d shard run(s) in %.1f s; exit status %d%s' % (
            len(shards), time.monotonic() - t_start, code,
            '; no result for: ' + ' '.join(missing) if missing else ''))
        summary = '\n'.join(lines) + ('\n' if lines else '')
        with open(os.path.join(outdir, 'summary'), 'w') as f:
            f.write(summary)
        with open(os.path.join(outdir, 'log'), 'w') as f:
            for s in shards:
                f.write('%s: shard %s (%s): exit %d after %.1f s\n' % (
                    PROG, s.name, ' '.join(s.tests) or 'build', s.code, s.seconds))
                with contextlib.suppress(FileNotFoundError), open(os.path.join(s.dir, 'log'),
                                                                  errors='replace') as lf:
                    shutil.copyfileobj(lf, f)
            f.write('\n'.join(self.notes) + '\n')
        # A shard's console, shard after shard: its -o log, which holds
        # every line autopkgtest printed (the captured console can miss
        # autopkgtest's own lines, which its tee writes), else the console.
        for s in shards:
            log = os.path.join(s.dir, 'log')
            src = log if os.path.isfile(log) and os.path.getsize(log) else s.out
            with contextlib.suppress(FileNotFoundError), open(src, 'rb') as o:
                sys.stderr.flush()
                console_lines(o, sys.stderr.buffer)
                sys.stderr.buffer.flush()
        sys.stdout.write(summary)
        sys.stdout.flush()
        for dest in ('summary', 'logfile'):
            for path in removed.get(dest, []):
                shutil.copyfile(os.path.join(outdir, 'summary' if dest == 'summary' else 'log'), path)
        if out:
            try:
                path, _ = report.junit(outdir)
                self.log('JUnit XML: %s' % path)
                if self.own['step_summary']:
                    buf = io.StringIO()
                    with contextlib.redirect_stdout(buf):
                        report.summary(outdir, 'autopkgtest, %d shards' % len(
                            [s for s in shards if s.name != 'build']))
                    with open(self.own['step_summary'], 'a') as f:
                        f.write(buf.getvalue() + '\n')
            except OSError as e:
                self.log('cannot write the JUnit file or step summary: %s' % e)
        return code

    def merge_dirs(self, shards, outdir):
        """Each shard's per-test files into OUTDIR, as one autopkgtest run
        lays them out; the shards' own log and summary stay in shards/."""
        for s in shards:
            if not os.path.isdir(s.dir):
                continue
            for name in sorted(os.listdir(s.dir)):
                src = os.path.join(s.dir, name)
                if name in ('log', 'summary'):
                    continue
                if name in ('testpkg-version', 'testinfo.json'):
                    if not os.path.exists(os.path.join(outdir, name)):
                        shutil.copyfile(src, os.path.join(outdir, name))
                    continue
                move_into(src, os.path.join(outdir, name))


ELAPSED = re.compile(rb'^ *[0-9]+s ')


def console_lines(log, out):
    """LOG's lines as autopkgtest printed them: 6.x's log file puts the
    seconds since the start before each line ("  3s autopkgtest [...]"),
    its console does not, and CI logs group by the console's lines."""
    first = log.readline()
    strip = ELAPSED.match(first) and first.lstrip().split(b' ', 2)[1:2] == [b'autopkgtest']
    for line in itertools.chain([first], log):
        out.write(ELAPSED.sub(b'', line, count=1) if strip else line)


def source_index(at_args, source):
    """Where the source package is among AT_ARGS (its last mention)."""
    found = [k for k, a in enumerate(at_args) if a == source]
    # a .changes names the .dsc that autopkgtest tests
    found = found or [k for k, a in enumerate(at_args) if a.endswith('.changes')]
    if not found:
        raise Error('cannot find the source package %s among the arguments' % source)
    return found[-1]


def move_into(src, dest):
    """Move SRC to DEST; directories are merged, and a file of a later
    shard replaces one of an earlier (as a later test would, serially)."""
    if os.path.isdir(src) and not os.path.islink(src):
        os.makedirs(dest, exist_ok=True)
        for name in os.listdir(src):
            move_into(os.path.join(src, name), os.path.join(dest, name))
        os.rmdir(src)
    else:
        if os.path.isdir(dest) and not os.path.islink(dest):
            shutil.rmtree(dest)
        elif os.path.lexists(dest):
            # not os.replace alone: renaming one hard link of a file onto
            # another does nothing (the shards' binaries/ link the build's)
            os.unlink(dest)
        os.replace(src, dest)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    try:
        own, rest = parse_own(argv)
        if not rest:
            raise Error('no autopkgtest arguments; usage:\n' + USAGE)
        runner = Runner(own, rest)
        signal.signal(signal.SIGTERM, runner.stop)
        signal.signal(signal.SIGINT, runner.stop)
        return runner.main()
    except Error as e:
        print('%s: %s' % (PROG, e), file=sys.stderr)
        return e.code


if __name__ == '__main__':
    sys.exit(main())
