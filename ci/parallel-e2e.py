#!/usr/bin/python3
"""rdocker-autopkgtest against the real daemon and the real autopkgtest.

  parallel-e2e.py [RUNNER]     (default: rdocker-autopkgtest on PATH)

Scenarios, each asserting what could fail:
  results   ci/tests/pkg/rdocker-results (PASS, FAIL, SKIP, FLAKY) with -B,
            -j 2 against a serial autopkgtest run: each test's result and the
            exit status (6) are the serial run's; the failing test is not
            retried; one output directory with every test's files, the
            merged summary and junit.xml.
  dbus      the dbus case: a passing and a skipped test split in two halves
            (one exits 0, the other 8): the merged status is the serial 2.
  build     tests/pkg/rdocker-five, unbuilt: built exactly once; the test
            that installs none of the package runs beside the build, the
            other four after it over two shards with the .debs; all pass.
  build_needed
            rdocker-five with a build-needed test put first (a Test-Command,
            so the others' names shift unless every stanza is kept):
            unbuilt, the build shard runs it and no other shard builds;
            with -B, only the shard with that test builds the tree. Each
            test passes, under its serial name.
  build_fails
            the same package whose build fails while its test that needs
            no build (made to sleep 600 s) runs beside it: that shard is
            stopped at once, and
            the exit status (12) and the results (none) are the serial run's.
  apt       `autopkgtest hello` (an apt source, two tests): the source is
            fetched once on the host, each shard tests that .dsc (autopkgtest's own
            apt-source in no shard), results and status as serial.
  retry     a fault-injecting rdocker (a wrapper that dies at its first
            start): that shard ends in a testbed failure and is run again
            once, marked so in the summary; the run passes.
  daemons   shards over two daemons, a TCP endpoint (socat) and an ssh one
            (a throwaway sshd), both in front of the test daemon: each
            carried a shard, and the results are right.
No container of ours may be left behind.
Uses autopkgtest (or $RDOCKER_AUTOPKGTEST, for the serial runs and the
runner alike) and autopkgtest-virt-rdocker from PATH, and
RDOCKER_TEST_USER_IMAGE (default rdocker-test/user:bookworm; `sudo
ci/provision.sh` builds it).
"""
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
IMAGE = os.environ.get('RDOCKER_TEST_USER_IMAGE', 'rdocker-test/user:bookworm')
RUNNER = sys.argv[1] if len(sys.argv) > 1 else shutil.which('rdocker-autopkgtest')
# The autopkgtest of the serial runs, and the runner's (it reads this too).
AUTOPKGTEST = os.environ.get('RDOCKER_AUTOPKGTEST', 'autopkgtest')
RESULTS = os.path.join(HERE, 'tests', 'pkg', 'rdocker-results')
FIVE = os.path.join(ROOT, 'tests', 'pkg', 'rdocker-five')
LABELS = ['--filter', 'label=org.debian.autopkgtest.rdocker=1',
          '--filter', 'label=org.debian.autopkgtest.rdocker.owner-host=' + socket.gethostname()]


def fail(msg):
    print('parallel-e2e: FAIL: ' + msg, file=sys.stderr)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)


def run(argv, env=None, log=None):
    t0 = time.monotonic()
    p = subprocess.run(argv, capture_output=True, text=True, env=env)
    took = time.monotonic() - t0
    if log:
        with open(log, 'w') as f:
            f.write('$ %s\n--- stdout\n%s\n--- stderr\n%s' % (' '.join(argv), p.stdout, p.stderr))
    return p, took


def summary(outdir):
    got = {}
    for line in open(os.path.join(outdir, 'summary')):
        w = line.split()
        if len(w) >= 2 and w[1] in ('PASS', 'FAIL', 'SKIP', 'FLAKY'):
            check(w[0] not in got, '%s: test %s twice in the summary' % (outdir, w[0]))
            got[w[0]] = ' '.join(w[1:])
    return got


def ours():
    """rdocker containers of this host whose owner process is gone: the
    daemon is shared with other runs, whose live sessions are theirs."""
    out = subprocess.run(['docker', 'ps', '-a', '--format',
                          '{{.ID}} {{.Label "org.debian.autopkgtest.rdocker.owner-pid"}}'] + LABELS,
                         capture_output=True, text=True, check=True).stdout.split('\n')
    return {line.split()[0] for line in out if len(line.split()) == 2
            and not os.path.exists('/proc/%s' % line.split()[1])}


def parallel(tmp, name, args, own=(), env=None, expect=None):
    out = os.path.join(tmp, name)
    # Not into the summary of a CI job that runs these tests.
    env = {k: v for k, v in (env or os.environ).items() if k != 'GITHUB_STEP_SUMMARY'}
    p, took = run([RUNNER] + list(own) + args + ['-o', out, '--', 'rdocker', IMAGE],
                  env=env, log=out + '.console')
    print('parallel-e2e: %s: -j run exit %d in %.1f s' % (name, p.returncode, took))
    if expect is not None and p.returncode != expect:
        fail('%s: rdocker-autopkgtest exited %d, not %d (console: %s.console)\n%s'
             % (name, p.returncode, expect, out, p.stderr[-3000:]))
    return out, p


def serial(tmp, name, args):
    out = os.path.join(tmp, name + '-serial')
    p, took = run([AUTOPKGTEST] + args + ['-o', out, '--', 'rdocker', IMAGE],
                  log=out + '.console')
    print('parallel-e2e: %s: serial run exit %d in %.1f s' % (name, p.returncode, took))
    return out, p


def shard_names(out):
    return sorted(f for f in os.listdir(os.path.join(out, 'shards')) if not f.endswith('.out'))


def console(p, name, tests):
    """The runner's console carries each test's own autopkgtest lines,
    which the CI scripts fold into a group per test (ci/action/report.py)."""
    for t in tests:
        check(re.search(r'^autopkgtest \[\d\d:\d\d:\d\d\]: test %s: ' % t, p.stderr, re.M),
              '%s: the console has no "autopkgtest [..]: test %s:" line' % (name, t))


def results(tmp):
    args = ['-B', RESULTS]
    s_out, s = serial(tmp, 'results', args)
    step = os.path.join(tmp, 'step-summary.md')
    out, p = parallel(tmp, 'results', args, ['-j', '2', '--step-summary', step],
                      expect=s.returncode)
    check(s.returncode == 6, 'results: serial autopkgtest exited %d, not 6' % s.returncode)
    check(summary(out) == summary(s_out), 'results: merged summary %s differs from the serial %s'
          % (summary(out), summary(s_out)))
    check(shard_names(out) == ['1', '2'], 'results: shards %s, wanted 1 and 2 (no retry of a '
          'failing test)' % shard_names(out))
    for t in ('passes', 'fails', 'skipped', 'flaky'):
        check(os.path.exists(os.path.join(out, t + '-stdout')), 'results: no %s-stdout in %s' % (t, out))
    check(os.path.exists(os.path.join(out, 'junit.xml')), 'results: no junit.xml')
    check(open(os.path.join(out, 'junit.xml')).read().count('<testcase') == 4,
          'results: junit.xml does not have 4 testcases')
    table = open(step).read()
    check(all('| `%s` |' % t in table for t in ('passes', 'fails', 'skipped', 'flaky')),
          'results: the step summary does not list the four tests:\n' + table)
    check(p.stdout == open(os.path.join(out, 'summary')).read(),
          'results: standard output is not the merged summary')
    # The console carries each test's own autopkgtest lines, which the
    # CI scripts fold into a group per test (ci/action/report.py).
    console(p, 'results', ('passes', 'fails', 'skipped', 'flaky'))


def dbus(tmp):
    args = ['-B', RESULTS, '--test-name', 'passes', '--test-name', 'skipped']
    s_out, s = serial(tmp, 'dbus', args)
    check(s.returncode == 2, 'dbus: serial exited %d, not 2' % s.returncode)
    out, p = parallel(tmp, 'dbus', args, ['-j', '2'], expect=2)
    codes = sorted(int(line.split('exit ')[1].split()[0]) for line in p.stderr.splitlines()
                   if line.startswith('rdocker-autopkgtest') and ': exit ' in line)
    check(codes == [0, 8], 'dbus: the halves exited %s, not 0 and 8' % codes)
    check(summary(out) == summary(s_out), 'dbus: results differ: %s, serial %s'
          % (summary(out), summary(s_out)))


def build(tmp):
    out, p = parallel(tmp, 'build', [FIVE], ['-j', '2'], expect=0)
    builds = built_in(out)
    check(builds == ['build'], 'build: the package was built in %s, wanted once (in build)' % builds)
    got = summary(out)
    check(sorted(got) == ['as-root', 'command1', 'on-stderr', 'runs', 'without-package'],
          'build: tests %s' % sorted(got))
    check(all(v.startswith('PASS') for v in got.values()), 'build: %s' % got)
    check(os.path.exists(os.path.join(out, 'binaries', 'rdocker-five.deb')), 'build: no binaries/')
    # without-package installs nothing of the package: it ran beside the
    # build, in shard 1 (-B, no .debs), the others after it in two.
    check(shard_names(out) == ['1', '2', '3', 'build'], 'build: shards %s' % shard_names(out))
    log = p.stderr
    check('shard 1: without-package' in log and 'shard build: exit' in log and
          log.index('shard 1: without-package') < log.index('shard build: exit'),
          'build: without-package did not start beside the build:\n' + log[-3000:])
    check('without-package' in open(os.path.join(out, 'shards', '1', 'summary')).read(),
          'build: without-package is not in shard 1')
    console(p, 'build', sorted(got))


def built_in(out):
    """The shards whose autopkgtest ran dpkg-buildpackage."""
    return [d for d in shard_names(out)
            if 'dpkg-buildpackage' in open(os.path.join(out, 'shards', d, 'log'),
                                           errors='replace').read()]


def build_needed(tmp):
    src = os.path.join(tmp, 'five-build-needed')
    shutil.copytree(FIVE, src)
    control = os.path.join(src, 'debian', 'tests', 'control')
    with open(control) as f:
        rest = f.read()
    with open(control, 'w') as f:
        # The built tree has dh's staging directory; the unbuilt one has not.
        f.write('Test-Command: test -x debian/rdocker-five/usr/bin/rdocker-five\n'
                'Depends:\nRestrictions: build-needed, superficial\n\n' + rest)
    out, p = parallel(tmp, 'build-needed', [src], ['-j', '2'], expect=0)
    got = summary(out)
    want = ['as-root', 'command1', 'command2', 'on-stderr', 'runs', 'without-package']
    check(sorted(got) == want and all(v.startswith('PASS') for v in got.values()),
          'build_needed: results %s, wanted %s all PASS' % (got, want))
    check(built_in(out) == ['build'], 'build_needed: built in shards %s, wanted only in build'
          % built_in(out))
    check('command1' in open(os.path.join(out, 'shards', 'build', 'summary')).read(),
          'build_needed: the build-needed test did not run in the build shard')
    # -B: no binaries to build, but the build-needed test still builds the
    # tree, in its own shard only.
    args = ['-B', src, '--test-name', 'command1', '--test-name', 'without-package']
    out, p = parallel(tmp, 'build-needed-B', args, ['-j', '2'], expect=0)
    got = summary(out)
    check(sorted(got) == ['command1', 'without-package'] and
          all(v.startswith('PASS') for v in got.values()), 'build_needed -B: results %s' % got)
    built = built_in(out)
    check(len(built) == 1 and 'command1' in open(os.path.join(
        out, 'shards', built[0], 'summary')).read(),
        'build_needed -B: the tree was built in shards %s, wanted only in the one that runs '
        'command1' % built)


def build_fails(tmp):
    """The build fails while without-package runs beside it: that shard is
    stopped and dropped, and the result is the serial run's (no test)."""
    src = os.path.join(tmp, 'five-build-fails')
    shutil.copytree(FIVE, src)
    with open(os.path.join(src, 'debian', 'rules'), 'a') as f:
        f.write('\noverride_dh_auto_build:\n\tfalse\n')
    # The test beside the build outlasts it: it must be stopped.
    test = os.path.join(src, 'debian', 'tests', 'without-package')
    with open(test) as f:
        body = f.read()
    with open(test, 'w') as f:
        f.write(body.replace('set -e\n', 'set -e\nsleep 600\n', 1))
    s_out, s = serial(tmp, 'build-fails', [src])
    check(s.returncode == 12, 'build_fails: serial autopkgtest exited %d, not 12' % s.returncode)
    t0 = time.monotonic()
    out, p = parallel(tmp, 'build-fails', [src], ['-j', '2'], expect=s.returncode)
    check(time.monotonic() - t0 < 300, 'build_fails: the shard beside the failed build was not '
          'stopped (the run took %.0f s; its test sleeps 600 s)' % (time.monotonic() - t0))
    check(summary(out) == {} == summary(s_out), 'build_fails: results %s, serial %s, wanted none'
          % (summary(out), summary(s_out)))
    check('shard 1: without-package' in p.stderr, 'build_fails: without-package did not start '
          'beside the build:\n' + p.stderr[-3000:])
    check('badpkg' in open(os.path.join(out, 'summary')).read(),
          'build_fails: the merged summary does not say the build failed')


def apt(tmp):
    s_out, s = serial(tmp, 'apt', ['hello'])
    out, p = parallel(tmp, 'apt', ['hello'], ['-j', '2'], expect=s.returncode)
    check(s.returncode == 0, 'apt: serial autopkgtest hello exited %d' % s.returncode)
    check('@@@@ apt-source hello' in open(os.path.join(s_out, 'log'), errors='replace').read(),
          'apt: the serial run did not fetch hello with apt')
    check(p.stderr.count('fetched the source of hello once') == 1, 'apt: the source was not fetched once')
    check(len(summary(out)) >= 2 and summary(out) == summary(s_out),
          'apt: results %s, serial %s' % (summary(out), summary(s_out)))
    for d in shard_names(out):
        log = open(os.path.join(out, 'shards', d, 'log'), errors='replace').read()
        # autopkgtest names what it tests: "@@@@ apt-source hello" serially
        check(re.search(r'@@@@ source \S*/hello_[^/\s]*\.dsc', log) and '@@@@ apt-source' not in log,
              'apt: shard %s did not test the fetched .dsc' % d)


def retry(tmp):
    # autopkgtest finds the virt server by its name: a wrapper named as
    # rdocker, first on PATH, that dies the first time it starts.
    bin_dir = os.path.join(tmp, 'faulty')
    os.makedirs(bin_dir)
    real = shutil.which('autopkgtest-virt-rdocker')
    marker = os.path.join(tmp, 'faulty-fired')
    with open(os.path.join(bin_dir, 'autopkgtest-virt-rdocker'), 'w') as f:
        f.write('#!/bin/sh\nif mkdir %s 2>/dev/null; then echo "faulty: dying at start" >&2; '
                'exit 1; fi\nexec %s "$@"\n' % (marker, real))
    os.chmod(os.path.join(bin_dir, 'autopkgtest-virt-rdocker'), 0o755)
    env = dict(os.environ, PATH=bin_dir + ':' + os.environ['PATH'])
    args = ['-B', RESULTS, '--test-name', 'passes', '--test-name', 'skipped',
            '--test-name', 'flaky']
    out, p = parallel(tmp, 'retry', args, ['-j', '2'], env=env, expect=2)
    check(os.path.isdir(marker), 'retry: the faulty wrapper never ran')
    names = shard_names(out)
    check(len([n for n in names if n.endswith('-retry')]) == 1,
          'retry: wanted one retried shard, got %s' % names)
    first = [n for n in names if n + '-retry' in names][0]
    check('testbed failure' in open(os.path.join(out, 'shards', first, 'summary')).read()
          or 'testbed failure' in open(os.path.join(out, 'shards', first + '.out')).read(),
          'retry: shard %s did not end in a testbed failure' % first)
    got = summary(out)
    check(got == {'passes': 'PASS', 'skipped': 'SKIP exit status 77 and marked as skippable',
                  'flaky': 'FLAKY non-zero exit status 1'}, 'retry: %s' % got)
    said = open(os.path.join(out, 'summary')).read().count('retried on a fresh testbed')
    check(said == 1, 'retry: the summary says %d times that a shard was retried, not once' % said)


def daemons(tmp):
    """Two endpoints of the test daemon: TCP through socat, and ssh through
    a throwaway sshd (as tests/integration/daemons.rs sets them up)."""
    for tool in ('socat', 'sshd', 'ssh-keygen', 'ssh'):
        check(shutil.which(tool) or os.path.exists('/usr/sbin/' + tool),
              '%s is missing: sudo ci/provision.sh installs it' % tool)
    d = os.path.join(tmp, 'endpoints')
    os.makedirs(d)
    free = []
    for _ in range(2):
        s = socket.socket()
        s.bind(('127.0.0.1', 0))
        free.append(s)
    tcp_port, ssh_port = [s.getsockname()[1] for s in free]
    for s in free:
        s.close()
    socat_log = open(os.path.join(d, 'socat.log'), 'w')
    socat = subprocess.Popen(['socat', '-d', '-d', '-t', '30', 'TCP-LISTEN:%d,bind=127.0.0.1,reuseaddr,fork'
                              % tcp_port, 'UNIX-CONNECT:/var/run/docker.sock'],
                             stdout=socat_log, stderr=socat_log)
    for k in ('hostkey', 'userkey'):
        subprocess.run(['ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-f', os.path.join(d, k)],
                       check=True)
    shutil.copy(os.path.join(d, 'userkey.pub'), os.path.join(d, 'authorized_keys'))
    with open(os.path.join(d, 'sshd_config'), 'w') as f:
        f.write('Port %d\nListenAddress 127.0.0.1\nHostKey %s/hostkey\nAuthorizedKeysFile '
                '%s/authorized_keys\nPidFile none\nUsePAM no\nStrictModes no\n'
                'PermitRootLogin prohibit-password\nPasswordAuthentication no\n'
                'KbdInteractiveAuthentication no\n' % (ssh_port, d, d))
    with open(os.path.join(d, 'known_hosts'), 'w') as f:
        f.write('[127.0.0.1]:%d %s' % (ssh_port, open(os.path.join(d, 'hostkey.pub')).read()))
    with open(os.path.join(d, 'ssh_config'), 'w') as f:
        f.write('Host 127.0.0.1\n  IdentityFile %s/userkey\n  IdentitiesOnly yes\n'
                '  UserKnownHostsFile %s/known_hosts\n  StrictHostKeyChecking yes\n'
                '  BatchMode yes\n  LogLevel ERROR\n' % (d, d))
    os.makedirs(os.path.join(d, 'bin'))
    with open(os.path.join(d, 'bin', 'ssh'), 'w') as f:
        f.write('#!/bin/sh\nexec %s -F %s/ssh_config "$@"\n' % (shutil.which('ssh'), d))
    os.chmod(os.path.join(d, 'bin', 'ssh'), 0o755)
    os.makedirs('/run/sshd', exist_ok=True)
    sshd_log = open(os.path.join(d, 'sshd.log'), 'w')
    sshd = subprocess.Popen([shutil.which('sshd') or '/usr/sbin/sshd', '-D', '-e', '-f',
                             os.path.join(d, 'sshd_config')], stdout=sshd_log, stderr=sshd_log)
    try:
        deadline = time.monotonic() + 15
        for port in (tcp_port, ssh_port):
            while True:
                try:
                    socket.create_connection(('127.0.0.1', port), 1).close()
                    break
                except OSError:
                    check(time.monotonic() < deadline, 'daemons: nothing listens on %d' % port)
                    time.sleep(0.1)
        user = subprocess.run(['id', '-un'], capture_output=True, text=True).stdout.strip()
        env = dict(os.environ, PATH=os.path.join(d, 'bin') + ':' + os.environ['PATH'])
        args = ['-B', RESULTS, '--test-name', 'passes', '--test-name', 'skipped']
        out, p = parallel(tmp, 'daemons', args,
                          ['-j', '2', '-H', 'tcp://127.0.0.1:%d' % tcp_port,
                           '-H', 'ssh://%s@127.0.0.1:%d' % (user, ssh_port)], env=env, expect=2)
        check(summary(out) == {'passes': 'PASS', 'skipped': 'SKIP exit status 77 and marked as '
                               'skippable'}, 'daemons: %s' % summary(out))
        hosts = [line for line in p.stderr.splitlines() if line.startswith('rdocker-autopkgtest')
                 and ' on -H ' in line]
        check(any('tcp://' in h for h in hosts) and any('ssh://' in h for h in hosts),
              'daemons: the shards did not go to both daemons: %s' % hosts)
        socat_log.flush()
        sshd_log.flush()
        check('accepting connection' in open(os.path.join(d, 'socat.log')).read(),
              'daemons: no connection through the TCP endpoint')
        check('Accepted publickey' in open(os.path.join(d, 'sshd.log')).read(),
              'daemons: no login through the ssh endpoint: %s'
              % open(os.path.join(d, 'sshd.log')).read()[-2000:])
    finally:
        for proc in (socat, sshd):
            proc.terminate()
            proc.wait()


def main():
    check(RUNNER and os.path.exists(RUNNER), 'no rdocker-autopkgtest (install the .deb, or give '
          'runner/rdocker_autopkgtest.py as the argument)')
    check(shutil.which('autopkgtest-virt-rdocker'), 'no autopkgtest-virt-rdocker on PATH')
    check(subprocess.run(['docker', 'image', 'inspect', IMAGE], capture_output=True).returncode == 0,
          'the daemon has no image %s: sudo ci/provision.sh builds it' % IMAGE)
    only = sys.argv[2:] or ['results', 'dbus', 'retry', 'daemons', 'apt', 'build', 'build_needed',
                             'build_fails']
    before = ours()
    tmp = tempfile.mkdtemp(prefix='rdocker-parallel-e2e-')
    keep = os.environ.get('RDOCKER_TEST_LOGS')
    t0 = time.monotonic()
    try:
        for name in only:
            t = time.monotonic()
            globals()[name](tmp)
            print('parallel-e2e: %s passed (%.1f s)' % (name, time.monotonic() - t))
    finally:
        if keep:
            dest = os.path.join(keep, 'parallel-e2e')
            shutil.rmtree(dest, ignore_errors=True)
            shutil.copytree(tmp, dest, ignore=shutil.ignore_patterns('*.deb', '*key*'),
                            symlinks=True)
        shutil.rmtree(tmp, ignore_errors=True)
    left = ours() - before
    check(not left, 'containers left behind: %s' % ' '.join(left))
    print('parallel-e2e: all passed (%.1f s)' % (time.monotonic() - t0))


if __name__ == '__main__':
    main()
