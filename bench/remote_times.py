#!/usr/bin/python3
"""Per-command cost on remote daemons: exec of `true` over plain TCP, TLS
and ssh, for one or two rdocker builds and the docker CLI, in one run.

Each daemon is the local one behind a throwaway server on loopback, as in
tests/integration/daemons.rs: socat for TCP, socat terminating mutual TLS
(certificates made here with openssl), and sshd (a key made here) for
ssh://. Each rdocker build runs one session per transport; its testbed
commands run as autopkgtest runs them: print-execute-command's argv +
the command, stdin /dev/null. `docker exec` runs in the same testbed
with the same DOCKER_HOST. Calls alternate (build A, build B, docker
CLI, ...) so that load on the machine hits them alike. Prints medians
and ranges.

    bench/remote_times.py --rdocker target/release/autopkgtest-virt-rdocker \
        --baseline /tmp/rdocker-before --rounds 30

Python 3 standard library only; needs root (sshd), socat, openssl,
openssh-server, the docker CLI and the test image. Leaves nothing behind.
"""

import argparse
import os
import pwd
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse

IMAGE = os.environ.get('RDOCKER_TEST_IMAGE', 'rdocker-test/autopkgtest:bookworm')


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def wait_port(port, proc):
    for _ in range(300):
        if proc.poll() is not None:
            sys.exit(f'helper exited before listening on {port}')
        try:
            socket.create_connection(('127.0.0.1', port), 0.1).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f'nothing listens on {port}')


def local_daemon():
    h = os.environ.get('DOCKER_HOST', '')
    if h.startswith('tcp://'):
        return 'TCP:' + h[6:].rstrip('/')
    return 'UNIX-CONNECT:' + (h[7:] if h.startswith('unix://') else '/var/run/docker.sock')


def run(*argv, cwd=None):
    subprocess.run(argv, cwd=cwd, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)


def make_certs(d):
    def req(key, out, subj, x509):
        run('openssl', 'req', *(['-x509', '-days', '2'] if x509 else []), '-newkey', 'ec',
            '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', key, '-out', out,
            '-subj', subj, cwd=d)
    req('ca-key.pem', 'ca.pem', '/CN=bench CA', True)
    req('server-key.pem', 'server.csr', '/CN=127.0.0.1', False)
    req('client-key.pem', 'client.csr', '/CN=bench client', False)
    with open(f'{d}/server.ext', 'w') as f:
        f.write('subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n')
    with open(f'{d}/client.ext', 'w') as f:
        f.write('extendedKeyUsage=clientAuth\n')
    for csr, out, ext in [('server.csr', 'server-cert.pem', 'server.ext'),
                          ('client.csr', 'client-cert.pem', 'client.ext')]:
        run('openssl', 'x509', '-req', '-in', csr, '-CA', 'ca.pem', '-CAkey', 'ca-key.pem',
            '-CAcreateserial', '-days', '2', '-out', out, '-extfile', ext, cwd=d)
    c = f'{d}/client'
    os.makedirs(c)
    for src, dst in [('ca.pem', 'ca.pem'), ('client-cert.pem', 'cert.pem'),
                     ('client-key.pem', 'key.pem')]:
        shutil.copy(f'{d}/{src}', f'{c}/{dst}')
    return c


class Setup:
    """The three fronts of the local daemon, and each one's environment."""

    def __init__(self, d):
        self.procs = []
        self.envs = {}
        base = dict(os.environ)
        port = free_port()
        self.bg(['socat', '-t', '86400', f'TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork',
                 local_daemon()], port)
        self.envs['tcp'] = dict(base, DOCKER_HOST=f'tcp://127.0.0.1:{port}')
        certs = make_certs(d)
        port = free_port()
        self.bg(['socat', '-t', '86400',
                 f'OPENSSL-LISTEN:{port},cert={d}/server-cert.pem,key={d}/server-key.pem,'
                 f'cafile={d}/ca.pem,verify=1,bind=127.0.0.1,reuseaddr,fork',
                 local_daemon()], port)
        self.envs['tls'] = dict(base, DOCKER_HOST=f'tcp://127.0.0.1:{port}',
                                DOCKER_TLS_VERIFY='1', DOCKER_CERT_PATH=certs)
        for k in ['hostkey', 'userkey']:
            run('ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-f', f'{d}/{k}')
        shutil.copy(f'{d}/userkey.pub', f'{d}/authorized_keys')
        port = free_port()
        with open(f'{d}/sshd_config', 'w') as f:
            f.write(f'Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/hostkey\n'
                    f'AuthorizedKeysFile {d}/authorized_keys\nPidFile none\nUsePAM no\n'
                    'StrictModes no\nPermitRootLogin prohibit-password\n'
                    'PasswordAuthentication no\n')
        with open(f'{d}/hostkey.pub') as f:
            hostkey = f.read()
        with open(f'{d}/known_hosts', 'w') as f:
            f.write(f'[127.0.0.1]:{port} {hostkey}')
        with open(f'{d}/ssh_config', 'w') as f:
            f.write(f'Host 127.0.0.1\n  IdentityFile {d}/userkey\n  IdentitiesOnly yes\n'
                    f'  UserKnownHostsFile {d}/known_hosts\n  StrictHostKeyChecking yes\n'
                    '  BatchMode yes\n  LogLevel ERROR\n')
        os.makedirs(f'{d}/bin')
        with open(f'{d}/bin/ssh', 'w') as f:
            f.write(f'#!/bin/sh\nexec {shutil.which("ssh")} -F {d}/ssh_config "$@"\n')
        os.chmod(f'{d}/bin/ssh', 0o755)
        os.makedirs('/run/sshd', exist_ok=True)
        self.bg(['/usr/sbin/sshd', '-D', '-e', '-f', f'{d}/sshd_config'], port)
        user = pwd.getpwuid(os.getuid()).pw_name
        h = os.environ.get('DOCKER_HOST', '')
        path = h[7:] if h.startswith('unix://') and h != 'unix:///var/run/docker.sock' else ''
        self.envs['ssh'] = dict(base, DOCKER_HOST=f'ssh://{user}@127.0.0.1:{port}{path}',
                                PATH=f'{d}/bin:' + base.get('PATH', ''))

    def bg(self, argv, port):
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        self.procs.append(p)
        wait_port(port, p)

    def stop(self):
        for p in self.procs:
            p.terminate()
            p.wait()


class Session:
    """One rdocker server, opened; `argv` runs a testbed command."""

    def __init__(self, binary, env):
        self.p = subprocess.Popen([binary, IMAGE], env=env, stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.line()
        self.cmd('open')
        words = self.cmd('print-execute-command')[0].split(',')
        self.argv = [urllib.parse.unquote(w) for w in words]
        self.container = next(a.split('=', 1)[1] for a in self.argv
                              if a.startswith('--container='))

    def line(self):
        line = self.p.stdout.readline()
        if not line.startswith('ok'):
            sys.exit(f'server said {line!r}')
        return line.split()[1:]

    def cmd(self, c):
        self.p.stdin.write(c + '\n')
        self.p.stdin.flush()
        return self.line()

    def quit(self):
        self.p.stdin.write('quit\n')
        self.p.stdin.close()
        self.p.wait(60)


def timed(argv, env):
    t = time.monotonic()
    r = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE)
    dt = time.monotonic() - t
    if r.returncode != 0:
        sys.exit(f'{argv[:3]}... failed ({r.returncode}): {r.stderr.decode()}')
    return dt


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--rdocker', required=True, help='the rdocker build to measure')
    ap.add_argument('--baseline', help='another rdocker build, measured alongside')
    ap.add_argument('--rounds', type=int, default=20)
    ap.add_argument('--transports', default='tcp,tls,ssh')
    a = ap.parse_args()
    builds = [('rdocker', a.rdocker)] + ([('baseline', a.baseline)] if a.baseline else [])
    d = tempfile.mkdtemp(prefix='rdocker-remote-bench-')
    setup = Setup(d)
    rows = []
    try:
        for tr in a.transports.split(','):
            env = setup.envs[tr]
            sessions = [(name, Session(b, env)) for name, b in builds]
            cli = ['docker', 'exec', sessions[0][1].container, 'true']
            runs = {name: [] for name, _ in sessions}
            runs['docker CLI'] = []
            try:
                for _ in range(a.rounds):
                    for name, s in sessions:
                        runs[name].append(timed(s.argv + ['true'], env))
                    runs['docker CLI'].append(timed(cli, env))
            finally:
                for _, s in sessions:
                    s.quit()
            rows.append((tr, runs))
    finally:
        setup.stop()
        shutil.rmtree(d, ignore_errors=True)
    names = [n for n, _ in builds] + ['docker CLI']
    print(f'exec of `true`, median (min - max) of {a.rounds}, stdin /dev/null; '
          f'rdocker = {a.rdocker}' + (f', baseline = {a.baseline}' if a.baseline else ''))
    print('| transport | ' + ' | '.join(names) + ' |')
    print('|---|' + '---|' * len(names))
    for tr, runs in rows:
        cells = [f'{statistics.median(v) * 1000:.0f} ms ({min(v) * 1000:.0f} - '
                 f'{max(v) * 1000:.0f})' for v in (runs[n] for n in names)]
        print(f'| {tr} | ' + ' | '.join(cells) + ' |')


if __name__ == '__main__':
    main()
