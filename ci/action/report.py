"""autopkgtest's output for CI systems: GitHub Actions, GitLab, Jenkins.

ci/action/run.sh (the GitHub Action) runs it from the action's checkout;
the rdocker package installs it as /usr/share/rdocker/autopkgtest_report.py
for any CI job:  python3 /usr/share/rdocker/autopkgtest_report.py junit OUTDIR

report.py fold TOKEN
    Copy stdin to stdout, line by line, folded into ::group:: sections: the
    setup, then one per test (from its first "test NAME:" line), then the
    summary.  Within a section, workflow commands are off
    (::stop-commands::TOKEN), so that nothing a test prints is taken for one.

report.py fold-gitlab
    The same for GitLab CI: the setup, each test and the summary as
    collapsible sections of the job log (section_start/section_end), the
    setup collapsed.  A line that a test prints cannot open or close one:
    the escape before "section_" is taken out of every line but ours.

report.py summary OUTDIR TITLE
    Markdown for $GITHUB_STEP_SUMMARY from autopkgtest's output directory:
    each test of OUTDIR/summary with its result and its phases, read from
    OUTDIR/log: the testbed's set-up ("test T: preparing testbed" to the
    next line of autopkgtest's own, "testbed dpkg architecture" or the
    like), its dependencies (from there to the "[-----" line that starts
    the test), the test itself (to its "-----]" line), and all of it.

report.py junit OUTDIR
    Write OUTDIR/junit.xml (JUnit XML, as GitLab, Jenkins and others read
    it) beside autopkgtest's summary: one testcase per test of the summary,
    classname the source package, time all its phases.  PASS passes; FAIL
    is a <failure> holding the last 50 lines of the test's log; SKIP and
    NEUTRAL are <skipped>; FLAKY (the test failed, but it is marked flaky,
    so the run passes) is <skipped> with a message that says it failed, so
    that it neither fails the report nor looks like a pass; any other
    result is an <error>.  A run that stopped before any test result
    (erroneous package, testbed failure) gives one testcase "autopkgtest"
    with an <error> and the log's end.  Per-test artifacts (autopkgtest
    5.53 and later: artifacts/TEST/) are listed in their testcase's
    system-out; the older, shared artifacts/ in the testsuite's.

The log holds what the tests print, so they may be hostile: the log is read
in lines of at most MAX_LINE characters, only the last TAIL_LINES of each
test are kept, and only tests that autopkgtest's summary names are tracked.
"""
import collections
import os
import re
import sys
import time
import xml.etree.ElementTree as ET

# autopkgtest's own lines; 6.0 puts the seconds since its start before
# every line of its log ("%3ds ").
LOG_LINE = re.compile(r'^(?:\s*\d+s )?autopkgtest \[(\d\d):(\d\d):(\d\d)\]: (.*)$')
ELAPSED = re.compile(r'^\s*(\d+)s ')
TEST_LINE = re.compile(r'^test ([^:\s]+): (.*)$')
SUMMARY_LINE = re.compile(r'^(\S+)\s+(PASS|FAIL|SKIP|FLAKY|NEUTRAL|BAD)(?:\s+(.*))?$')
ICON = {'PASS': '✅', 'FAIL': '❌', 'SKIP': '⏭️', 'FLAKY': '⚠️', 'NEUTRAL': '➖', 'BAD': '💥'}
PHASE_START = '[-----------------------'
PHASE_END = '-----------------------]'
TAIL_LINES = 50
# A test writes what it likes to the log: memory stays bounded by reading
# lines of at most this many characters (the rest of a longer one comes as
# lines of its own) and keeping only each test's last TAIL_LINES lines.
MAX_LINE = 4096
# Characters XML 1.0 cannot hold, even escaped.
NOT_XML = re.compile('[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]')


def fold(token):
    def open_group(title, _first):
        return '::group::%s\n::stop-commands::%s\n' % (title, token)

    def close_group(_title):
        return '::%s::\n::endgroup::\n' % token

    _fold(open_group, close_group, lambda line: line)


GITLAB_MARK = '\x1b[0Ksection_'


def fold_gitlab():
    def name(title):
        return re.sub(r'[^A-Za-z0-9_.-]+', '_', title)[:64]

    def open_section(title, first):
        return '%s%s:%d:%s[collapsed=%s]\r\x1b[0K%s\n' % (
            GITLAB_MARK, 'start', int(time.time()), name(title), 'true' if first else 'false', title)

    def close_section(title):
        return '%s%s:%d:%s\r\x1b[0K\n' % (GITLAB_MARK, 'end', int(time.time()), name(title))

    _fold(open_section, close_section, lambda line: line.replace(GITLAB_MARK, 'section_'))


def _fold(open_group, close_group, neutral):
    """stdin to stdout, line by line, in groups: open_group(title, first)
    and close_group(title) give the markers, neutral(line) takes the
    markers' power from a line of the log."""
    out = sys.stdout
    current = None

    def start(title):
        nonlocal current
        if current is not None:
            out.write(close_group(current))
        out.write(open_group(title, current is None))
        current = title

    start('autopkgtest: setup')
    for raw in iter(lambda: sys.stdin.buffer.readline(MAX_LINE * 4), b''):
        line = raw.decode('utf-8', 'replace').rstrip('\n')
        m = LOG_LINE.match(line)
        if m:
            body = m.group(4)
            t = TEST_LINE.match(body)
            if t and current != 'test %s' % t.group(1):
                start('test %s' % t.group(1))
            elif body.startswith('@@@@') and 'summary' in body and current != 'summary':
                start('summary')
        out.write(neutral(line) + '\n')
        out.flush()
    if current is not None:
        out.write(close_group(current))


def seconds(m):
    return int(m.group(1)) * 3600 + int(m.group(2)) * 60 + int(m.group(3))


def span(a, b):
    if a is None or b is None:
        return None
    d = b - a
    return d + 86400 if d < 0 else d   # past midnight


def fmt(d):
    if d is None:
        return '–'
    return '%d s' % d if d < 60 else '%d min %02d s' % (d // 60, d % 60)


class Test:
    """One test's stretch of autopkgtest's log."""

    def __init__(self, name):
        self.name = name
        self.first = self.last = None
        self.prepare = self.setup_end = self.start = self.end = None
        # Its last log lines: from its first line, then from its "[-----".
        self.lines = collections.deque(maxlen=TAIL_LINES)

    def phases(self):
        """Texts of its set-up, dependencies, test, and all of it."""
        setup = deps = '–'
        if self.prepare is not None:
            if self.setup_end is not None:
                setup = fmt(span(self.prepare, self.setup_end))
                deps = fmt(span(self.setup_end, self.start))
            elif self.start is not None:
                # 5.28 logs nothing between them after the first test.
                setup = 'with dependencies'
                deps = fmt(span(self.prepare, self.start)) + ' with set-up'
        return setup, deps, fmt(span(self.start, self.end)), fmt(self.seconds())

    def seconds(self):
        return span(self.first, self.last)

    def tail(self):
        """The end of its log, from its "[-----" line on when it has one."""
        return [ELAPSED.sub('', line, count=1) for line in self.lines]


def read_lines(path):
    """Its lines, each cut to MAX_LINE characters; none if it is missing."""
    try:
        with open(path, encoding='utf-8', errors='replace') as f:
            for line in iter(lambda: f.readline(MAX_LINE), ''):
                yield line.rstrip('\n')
    except FileNotFoundError:
        return


def parse_log(outdir, names):
    """{test name: Test} from OUTDIR/log, for the tests named in NAMES.

    A test can print lines that look like autopkgtest's: those of names
    not in NAMES (autopkgtest's summary) are ignored, so that the tests it
    can make up cost nothing."""
    tests, current, t0 = {}, None, None
    for line in read_lines(os.path.join(outdir, 'log')):
        m = LOG_LINE.match(line)
        e = ELAPSED.match(line)
        if m:
            ts = seconds(m)
            if e:
                # Every such line sets it again: rdocker-autopkgtest's
                # merged log is several logs, each counting from its start.
                t0 = ts - int(e.group(1))
        elif e and t0 is not None:
            ts = (t0 + int(e.group(1))) % 86400   # 6.0: every line has its time
        else:
            ts = None
        t = TEST_LINE.match(m.group(4)) if m else None
        if t and t.group(1) not in names:
            current = None
        elif t:
            current = tests.setdefault(t.group(1), Test(t.group(1)))
            what = t.group(2).strip()
            if current.first is None:
                current.first = ts
            if what == 'preparing testbed':
                current.prepare = ts
            elif what == PHASE_START:
                current.start = ts
                current.lines.clear()
            elif what == PHASE_END:
                current.end = ts
        elif m and m.group(4).startswith('@@@@'):
            current = None   # the summary, or the next package
        elif (current is not None and ts is not None and current.prepare is not None
              and current.setup_end is None and current.start is None):
            # The first line with a time after "preparing testbed", of
            # autopkgtest (5.28: "testbed dpkg architecture") or of apt
            # (6.0): the testbed is ready, its dependencies come next.
            current.setup_end = ts
        if current is not None:
            if ts is not None:
                current.last = ts
            current.lines.append(line)
    return tests


def parse_summary(outdir):
    """[(name, result, details)] of OUTDIR/summary, and its other lines."""
    rows, other = [], []
    for line in read_lines(os.path.join(outdir, 'summary')):
        m = SUMMARY_LINE.match(line)
        if m:
            rows.append((m.group(1), m.group(2), m.group(3) or ''))
        elif line.strip() and len(other) < 20:
            other.append(line.strip())
    return rows, other


def source_package(outdir):
    """The tested source package: testpkg-version, else the log."""
    for line in read_lines(os.path.join(outdir, 'testpkg-version')):
        if line.split():
            return line.split()[0]
    for line in read_lines(os.path.join(outdir, 'log')):
        m = re.search(r'testing package (\S+) version ', line)
        if m:
            return m.group(1)
    return 'autopkgtest'


def summary(outdir, title):
    rows, other = parse_summary(outdir)
    tests = parse_log(outdir, {r[0] for r in rows})
    out = ['### %s' % title, '']
    if not rows:
        out.append('autopkgtest wrote no test results (no test in `summary` in its output directory): '
                   'see the log of this step.')
        if other:
            out += ['', '```'] + other[:20] + ['```']
    else:
        out += ['| Test | Result | Testbed set-up | Dependencies | Test | In all | Details |',
                '|---|---|---|---|---|---|---|']
        for name, result, details in rows:
            setup, deps, run, total = tests[name].phases() if name in tests else ('–',) * 4
            out.append('| `%s` | %s %s | %s | %s | %s | %s | %s |' % (
                name, ICON.get(result, ''), result, setup, deps, run, total,
                details.replace('|', '\\|')))
        counts = {}
        for _, result, _ in rows:
            counts[result] = counts.get(result, 0) + 1
        out += ['', ', '.join('%d %s' % (n, r) for r, n in sorted(counts.items()))]
    print('\n'.join(out))


def clean(text):
    return NOT_XML.sub('', text)


def artifacts_of(outdir, name=None):
    """Files under artifacts/ (artifacts/NAME/ for one test), relative to OUTDIR."""
    top = os.path.join(outdir, 'artifacts', *([name] if name else []))
    found = []
    for root, dirs, files in os.walk(top):
        dirs.sort()
        found += [os.path.relpath(os.path.join(root, f), outdir) for f in sorted(files)]
    return found


def junit(outdir):
    """Write OUTDIR/junit.xml; return its path and its number of testcases."""
    rows, other = parse_summary(outdir)
    tests = parse_log(outdir, {r[0] for r in rows})
    src = source_package(outdir)
    # 5.53 and later: artifacts/TEST/ for each test that left any.
    per_test = any(os.path.isdir(os.path.join(outdir, 'artifacts', n)) for n, _, _ in rows)
    suite = ET.Element('testsuite', name=src)
    counts = {'tests': 0, 'failures': 0, 'errors': 0, 'skipped': 0}
    total_time = 0
    for name, result, details in rows:
        t = tests.get(name)
        setup, deps, run, total = t.phases() if t else ('–',) * 4
        took = (t.seconds() if t else None) or 0
        case = ET.SubElement(suite, 'testcase', classname=src, name=name, time=str(took))
        total_time += took
        counts['tests'] += 1
        message = clean(('%s %s' % (result, details)).strip())
        tail = clean('\n'.join(t.tail())) if t else ''
        if result == 'FAIL':
            counts['failures'] += 1
            ET.SubElement(case, 'failure', message=message, type='FAIL').text = tail
        elif result == 'FLAKY':
            counts['skipped'] += 1
            ET.SubElement(case, 'skipped', message='flaky: the test failed, but it is marked flaky, '
                          'so the run passes (%s)' % message)
        elif result in ('SKIP', 'NEUTRAL'):
            counts['skipped'] += 1
            ET.SubElement(case, 'skipped', message=message)
        elif result != 'PASS':
            counts['errors'] += 1
            ET.SubElement(case, 'error', message=message, type=result).text = tail
        out = ['autopkgtest: %s; testbed set-up %s, dependencies %s, test %s, in all %s' % (
            message, setup, deps, run, total)]
        if per_test:
            out += ['artifact: %s' % a for a in artifacts_of(outdir, name)]
        ET.SubElement(case, 'system-out').text = clean('\n'.join(out))
    if not rows:
        # The run stopped before any test result: one error says so.
        counts['tests'] += 1
        counts['errors'] += 1
        case = ET.SubElement(suite, 'testcase', classname=src, name='autopkgtest', time='0')
        lines = collections.deque(read_lines(os.path.join(outdir, 'log')), maxlen=TAIL_LINES)
        ET.SubElement(case, 'error', type='autopkgtest', message=clean(
            '; '.join(other) or 'autopkgtest wrote no test results')).text = clean('\n'.join(lines))
    if not per_test:
        shared = artifacts_of(outdir)
        if shared:
            ET.SubElement(suite, 'system-out').text = clean(
                '\n'.join(['artifacts (of all tests):'] + shared))
    attrs = dict((k, str(v)) for k, v in counts.items())
    attrs['time'] = str(total_time)
    suite.attrib.update(attrs)
    root = ET.Element('testsuites', name='autopkgtest', **attrs)
    root.append(suite)
    if hasattr(ET, 'indent'):   # Python 3.9 and later
        ET.indent(root)
    path = os.path.join(outdir, 'junit.xml')
    ET.ElementTree(root).write(path, encoding='utf-8', xml_declaration=True)
    return path, counts['tests']


if __name__ == '__main__':
    if len(sys.argv) == 3 and sys.argv[1] == 'fold':
        fold(sys.argv[2])
    elif len(sys.argv) == 2 and sys.argv[1] == 'fold-gitlab':
        fold_gitlab()
    elif len(sys.argv) == 4 and sys.argv[1] == 'summary':
        summary(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 3 and sys.argv[1] == 'junit':
        print('%s: %d testcase(s)' % junit(sys.argv[2]))
    else:
        sys.exit(__doc__)
