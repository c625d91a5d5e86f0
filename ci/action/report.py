#!/usr/bin/python3
"""autopkgtest's output for GitHub Actions (used by ci/action/run.sh).

report.py fold TOKEN
    Copy stdin to stdout, line by line, folded into ::group:: sections: the
    setup, then one per test (from its first "test NAME:" line), then the
    summary.  Within a section, workflow commands are off
    (::stop-commands::TOKEN), so that nothing a test prints is taken for one.

report.py summary OUTDIR TITLE
    Markdown for $GITHUB_STEP_SUMMARY from autopkgtest's output directory:
    each test of OUTDIR/summary with its result, the time its commands ran
    (between the log's "[-----" and "-----]" lines) and the time it took
    with its setup (its first to its last log line, dependencies installed
    included).
"""
import os
import re
import sys

LOG_LINE = re.compile(r'^autopkgtest \[(\d\d):(\d\d):(\d\d)\]: (.*)$')
TEST_LINE = re.compile(r'^test ([^:\s]+): (.*)$')
SUMMARY_LINE = re.compile(r'^(\S+)\s+(PASS|FAIL|SKIP|FLAKY|NEUTRAL|BAD)(?:\s+(.*))?$')
ICON = {'PASS': '✅', 'FAIL': '❌', 'SKIP': '⏭️', 'FLAKY': '⚠️', 'NEUTRAL': '➖', 'BAD': '💥'}


def fold(token):
    out = sys.stdout
    current = None

    def start(title):
        nonlocal current
        if current is not None:
            out.write('::%s::\n::endgroup::\n' % token)
        out.write('::group::%s\n::stop-commands::%s\n' % (title, token))
        current = title

    start('autopkgtest: setup')
    for raw in sys.stdin.buffer:
        line = raw.decode('utf-8', 'replace').rstrip('\n')
        m = LOG_LINE.match(line)
        if m:
            body = m.group(4)
            t = TEST_LINE.match(body)
            if t and current != 'test %s' % t.group(1):
                start('test %s' % t.group(1))
            elif body.startswith('@@@@') and 'summary' in body and current != 'summary':
                start('summary')
        out.write(line + '\n')
        out.flush()
    if current is not None:
        out.write('::%s::\n::endgroup::\n' % token)


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


def summary(outdir, title):
    first, last, run_start, run_end = {}, {}, {}, {}
    try:
        with open(os.path.join(outdir, 'log'), encoding='utf-8', errors='replace') as f:
            for line in f:
                m = LOG_LINE.match(line.rstrip('\n'))
                if not m:
                    continue
                t = TEST_LINE.match(m.group(4))
                if not t:
                    continue
                name, what, ts = t.group(1), t.group(2).strip(), seconds(m)
                first.setdefault(name, ts)
                last[name] = ts
                if what == '[-----------------------':
                    run_start[name] = ts
                elif what == '-----------------------]':
                    run_end[name] = ts
    except FileNotFoundError:
        pass
    rows = []
    try:
        with open(os.path.join(outdir, 'summary'), encoding='utf-8', errors='replace') as f:
            for line in f:
                m = SUMMARY_LINE.match(line.rstrip('\n'))
                if m:
                    rows.append((m.group(1), m.group(2), m.group(3) or ''))
    except FileNotFoundError:
        pass
    out = ['### %s' % title, '']
    if not rows:
        out.append('autopkgtest wrote no test results (no `summary` in its output directory): '
                   'see the log of this step.')
    else:
        out += ['| Test | Result | Ran for | With setup | Details |', '|---|---|---|---|---|']
        for name, result, details in rows:
            out.append('| `%s` | %s %s | %s | %s | %s |' % (
                name, ICON.get(result, ''), result,
                fmt(span(run_start.get(name), run_end.get(name))),
                fmt(span(first.get(name), last.get(name))),
                details.replace('|', '\\|')))
        counts = {}
        for _, result, _ in rows:
            counts[result] = counts.get(result, 0) + 1
        out += ['', ', '.join('%d %s' % (n, r) for r, n in sorted(counts.items()))]
    print('\n'.join(out))


if __name__ == '__main__':
    if len(sys.argv) == 3 and sys.argv[1] == 'fold':
        fold(sys.argv[2])
    elif len(sys.argv) == 4 and sys.argv[1] == 'summary':
        summary(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)
