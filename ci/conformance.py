#!/usr/bin/python3
"""Run autopkgtest's own upstream tests against a virt server.

The tests are those of upstream's DockerRunner (DebTestsVirtContainer and
DebTestsCannotReboot), taken unchanged from `apt-get source autopkgtest`.
Only the runner class is ours, so that the same tests run with
autopkgtest-virt-rdocker or, for comparison, autopkgtest-virt-docker.

usage: conformance.py AUTOPKGTEST_SOURCE_DIR IMAGE {rdocker|docker} [unittest args...]
"""
import os
import sys
import unittest
from importlib.machinery import SourceFileLoader

src, image, server = sys.argv[1], sys.argv[2], sys.argv[3]
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
    print('conformance: %d passed, %d failed' % (
        result.testsRun - len(result.failures) - len(result.errors) - len(result.skipped),
        len(result.failures) + len(result.errors)))
    sys.exit(0 if result.wasSuccessful() else 1)
