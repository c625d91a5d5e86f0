#!/usr/bin/python3
"""Run autopkgtest's own upstream tests against a virt server.

The tests are those of upstream's DockerRunner (DebTestsVirtContainer and
DebTestsCannotReboot), taken unchanged from `apt-get source autopkgtest`.
Only the runner class is ours, so that the same tests run with
autopkgtest-virt-rdocker or, for comparison, autopkgtest-virt-docker.

With --system, the tests are those of upstream's LxdRunner instead
(DebTestsCanReboot, which includes DebTestsVirtSystemContainer and so
test_logind, and everything DebTestsVirtContainer has), run against
`SERVER [--podman] --init IMAGE [RUN_OPTIONS...]`: a booted system that
can reboot. --podman asks rdocker for Podman; --run-options='...' are the
docker run options after IMAGE (split on blanks).

usage: conformance.py [--system [--podman] [--run-options=OPTS]]
           AUTOPKGTEST_SOURCE_DIR IMAGE {rdocker|docker} [TEST_NAME...]

With CONFORMANCE_EXPECTED_FAILURES=FILE (one test name per line, `#`
comments), the run succeeds when every failure is listed there: those are
tests that fail with either server because this machine cannot reach some
resource (the file and docs/design.md#conformance say which and why).
"""
import os
import sys
import unittest
from importlib.machinery import SourceFileLoader

args = sys.argv[1:]
system = podman = False
run_options = []
while args and args[0].startswith('--'):
    opt = args.pop(0)
    if opt == '--system':
        system = True
    elif opt == '--podman':
        podman = True
    elif opt.startswith('--run-options='):
        run_options = opt.split('=', 1)[1].split()
    else:
        sys.exit('conformance.py: unknown option ' + opt)
src, image, server = args[0], args[1], args[2]
names = args[3:]
if system:
    virt_args = [server] + (['--podman'] if podman else []) + ['--init', image] + run_options
else:
    virt_args = [server, image]
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
        super().__init__(virt_args, *args, **kwargs)

    # Upstream decides these from the runner's name; rdocker is a Docker
    # runner, so it gets exactly what upstream gives `docker`.
    @property
    def has_isolation_container(self):
        return False

    @property
    def has_normal_user(self):
        return True


# LxdRunner's classes, in its order: a full system that can reboot.
class SystemConformanceRunner(upstream.AdtTestCase, upstream.DebTestsCanReboot,
                              upstream.DebTestsVirtSystemContainer):
    def __init__(self, *args, **kwargs):
        super().__init__(virt_args, *args, **kwargs)

    # A booted init: what upstream gives `podman --init`.
    @property
    def has_isolation_container(self):
        return True

    @property
    def has_normal_user(self):
        return True


if __name__ == '__main__':
    suite = unittest.TestLoader().loadTestsFromTestCase(
        SystemConformanceRunner if system else ConformanceRunner)
    if names:
        suite = unittest.TestSuite(t for t in suite if t.id().split('.')[-1] in names)
    result = unittest.TextTestRunner(stream=sys.stdout, verbosity=2).run(suite)
    failed = sorted(t.id().split('.')[-1] for t, _ in result.failures + result.errors)
    print('conformance: %s: %d passed, %d failed: %s' % (
        ' '.join(virt_args),
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
