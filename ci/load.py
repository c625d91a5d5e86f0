#!/usr/bin/python3
"""Load and endurance checks for rdocker against the real daemon.

  load.py parallel [N]   N autopkgtest runs at once, each with its own
                         rdocker: all must pass, none may see another's
                         files, and no container may be left.
  load.py cycles [N]     N open/exec/revert cycles in one session: prints
                         rdocker's resident memory and open descriptors
                         along the way, and fails if either grows.

Uses autopkgtest-virt-rdocker from PATH and RDOCKER_TEST_IMAGE.
"""
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse

IMAGE = os.environ.get('RDOCKER_TEST_IMAGE', 'rdocker-test/autopkgtest:bookworm')
SERVER = shutil.which('autopkgtest-virt-rdocker')


def leftover_containers(pid=None):
    filters = ['--filter', 'label=org.debian.autopkgtest.rdocker=1',
               '--filter', 'label=org.debian.autopkgtest.rdocker.owner-host=' + socket.gethostname()]
    if pid:
        filters += ['--filter', 'label=org.debian.autopkgtest.rdocker.owner-pid=%d' % pid]
    return subprocess.run(['docker', 'ps', '-aq'] + filters,
                          capture_output=True, text=True, check=True).stdout.split()


def make_package(root, n):
    """A source tree (not built: its test needs no binaries) whose one
    test marks the testbed and checks that no other run's mark is there,
    while the others run too."""
    os.makedirs(os.path.join(root, 'debian', 'tests'))
    w = lambda p, s: open(os.path.join(root, p), 'w').write(s)
    w('debian/control', 'Source: rdocker-iso%d\nMaintainer: x <x@example.org>\n\n'
      'Package: rdocker-iso%d\nArchitecture: all\nDescription: x\n x\n' % (n, n))
    w('debian/changelog', 'rdocker-iso%d (1) unstable; urgency=low\n\n  * x\n\n'
      ' -- x <x@example.org>  Mon, 23 Nov 2026 12:00:00 +0000\n' % n)
    w('debian/tests/control', 'Tests: iso\nDepends:\nRestrictions: needs-root\n')
    w('debian/tests/iso',
      '#!/bin/sh\nset -e\necho %d > /rdocker-iso-mark-%d\necho %d > "$AUTOPKGTEST_TMP/../mark"\n'
      'sleep 8\nls / | grep rdocker-iso-mark\n'
      '[ "$(ls / | grep -c rdocker-iso-mark)" = 1 ]\n' % (n, n, n))
    os.chmod(os.path.join(root, 'debian/tests/iso'), 0o755)


def parallel(n):
    before = set(leftover_containers())
    tmp = tempfile.mkdtemp(prefix='rdocker-load-')
    procs = []
    t0 = time.time()
    for i in range(n):
        src = os.path.join(tmp, 'src%d' % i)
        make_package(src, i)
        log = open(os.path.join(tmp, 'log%d' % i), 'w')
        procs.append(subprocess.Popen(
            ['autopkgtest', '--no-built-binaries', src + '/', '-o', os.path.join(tmp, 'out%d' % i), '--', 'rdocker', IMAGE],
            stdout=log, stderr=subprocess.STDOUT))
    codes = [p.wait() for p in procs]
    took = time.time() - t0
    failed = [i for i, c in enumerate(codes) if c != 0]
    for i in failed:
        print('load: run %d exited %d; log:' % (i, codes[i]))
        print(open(os.path.join(tmp, 'log%d' % i)).read()[-3000:])
    left = set(leftover_containers()) - before
    print('load: %d parallel autopkgtest runs: %d passed, %d failed, in %.1f s; containers left: %d'
          % (n, n - len(failed), len(failed), took, len(left)))
    shutil.rmtree(tmp)
    return 0 if not failed and not left else 1


class Session:
    def __init__(self):
        self.p = subprocess.Popen([SERVER, IMAGE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  text=True, bufsize=1)
        assert self.read() == 'ok'

    def read(self):
        return self.p.stdout.readline().rstrip('\n')

    def cmd(self, line):
        self.p.stdin.write(line + '\n')
        self.p.stdin.flush()
        r = self.read()
        if not r.startswith('ok'):
            raise SystemExit('load: %r answered %r' % (line, r))
        return r[3:]

    def usage(self):
        rss = [l for l in open('/proc/%d/status' % self.p.pid) if l.startswith('VmRSS')][0].split()[1]
        return int(rss), len(os.listdir('/proc/%d/fd' % self.p.pid))


def cycles(n):
    s = Session()
    s.cmd('open')
    samples = []
    t0 = time.time()
    for i in range(1, n + 1):
        argv = [urllib.parse.unquote(w) for w in s.cmd('print-execute-command').split(',')]
        r = subprocess.run(argv + ['sh', '-c', 'echo %d' % i], capture_output=True, text=True)
        if r.returncode != 0 or r.stdout != '%d\n' % i:
            raise SystemExit('load: exec %d gave %d %r %r' % (i, r.returncode, r.stdout, r.stderr))
        s.cmd('revert')
        if i % max(1, n // 10) == 0 or i == 10 or i == n:
            rss, fds = s.usage()
            samples.append((i, rss, fds))
            print('load: cycle %5d: rss %6d KiB, fds %3d, %.2f s/cycle'
                  % (i, rss, fds, (time.time() - t0) / i), flush=True)
    s.cmd('close')
    s.p.stdin.write('quit\n')
    s.p.stdin.close()
    s.p.wait(timeout=60)
    # Flat: after warm-up (cycle 10), memory may not grow by more than 25 %
    # plus 2 MiB, and descriptors by at most the pool's spare sockets.
    _, rss0, fds0 = [x for x in samples if x[0] >= 10][0]
    _, rss1, fds1 = samples[-1]
    # The HTTP connection pool may hold one more socket at a time.
    ok = rss1 <= rss0 * 1.25 + 2048 and fds1 <= fds0 + 2
    print('load: %d cycles: rss %d -> %d KiB, fds %d -> %d: %s'
          % (n, rss0, rss1, fds0, fds1, 'flat' if ok else 'GROWING'))
    return 0 if ok and s.p.returncode == 0 and not leftover_containers(s.p.pid) else 1


if __name__ == '__main__':
    if not SERVER:
        raise SystemExit('load: autopkgtest-virt-rdocker is not on PATH')
    what = sys.argv[1] if len(sys.argv) > 1 else ''
    n = int(sys.argv[2]) if len(sys.argv) > 2 else None
    if what == 'parallel':
        sys.exit(parallel(n or 8))
    if what == 'cycles':
        sys.exit(cycles(n or 1000))
    raise SystemExit(__doc__)
