"""Unit tests of runner/rdocker_autopkgtest.py's pure parts: balancing,
the exit status and the summary merged from the shards', the runner's own
options and the arguments it takes from autopkgtest's.  The runs against
the real daemon and autopkgtest are ci/parallel-e2e.py.
Run: python3 -m unittest discover -s ci/tests
"""
import argparse
import os
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, '..', '..', 'runner'))
import rdocker_autopkgtest as r  # noqa: E402


def rows(text):
    """Summary rows as report.parse_summary gives them."""
    d = tempfile.mkdtemp()
    with open(os.path.join(d, 'summary'), 'w') as f:
        f.write(text)
    got = r.report.parse_summary(d)
    os.unlink(os.path.join(d, 'summary'))
    os.rmdir(d)
    return got


class Balance(unittest.TestCase):
    def test_round_robin_in_control_order_without_durations(self):
        units = [['a'], ['b'], ['c'], ['d'], ['e']]
        self.assertEqual(r.balance(units, {}, 2), [['a', 'c', 'e'], ['b', 'd']])

    def test_longest_first_into_the_least_loaded(self):
        d = {'a': 10, 'b': 60, 'c': 30, 'd': 25, 'e': 5}
        jobs = r.balance([[t] for t in 'abcde'], d, 2)
        loads = sorted(sum(d[t] for t in j) for j in jobs)
        # b, then c, d, a into the other, e back with b: 65 and 65
        self.assertEqual(loads, [65, 65])
        # each job keeps the control file's order
        self.assertEqual(sorted(jobs), [['a', 'c', 'd'], ['b', 'e']])

    def test_unknown_durations_count_as_the_mean_of_the_known(self):
        jobs = r.balance([['a'], ['b'], ['new']], {'a': 100, 'b': 10}, 2)
        self.assertEqual(sorted(jobs), [['a'], ['b', 'new']])

    def test_never_more_jobs_than_units_and_units_stay_whole(self):
        jobs = r.balance([['a'], ['b1', 'b2']], {}, 4)
        self.assertEqual(sorted(jobs), [['a'], ['b1', 'b2']])

    def test_queue_is_one_job_per_unit_longest_first(self):
        jobs = r.balance([['a'], ['b'], ['c']], {'a': 1, 'b': 9, 'c': 5}, 2, 'queue')
        self.assertEqual(jobs, [['b'], ['c'], ['a']])


class Status(unittest.TestCase):
    def status(self, text, codes=(), erroneous=False):
        return r.merge_status(rows(text)[0], list(codes), erroneous)

    def test_dbus_case_one_half_skips_the_other_passes(self):
        # serial exits 2; the half with the skip exits 2 or 8, the other 0
        self.assertEqual(self.status('a PASS\nb PASS\nc SKIP no network\n', [0, 8]), 2)

    def test_autopkgtest_man_page_statuses(self):
        self.assertEqual(self.status('a PASS\nb PASS\n'), 0)
        self.assertEqual(self.status('a PASS\nb FAIL non-zero exit status 1\n'), 4)
        self.assertEqual(self.status('a FAIL x\nb SKIP y\n'), 6)
        self.assertEqual(self.status('a PASS\nb FLAKY non-zero exit status 1\n'), 2)
        self.assertEqual(self.status('a SKIP y\n'), 8)
        self.assertEqual(self.status(''), 8)
        self.assertEqual(self.status('a FAIL badpkg\n'), 12)
        self.assertEqual(self.status('a FAIL badpkg\nb SKIP y\n'), 14)

    def test_superficial_passes_alone_are_no_tests(self):
        self.assertEqual(self.status('command1 PASS (superficial)\n'), 8)
        self.assertEqual(self.status('command1 PASS (superficial)\nb PASS\n'), 0)

    def test_a_fatal_shard_stands_for_the_run(self):
        self.assertEqual(self.status('a PASS\nb FAIL x\n', [0, 16]), 16)
        self.assertEqual(self.status('a PASS\n', [16, 20]), 20)

    def test_an_erroneous_package_line(self):
        self.assertEqual(self.status('a PASS\n', [], erroneous=True), 12)

    def test_results_5_28_fixture(self):
        fx = os.path.join(HERE, 'fixtures', 'results-5.28')
        self.assertEqual(r.merge_status(r.report.parse_summary(fx)[0], [6]), 6)


class Summary(unittest.TestCase):
    def test_control_order_and_other_lines_last(self):
        got, other = rows('b PASS\nblame: x\n'), ['retried']
        got2, _ = rows('a SKIP no\n')
        merged, lines = r.merge_summary(['a', 'b'], got2 + got[0], got[1] + other)
        self.assertEqual([m[0] for m in merged], ['a', 'b'])
        self.assertEqual(lines[0], 'a                    SKIP no')
        self.assertEqual(lines[1], 'b                    PASS')
        self.assertEqual(lines[2:], ['blame: x', 'retried'])
        # what the merged summary says, report.py reads back the same
        back = rows('\n'.join(lines) + '\n')[0]
        self.assertEqual(back, merged)


class Options(unittest.TestCase):
    def test_own_options_then_autopkgtest_args(self):
        own, rest = r.parse_own(['-j3', '--durations', 'old', '-H', 'tcp://a:1',
                                 '--context=b', '--split=queue', 'pkg', '-o', 'x', '--', 'rdocker', 'i'])
        self.assertEqual(own['jobs'], 3)
        self.assertEqual(own['durations'], 'old')
        self.assertEqual(own['split'], 'queue')
        self.assertEqual(own['daemons'], [['-H', 'tcp://a:1'], ['--context', 'b']])
        self.assertEqual(rest, ['pkg', '-o', 'x', '--', 'rdocker', 'i'])

    def test_bad_values_are_errors(self):
        for argv in (['-j', '0', 'p'], ['-j'], ['--split', 'halves', 'p']):
            with self.subTest(argv), self.assertRaises(r.Error):
                r.parse_own(argv)

    def test_strip_own(self):
        kept, removed = r.strip_own(['-B', 'p', '-o', 'out', '--test-name=a', '--test-name', 'b',
                                     '-lLOG', '--summary-file', 's', '--env=X=1'])
        self.assertEqual(kept, ['-B', 'p', '--env=X=1'])
        self.assertEqual(removed, {'output_dir': ['out'], 'only_tests': ['a', 'b'],
                                   'logfile': ['LOG'], 'summary': ['s']})

    def test_debs_go_beside_the_source(self):
        args = ['--env=A=a', 'x.deb', 'src/', '--shell-fail']
        i = r.source_index(args, 'src/')
        args[i:i] = ['b.deb']
        self.assertEqual(args, ['--env=A=a', 'x.deb', 'b.deb', 'src/', '--shell-fail'])
        with self.assertRaises(r.Error):
            r.source_index(['a'], 'src/')

    def test_control_without_builds_keeps_every_stanza(self):
        d = tempfile.mkdtemp()
        os.makedirs(os.path.join(d, 'debian', 'tests'))
        with open(os.path.join(d, 'debian', 'tests', 'control'), 'w') as f:
            f.write('# a comment\nTest-Command: make check\nRestrictions: build-needed,\n'
                    ' allow-stderr\n\nTests: a\nDepends: @\n\n'
                    'Test-Command: true\nRestrictions: superficial build-needed\n')
        opts = argparse.Namespace(override_control=None)
        copy = r.control_without_builds(d, opts, d)
        r.autopkgtest_lib()
        import testdesc
        records = list(testdesc.parse_rfc822(copy))
        self.assertEqual([x.get('Test-command', x.get('Tests')) for x in records],
                         ['make check', 'a', 'true'])
        self.assertEqual([x.get('Restrictions') for x in records],
                         ['allow-stderr', None, 'superficial'])
        # autopkgtest reads it: the same names, none build-needed
        tests = r.parse_tests(d, argparse.Namespace(override_control=copy))
        self.assertEqual([n for n, _ in tests], ['command1', 'a', 'command2'])
        self.assertFalse(any('build-needed' in rs for _, rs in tests))

    def test_needs_binaries_in_any_alternative(self):
        own = {'foo', 'libfoo1'}
        self.assertTrue(r.needs_binaries(['bar', 'libfoo1 (>= 1.2)'], own))
        self.assertTrue(r.needs_binaries(['bar | foo:any'], own))
        self.assertTrue(r.needs_binaries(['foo[amd64]'], own))
        self.assertFalse(r.needs_binaries(['foobar', 'python3-foo', 'bar (= 1) | baz'], own))
        self.assertFalse(r.needs_binaries([], own))
        # autopkgtest 6.x: each dependency as its list of alternatives
        self.assertTrue(r.needs_binaries([['bar'], ['baz', 'foo (>= 1)']], own))
        self.assertFalse(r.needs_binaries([['bar'], ['baz', 'foobar']], own))

    def test_tests_that_install_none_of_the_package_go_beside_the_build(self):
        d = tempfile.mkdtemp()
        os.makedirs(os.path.join(d, 'debian', 'tests'))
        with open(os.path.join(d, 'debian', 'control'), 'w') as f:
            f.write('Source: foo\n\nPackage: foo\nArchitecture: all\n\n'
                    'Package: foo-data\nArchitecture: all\n')
        with open(os.path.join(d, 'debian', 'tests', 'control'), 'w') as f:
            f.write('Tests: a\nDepends: @\n\nTests: b\nDepends:\n\n'
                    'Tests: c\nDepends: coreutils, foo-data\n\nTests: d\nDepends: coreutils\n')
        deps = {}
        r.parse_tests(d, argparse.Namespace(override_control=None), deps)
        own = r.binary_packages(d)
        self.assertEqual(own, {'foo', 'foo-data'})
        self.assertEqual([t for t in 'abcd' if not r.needs_binaries(deps[t], own)], ['b', 'd'])

    def test_control_without_builds_none_when_nothing_builds(self):
        d = tempfile.mkdtemp()
        os.makedirs(os.path.join(d, 'debian', 'tests'))
        with open(os.path.join(d, 'debian', 'tests', 'control'), 'w') as f:
            f.write('Tests: a\nRestrictions: needs-root\n')
        self.assertIsNone(r.control_without_builds(d, argparse.Namespace(override_control=None), d))

    def test_console_lines_drop_6x_log_seconds_only(self):
        import io
        for log, want in ((b'  0s autopkgtest [10:00:00]: starting\n 12s out\n',
                           b'autopkgtest [10:00:00]: starting\nout\n'),
                          (b'autopkgtest [10:00:00]: starting\n12s out\n',
                           b'autopkgtest [10:00:00]: starting\n12s out\n')):
            got = io.BytesIO()
            r.console_lines(io.BytesIO(log), got)
            self.assertEqual(got.getvalue(), want)

    def test_durations_from_a_log(self):
        fx = os.path.join(HERE, 'fixtures', 'hello-6.0')
        d = r.load_durations(fx, ['greets', 'as-root', 'build-and-artifacts', 'none'])
        self.assertEqual(set(d), {'greets', 'as-root', 'build-and-artifacts'})
        self.assertTrue(all(v >= 0 for v in d.values()))
        self.assertEqual(d, r.load_durations(os.path.join(fx, 'log'), list(d)))
        with self.assertRaises(r.Error):
            r.load_durations(tempfile.gettempdir() + '/no-such-run', ['a'])


class ManPage(unittest.TestCase):
    """man/rdocker-autopkgtest.1 against --help, as ci/check-manpage.sh
    checks rdocker's: every option has a .TP entry; man is silent."""
    PAGE = os.path.join(HERE, '..', '..', 'man', 'rdocker-autopkgtest.1')

    def test_every_option_of_help_has_an_entry(self):
        import re
        opts = set()
        for line in r.OPTIONS.splitlines():
            m = re.match(r'^  (-[^ ].*?)(?:  |$)', line)
            if m:
                opts |= set(re.findall(r'--?[a-z][a-z-]*', m.group(1)))
        self.assertGreaterEqual(len(opts), 8, opts)
        lines = open(self.PAGE).read().splitlines()
        tags = ' '.join(lines[i + 1] for i, l in enumerate(lines[:-1]) if l.startswith('.TP'))
        tags = re.sub(r'\\f[BIRP]', '', tags).replace('\\-', '-').replace('"', ' ')
        words = set(re.findall(r'--?[a-z][a-z-]*', tags))
        self.assertEqual(opts - words, set(), 'options of --help with no entry in the man page')

    def test_man_warns_nothing(self):
        import subprocess
        out = subprocess.run(['man', '--warnings', '-E', 'UTF-8', '-l', self.PAGE],
                             env=dict(os.environ, LC_ALL='C.UTF-8', MANWIDTH='80'),
                             capture_output=True, text=True)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(out.stderr, '')


if __name__ == '__main__':
    unittest.main()
