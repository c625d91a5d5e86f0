#!/usr/bin/python3
"""Run autopkgtest's own upstream tests against a virt server.

The tests are those of upstream's DockerRunner (DebTestsVirtContainer and
DebTestsCannotReboot), taken unchanged from `apt-get source autopkgtest`.
Only the runner class is ours, so that the same tests run with
autopkgtest-virt-rdocker or, for comparison, autopkgtest-virt-docker.

usage: conformance.py AUTOPKGTEST_SOURCE_DIR IMAGE {rdocker|docker} [TEST_NAME...]

With CONFORMANCE_EXPECTED_FAILURES=FILE (one test name per line, `#`
comments), the run succeeds when every failure is listed there: those are
tests that fail with either server because this machine cannot reach some
resource (the file and docs/design.md#conformance say which and why).
"""
import os
import sys
import unittest
from importlib.machinery import SourceFileLoader

src, image, server = sys.argv[1], sys.argv[2], sys.argv[3]
# Resolved before the chdir below, which relative paths would not survive.
expected_file = os.environ.get('CONFORMANCE_EXPECTED_FAILURES')
if expected_file:
    expected_file = os.path.abspath(expected_file)
tests_dir = os.path.join(os.path.abspath(src), 'tests')
sys.path.insert(0, tests_dir)
os.chdir(tests_dir)
upstream = SourceFileLoader('upstream_autopkgtest_tests',
                            os.path.join(tests_dir, 'autopkgtest')).load_module()


class ConformanceRunner(upstream.AdtTestCase, upstream.DebTestsVirtContainer,
                        upstream.DebTestsCannotReboot):
    def __init__(self, *args, **kwargs):
        super().__init__([server, image], *args, **kwargs)

    # Upstream decides these from the runner's name; rdocker is a Docker
    # runner, so it gets exactly what upstream gives `docker`.
    @property
    def has_isolation_container(self):
        return False

    @property
    def has_normal_user(self):
        return True


if __name__ == '__main__':
    suite = unittest.TestLoader().loadTestsFromTestCase(ConformanceRunner)
    names = sys.argv[4:]
    if names:
        suite = unittest.TestSuite(t for t in suite if t.id().split('.')[-1] in names)
    result = unittest.TextTestRunner(stream=sys.stdout, verbosity=2).run(suite)
    failed = sorted(t.id().split('.')[-1] for t, _ in result.failures + result.errors)
    print('conformance: %s: %d passed, %d failed: %s' % (
        server,
        result.testsRun - len(failed) - len(result.skipped),
        len(failed), ' '.join(failed) or '-'))
    if not expected_file:
        sys.exit(0 if result.wasSuccessful() else 1)
    with open(expected_file) as f:
        expected = {l.split('#')[0].strip() for l in f} - {''}
    unexpected = [t for t in failed if t not in expected]
    if unexpected:
        print('conformance: UNEXPECTED failures: ' + ' '.join(unexpected))
        sys.exit(1)
    print('conformance: every failure is a known one (%s)' % expected_file)
