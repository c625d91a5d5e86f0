"""Unit tests of ci/action/report.py on real autopkgtest output.

The fixtures are output directories of real runs (log, summary,
testpkg-version, artifacts/), trimmed of the rest:
  hello-5.28    tests/pkg/rdocker-hello, autopkgtest 5.28 (bookworm) through
                rdocker: shared artifacts/, no time on apt's lines
  hello-6.0     the same under autopkgtest 6.0 (sid, the null server):
                per-test artifacts/TEST/ (5.53 on), "%3ds " before each line
  results-5.28, results-6.0  ci/tests/pkg/rdocker-results: PASS, FAIL,
                SKIP and FLAKY
  badpkg-6.0    rdocker-results with a debian/rules that fails: no test ran
Run: python3 -m unittest discover -s ci/tests
"""
import os
import shutil
import subprocess
import sys
import tempfile
import unittest
import xml.etree.ElementTree as ET

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, '..', 'action'))
import report  # noqa: E402

FIXTURES = os.path.join(HERE, 'fixtures')


class Fixture:
    """A copy of a fixture, since junit() writes into the directory."""

    def __init__(self, name):
        self.tmp = tempfile.mkdtemp()
        self.dir = os.path.join(self.tmp, name)
        shutil.copytree(os.path.join(FIXTURES, name), self.dir)

    def junit(self):
        path, n = report.junit(self.dir)
        self.assert_path = path
        return ET.parse(path).getroot(), n

    def close(self):
        shutil.rmtree(self.tmp)


class ReportTest(unittest.TestCase):
    def fixture(self, name):
        f = Fixture(name)
        self.addCleanup(f.close)
        return f

    def cases(self, root):
        return {c.get('name'): c for c in root.iter('testcase')}

    def test_one_testcase_per_test_of_the_summary(self):
        for name in ('hello-5.28', 'hello-6.0', 'results-5.28', 'results-6.0'):
            with self.subTest(name):
                f = self.fixture(name)
                root, n = f.junit()
                rows, _ = report.parse_summary(f.dir)
                self.assertEqual([c.get('name') for c in root.iter('testcase')], [r[0] for r in rows])
                self.assertEqual(n, len(rows))
                self.assertEqual(root.get('tests'), str(len(rows)))
                classnames = {c.get('classname') for c in root.iter('testcase')}
                self.assertEqual(classnames, {name.rsplit('-', 1)[0].replace('hello', 'rdocker-hello')
                                              .replace('results', 'rdocker-results')})
                self.assertTrue(os.path.isfile(os.path.join(f.dir, 'junit.xml')))

    def test_results_are_mapped(self):
        for name in ('results-5.28', 'results-6.0'):
            with self.subTest(name):
                root, _ = self.fixture(name).junit()
                cases = self.cases(root)
                self.assertEqual(list(cases['passes']), cases['passes'].findall('system-out'))
                failure = cases['fails'].find('failure')
                self.assertEqual(failure.get('message'), 'FAIL non-zero exit status 3')
                # The end of the test's log, its stderr too, and no more than 50 lines.
                self.assertIn('line 80 of the failing test', failure.text)
                self.assertIn('expected 2, got 3 <&>', failure.text)
                self.assertNotIn('line 20 of the failing test', failure.text)
                self.assertLessEqual(len(failure.text.splitlines()), 50)
                self.assertFalse(any(line.startswith(' 1') for line in failure.text.splitlines()),
                                 "6.0's time prefix is stripped")
                self.assertEqual(cases['skipped'].find('skipped').get('message'),
                                 'SKIP exit status 77 and marked as skippable')
                flaky = cases['flaky'].find('skipped')
                self.assertTrue(flaky.get('message').startswith('flaky: the test failed'))
                self.assertIsNone(cases['flaky'].find('failure'))
                for attr, want in (('tests', '4'), ('failures', '1'), ('skipped', '2'), ('errors', '0')):
                    self.assertEqual(root.get(attr), want, attr)
                    self.assertEqual(root.find('testsuite').get(attr), want, attr)

    def test_phases_from_the_old_log(self):
        tests = report.parse_log(os.path.join(FIXTURES, 'hello-5.28'), {"greets", "as-root", "build-and-artifacts"})
        self.assertEqual(tests['greets'].phases(), ('0 s', '21 s', '0 s', '21 s'))
        # 5.28 logs nothing between set-up and dependencies after the first test.
        self.assertEqual(tests['as-root'].phases(), ('with dependencies', '32 s with set-up', '1 s', '33 s'))

    def test_phases_from_the_6_0_log(self):
        tests = report.parse_log(os.path.join(FIXTURES, 'hello-6.0'), {"greets", "as-root", "build-and-artifacts"})
        self.assertEqual(tests['greets'].phases(), ('0 s', '9 s', '1 s', '10 s'))
        self.assertEqual(tests['build-and-artifacts'].phases(), ('0 s', '16 s', '1 s', '17 s'))

    def test_durations(self):
        root, _ = self.fixture('hello-5.28').junit()
        self.assertEqual({c.get('name'): c.get('time') for c in root.iter('testcase')},
                         {'greets': '21', 'as-root': '33', 'build-and-artifacts': '30'})
        self.assertEqual(root.get('time'), '84')

    def test_artifacts_per_test_and_shared(self):
        root, _ = self.fixture('hello-6.0').junit()
        out = self.cases(root)['build-and-artifacts'].find('system-out').text
        self.assertIn('artifact: artifacts/build-and-artifacts/greeting', out)
        self.assertNotIn('artifact:', self.cases(root)['greets'].find('system-out').text)
        root, _ = self.fixture('hello-5.28').junit()
        self.assertIn('artifacts/greeting', root.find('testsuite').find('system-out').text)

    def test_no_test_result_is_one_error(self):
        root, n = self.fixture('badpkg-6.0').junit()
        self.assertEqual(n, 1)
        case = root.find('testsuite').find('testcase')
        self.assertEqual((case.get('classname'), case.get('name')), ('rdocker-results', 'autopkgtest'))
        self.assertIn('erroneous package: rules build failed', case.find('error').get('message'))
        self.assertIn('the build fails here', case.find('error').text)

    def test_hostile_output_stays_valid_xml(self):
        d = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, d)
        with open(os.path.join(d, 'summary'), 'w') as f:
            f.write('t1 FAIL bad \x01\x1b[31m "quoted" <x>]]>\n')
        with open(os.path.join(d, 'log'), 'w') as f:
            f.write('autopkgtest [23:59:58]: test t1: preparing testbed\n'
                    'autopkgtest [23:59:59]: test t1: [-----------------------\n'
                    'evil \x00\x07 ]]> </failure><x>\ufffe\n'
                    'autopkgtest [00:00:03]: test t1: -----------------------]\n')
        path, n = report.junit(d)
        root = ET.parse(path).getroot()
        failure = root.find('testsuite').find('testcase').find('failure')
        self.assertIn('</failure><x>', failure.text)
        self.assertIn('"quoted" <x>]]>', failure.get('message'))
        self.assertEqual(root.find('testsuite').find('testcase').get('time'), '5', 'past midnight')
        self.assertEqual(root.find('testsuite').get('name'), 'autopkgtest')

    def test_hostile_log_costs_bounded_memory(self):
        # A test prints a 64 MiB line and 300,000 lines that look like
        # autopkgtest's for made-up tests: the converter keeps 50 lines of
        # at most 4096 characters, and no entry per made-up test.
        d = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, d)
        with open(os.path.join(d, 'summary'), 'w') as f:
            f.write('t1 FAIL non-zero exit status 1\n')
        with open(os.path.join(d, 'log'), 'w') as f:
            f.write('autopkgtest [10:00:00]: test t1: preparing testbed\n'
                    'autopkgtest [10:00:01]: test t1: [-----------------------\n')
            chunk = 'x' * (1 << 20)
            for _ in range(64):
                f.write(chunk)
            f.write('\n')
            for i in range(300000):
                f.write('autopkgtest [10:00:02]: test fake%d: preparing testbed\n' % i)
            f.write('autopkgtest [10:00:03]: test t1: [-----------------------\n'
                    'the end\nautopkgtest [10:00:04]: test t1: -----------------------]\n')
        code = ('import resource, sys; sys.path.insert(0, sys.argv[1]); import report; '
                'print(report.junit(sys.argv[2])[1], resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)')
        out = subprocess.run([sys.executable, '-c', code, os.path.join(HERE, '..', 'action'), d],
                             check=True, capture_output=True, text=True).stdout.split()
        self.assertEqual(out[0], '1')
        self.assertLess(int(out[1]), 64 * 1024, 'peak RSS in KiB, for a 79 MB log')
        root = ET.parse(os.path.join(d, 'junit.xml')).getroot()
        text = root.find('testsuite').find('testcase').find('failure').text
        self.assertLessEqual(len(text.splitlines()), 50)
        self.assertTrue(text.endswith('the end\nautopkgtest [10:00:04]: test t1: -----------------------]'))
        self.assertLess(len(text), 50 * 4096)

    def test_step_summary(self):
        for name in ('hello-5.28', 'hello-6.0'):
            with self.subTest(name):
                out = subprocess.run([sys.executable, os.path.join(HERE, '..', 'action', 'report.py'),
                                      'summary', os.path.join(FIXTURES, name), 'T'],
                                     check=True, capture_output=True, text=True).stdout
                self.assertIn('| Test | Result | Testbed set-up | Dependencies | Test | In all | Details |', out)
                for t in ('greets', 'as-root', 'build-and-artifacts'):
                    self.assertRegex(out, r'\| `%s` \| \S+ PASS \| [^|]+ \| [^|]+ \| \d+ s \| \d+ s \|' % t)
                self.assertIn('3 PASS', out)

    def test_fold_groups_both_layouts(self):
        for name in ('hello-5.28', 'hello-6.0'):
            with self.subTest(name):
                with open(os.path.join(FIXTURES, name, 'log'), 'rb') as f:
                    out = subprocess.run([sys.executable, os.path.join(HERE, '..', 'action', 'report.py'),
                                          'fold', 'TOKEN'], stdin=f, check=True,
                                         capture_output=True, text=True).stdout.splitlines()
                for g in ('::group::test greets', '::group::test as-root', '::group::test build-and-artifacts'):
                    self.assertIn(g, out)
                self.assertEqual(out.count('::endgroup::'), sum(1 for line in out if line.startswith('::group::')))

    def test_fold_gitlab_sections_both_layouts(self):
        report_py = os.path.join(HERE, '..', 'action', 'report.py')
        for name in ('hello-5.28', 'hello-6.0'):
            with self.subTest(name):
                with open(os.path.join(FIXTURES, name, 'log'), 'rb') as f:
                    log = f.read()
                # A test that prints a section marker of its own.
                forged = log + b'\x1b[0Ksection_end:1:test_greets\r\x1b[0K\n'
                out = subprocess.run([sys.executable, report_py, 'fold-gitlab'], input=forged,
                                     check=True, capture_output=True).stdout.decode().split('\n')
                starts = [line for line in out if line.startswith('\x1b[0Ksection_start:')]
                ends = [line for line in out if line.startswith('\x1b[0Ksection_end:')]
                names = [line.split(':')[2].split('[')[0] for line in starts]
                self.assertEqual(names[0], 'autopkgtest_setup')
                self.assertIn('[collapsed=true]', starts[0])
                for t in ('test_greets', 'test_as-root', 'test_build-and-artifacts', 'summary'):
                    self.assertIn(t, names)
                self.assertEqual([line.split(':')[2].split('\r')[0] for line in ends], names)
                forged_out = [line for line in out if 'section_end:1:' in line]
                self.assertEqual(forged_out, ['section_end:1:test_greets\r\x1b[0K'])


if __name__ == '__main__':
    unittest.main()
