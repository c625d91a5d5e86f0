#!/usr/bin/python3
"""Benchmark autopkgtest virt servers over the virt-server protocol.

Drives autopkgtest-virt-rdocker and the reference autopkgtest-virt-docker
(shared-directory mode and --remote mode) exactly as autopkgtest does:
protocol lines on the server's stdin/stdout, URL-quoted arguments, testbed
commands run as print-execute-command's argv + the command, copies into
and out of the scratch directory. Every result is verified (contents,
sizes, file counts); a wrong result aborts the run instead of producing a
number. Servers are interleaved (A B C A B C ...) so that noise hits them
alike. Prints medians, ratios against rdocker, throughputs, targets, and
rdocker's peak RSS.

Python 3 standard library only. Needs root (or docker group), a running
daemon and the test image. Leaves no containers, processes or files.

    bench/bench.py --quick                  # smoke run, small sizes
    bench/bench.py                          # full run
    bench/bench.py --ops rss                # only rdocker's peak RSS
    bench/bench.py --servers rdocker,docker --ops exec-true,copydown-tree
    bench/bench.py --servers rdocker,rdocker-arm64 --ops exec-true,revert
                                            # native vs arm64 through qemu
"""

import argparse
import hashlib
import json
import mmap
import os
import platform
import select
import shlex
import shutil
import signal
import socket
import struct
import tarfile
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse

MiB = 1 << 20
KiB = 1 << 10

REFERENCE = '/usr/bin/autopkgtest-virt-docker'
ALL_SERVERS = ['rdocker', 'rdocker-api', 'rdocker-shared', 'docker', 'docker-remote']
REFERENCES = ['docker', 'docker-remote']
# Named in --servers only, never by default: another rdocker build, an
# arm64 testbed through qemu-user-static (ci/provision-foreign.sh), and
# this build on Docker's default bridge (what keeping sessions apart costs).
EXTRA_SERVERS = ['rdocker-base', 'rdocker-arm64', 'rdocker-bridge']
LABELS = {
    'api-ceiling': 'raw API (ceiling)',
    'rdocker': 'rdocker',
    'rdocker-api': 'rdocker --remote (Engine API only)',
    'rdocker-shared': 'rdocker --shared-dir',
    'rdocker-base': 'rdocker --baseline build',
    'rdocker-arm64': 'rdocker arm64 (qemu)',
    'rdocker-bridge': 'rdocker --network bridge',
    'docker': 'docker',
    'docker-remote': 'docker --remote',
}
# Operations timed inside one long-lived open session per server.
DATA_OPS = ['exec-true', 'exec-stdout', 'exec-stdin', 'copydown-file',
            'copyup-file', 'copydown-tree', 'copyup-tree']
# Operations that need a fresh server per round.
LIFECYCLE_OPS = ['open', 'revert', 'close']
# Whole autopkgtest runs, rdocker against the reference's default mode.
# conformance (upstream's suite, ~10 min with rdocker, ~20-30 with the
# reference) runs only when named in --ops.
SUITE_OPS = ['e2e', 'conformance']
ALL_OPS = ['open'] + DATA_OPS + ['revert', 'close', 'rss'] + SUITE_OPS
DEFAULT_OPS = [o for o in ALL_OPS if o != 'conformance']
BIG_OPS = {'exec-stdout', 'exec-stdin', 'copydown-file', 'copyup-file'}


class BenchError(Exception):
    pass


def cpu_times():
    with open('/proc/stat') as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return v[3] + v[4], sum(v)  # idle + iowait, total


def wait_idle(fraction, window=0.1, limit=10.0):
    """Until two windows in a row have the CPUs at least `fraction` idle,
    or `limit` seconds."""
    end = time.monotonic() + limit
    quiet = 0
    idle0, total0 = cpu_times()
    while quiet < 2 and time.monotonic() < end:
        time.sleep(window)
        idle1, total1 = cpu_times()
        busy = total1 - total0
        quiet = quiet + 1 if busy and (idle1 - idle0) / busy >= fraction else 0
        idle0, total0 = idle1, total1


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def human(n):
    if n >= MiB and n % MiB == 0:
        return '%d MiB' % (n // MiB)
    if n >= KiB and n % KiB == 0:
        return '%d KiB' % (n // KiB)
    return '%d B' % n


# ---------------------------------------------------------------------------
# Host-side data

def make_blob(path, size):
    """Random file; returns its sha256."""
    h = hashlib.sha256()
    with open(path, 'wb') as f:
        left = size
        while left:
            chunk = os.urandom(min(left, 4 * MiB))
            h.update(chunk)
            f.write(chunk)
            left -= len(chunk)
    return h.hexdigest()


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        while True:
            b = f.read(4 * MiB)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def make_tree(root, nfiles, fsize, per_dir=100):
    os.mkdir(root)
    for i in range(nfiles):
        d = os.path.join(root, 'd%03d' % (i // per_dir))
        if i % per_dir == 0:
            os.mkdir(d)
        with open(os.path.join(d, 'f%05d' % i), 'wb') as f:
            f.write(os.urandom(fsize))
    return tree_summary(root)


def tree_summary(root):
    """(regular files, directories incl. root, other entries, manifest digest).

    The digest is sha256 of `sha256sum` lines for ./PATH in C-locale order,
    the same as TREE_SCRIPT computes in the testbed."""
    files, ndirs, nother = [], 0, 0
    for dirpath, dirnames, filenames in os.walk(root):
        ndirs += 1
        for name in dirnames:
            if os.path.islink(os.path.join(dirpath, name)):
                nother += 1
        for name in filenames:
            p = os.path.join(dirpath, name)
            if os.path.islink(p) or not os.path.isfile(p):
                nother += 1
            else:
                files.append('./' + os.path.relpath(p, root))
    lines = []
    for rel in sorted(files):
        with open(os.path.join(root, rel), 'rb') as f:
            lines.append('%s  %s\n' % (hashlib.sha256(f.read()).hexdigest(), rel))
    digest = hashlib.sha256(''.join(lines).encode()).hexdigest()
    return (len(files), ndirs, nother, digest)


TREE_SCRIPT = (
    'cd -- "$1"; '
    'find . -type f | wc -l; find . -type d | wc -l; '
    'find . ! -type f ! -type d | wc -l; '
    'find . -type f | LC_ALL=C sort | xargs -r sha256sum | sha256sum | cut -d" " -f1'
)


# ---------------------------------------------------------------------------
# Processes

def read_err(f):
    f.seek(0)
    return f.read().decode(errors='replace').strip()


def vm_hwm_kib(pid):
    with open('/proc/%d/status' % pid) as f:
        for line in f:
            if line.startswith('VmHWM:'):
                return int(line.split()[1])
    raise BenchError('no VmHWM for pid %d' % pid)


def reset_hwm(pid):
    """Reset the peak RSS (VmHWM) of pid; False if the kernel refuses."""
    try:
        with open('/proc/%d/clear_refs' % pid, 'w') as f:
            f.write('5')
        return True
    except OSError:
        return False


class Server:
    """One virt server process, spoken to as autopkgtest's adt_testbed does."""

    def __init__(self, name, argv, env, workdir, timeout):
        self.name = name
        self.argv = argv
        self.timeout = timeout
        self.errpath = os.path.join(workdir, 'server-%s-%d.stderr' % (name, time.monotonic_ns()))
        self.errf = open(self.errpath, 'wb')
        self.p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=self.errf, env=env)
        self.buf = b''
        self.scratch = None
        self.exec_cmd = None
        self.caps = []
        self.containers = set()
        self.closed_ok = True
        self.tree_rounds = 0
        self.host_trees = []     # copyup destinations, deleted after the session
        line = self._readline(timeout)
        if line != 'ok':
            raise BenchError('%s: banner %r, expected ok%s' % (name, line, self.stderr_tail()))

    @property
    def pid(self):
        return self.p.pid

    def stderr_tail(self, n=2000):
        try:
            with open(self.errpath, 'rb') as f:
                t = f.read().decode(errors='replace').strip()
        except OSError:
            return ''
        return ('; server stderr: ' + t[-n:]) if t else ''

    def _readline(self, timeout):
        deadline = time.monotonic() + timeout
        fd = self.p.stdout.fileno()
        while b'\n' not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError('%s: no reply within %d s%s' % (self.name, timeout, self.stderr_tail()))
            r, _, _ = select.select([fd], [], [], left)
            if not r:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                try:
                    st = self.p.wait(10)
                except subprocess.TimeoutExpired:
                    st = None
                raise BenchError('%s: server closed its stdout (exit status %s)%s'
                                 % (self.name, st, self.stderr_tail()))
            self.buf += chunk
        line, self.buf = self.buf.split(b'\n', 1)
        return line.decode()

    def command(self, cmd, *args, nresults=None, timeout=None):
        """Send one command; return (raw result words, seconds to the ok)."""
        line = ' '.join([cmd] + [urllib.parse.quote(a) for a in args])
        t0 = time.perf_counter()
        self.p.stdin.write(line.encode() + b'\n')
        self.p.stdin.flush()
        reply = self._readline(timeout or self.timeout)
        dt = time.perf_counter() - t0
        words = reply.split(' ')
        if words[0] != 'ok':
            raise BenchError('%s: %r answered %r%s' % (self.name, line, reply, self.stderr_tail()))
        if nresults is not None and len(words) - 1 != nresults:
            raise BenchError('%s: %r answered %r, expected %d results'
                             % (self.name, line, reply, nresults))
        return words[1:], dt

    def _opened(self, words):
        self.scratch = urllib.parse.unquote(words[0])
        w, _ = self.command('print-execute-command', nresults=1)
        self.exec_cmd = [urllib.parse.unquote(x) for x in w[0].split(',')]
        self.caps, _ = self.command('capabilities')
        self.containers |= set(container_ids(self.exec_cmd))

    def open(self):
        words, dt = self.command('open', nresults=1)
        self._opened(words)
        return dt

    def revert(self):
        words, dt = self.command('revert', nresults=1)
        self._opened(words)
        return dt

    def close(self):
        _, dt = self.command('close', nresults=0)
        self.scratch = None
        self.exec_cmd = None
        return dt

    def quit(self, timeout=120):
        if self.p.poll() is None:
            try:
                self.p.stdin.write(b'quit\n')
                self.p.stdin.flush()
                self.p.stdin.close()
            except OSError:
                pass
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                log('%s: did not quit within %d s, sending SIGTERM to pid %d'
                    % (self.name, timeout, self.p.pid))
                self.p.terminate()
                try:
                    self.p.wait(30)
                except subprocess.TimeoutExpired:
                    self.p.kill()
                    self.p.wait()
        self.errf.close()
        return self.p.returncode

    # -- testbed commands, through exec_cmd as adt_testbed.execute does --

    def sh(self, script, *args, timeout=None):
        """Run a shell script in the testbed (untimed helper); return stdout."""
        errf = tempfile.TemporaryFile()
        try:
            p = subprocess.run(self.exec_cmd + ['sh', '-ec', script, 'sh'] + list(args),
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errf,
                               timeout=timeout or self.timeout)
            if p.returncode != 0:
                raise BenchError('%s: testbed script %r failed with %d: %s'
                                 % (self.name, script, p.returncode, read_err(errf)))
            return p.stdout.decode()
        finally:
            errf.close()


def container_ids(argv):
    ids = []
    for w in argv:
        if w.startswith('--container='):
            ids.append(w.split('=', 1)[1])
        elif len(w) == 64 and all(c in '0123456789abcdef' for c in w):
            ids.append(w)
    return ids


def existing_containers(ids, running=False):
    if not ids:
        return []
    p = subprocess.run(['docker', 'ps'] + ([] if running else ['-a']) +
                       ['--no-trunc', '--format', '{{.ID}}'],
                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    alive = set(p.stdout.split())
    return sorted(i for i in ids if i in alive)


# ---------------------------------------------------------------------------
# The daemon's own ceiling

class ApiCeiling:
    """The Engine API driven directly over its unix socket, with no client
    work beyond moving bytes: what any API client, rdocker included, can at
    best reach for the big transfers on this daemon. It borrows the
    container of rdocker's open session and that session for verifying."""

    name = 'api-ceiling'

    def __init__(self, sock, version, host_session):
        self.sock = sock
        self.version = version
        self.s = host_session
        self.cid = container_ids(host_session.exec_cmd)[0]

    def _send(self, method, path, body=b'', extra=b'', http='1.0', body_file=None, body_len=None):
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.connect(self.sock)
        n = body_len if body_file is not None else len(body)
        head = ('%s /v%s%s HTTP/%s\r\nHost: docker\r\nContent-Length: %d\r\n'
                % (method, self.version, path, http, n)).encode() + extra + b'\r\n'
        c.sendall(head + body)
        if body_file is not None:
            c.sendfile(body_file)
        buf = b''
        while b'\r\n\r\n' not in buf:
            b = c.recv(65536)
            if not b:
                raise BenchError('api-ceiling: %s %s: connection closed' % (method, path))
            buf += b
        h, rest = buf.split(b'\r\n\r\n', 1)
        return c, int(h.split()[1]), rest

    def _json(self, method, path, obj=None, want=(200, 201)):
        body = json.dumps(obj).encode() if obj is not None else b''
        c, st, rest = self._send(method, path, body, b'Content-Type: application/json\r\n')
        with c:
            while True:
                b = c.recv(65536)
                if not b:
                    break
                rest += b
        if st not in want:
            raise BenchError('api-ceiling: %s %s: %d %r' % (method, path, st, rest[:500]))
        return json.loads(rest) if rest.strip() else None

    def _exec(self, cmd, stdin_file=None, on_stdout=None):
        """Run cmd; stream stdin_file in, hand stdout payload to on_stdout.
        Returns (exit code, stdout if not streamed, stderr)."""
        e = self._json('POST', '/containers/%s/exec' % self.cid, {
            'AttachStdin': stdin_file is not None, 'AttachStdout': True, 'AttachStderr': True,
            'Tty': False, 'Cmd': cmd})['Id']
        body = json.dumps({'Detach': False, 'Tty': False}).encode()
        c, st, rest = self._send('POST', '/exec/%s/start' % e, body,
                                 b'Content-Type: application/json\r\nConnection: Upgrade\r\n'
                                 b'Upgrade: tcp\r\n', http='1.1')
        if st not in (101, 200):
            raise BenchError('api-ceiling: exec start: %d' % st)
        with c:
            if stdin_file is not None:
                c.sendfile(stdin_file)
                c.shutdown(socket.SHUT_WR)
            out, err = [], []
            buf = bytearray(rest)
            eof = False
            while True:
                while len(buf) >= 8:
                    kind, size = buf[0], struct.unpack('>I', buf[4:8])[0]
                    if len(buf) < 8 + size:
                        break
                    payload = bytes(buf[8:8 + size])
                    del buf[:8 + size]
                    if kind == 1:
                        (on_stdout(payload) if on_stdout else out.append(payload))
                    else:
                        err.append(payload)
                if eof:
                    break
                b = c.recv(MiB)
                if not b:
                    eof = True
                buf += b
            if buf:
                raise BenchError('api-ceiling: %d stray bytes after the last frame' % len(buf))
        for _ in range(400):
            i = self._json('GET', '/exec/%s/json' % e)
            if not i['Running']:
                return i['ExitCode'], b''.join(out), b''.join(err)
            time.sleep(0.005)
        raise BenchError('api-ceiling: exec did not end')


# ---------------------------------------------------------------------------
# The benchmark

class Bench:
    def __init__(self, args):
        self.a = args
        self.work = tempfile.mkdtemp(prefix='rdocker-bench.')
        self.servers_alive = []
        self.all_containers = set()
        self.samples = {}      # (op, server) -> [seconds]
        self.rss = {}          # key -> KiB
        self.exec_rss = {}     # (op, server) -> [KiB]
        self.notes = []
        self.skipped = {}
        self.blob = os.path.join(self.work, 'blob.bin')
        self.tree = os.path.join(self.work, 'tree')
        self.shared_counter = 0

    # -- servers --

    def server_argv(self, name):
        a = self.a
        if name == 'rdocker':
            return [self.rdocker] + (['-d'] if os.environ.get('BENCH_DEBUG') else []) + [a.image]
        if name == 'rdocker-api':
            return [self.rdocker, '--remote', a.image]
        if name == 'rdocker-base':
            # Another build of rdocker (an earlier commit), interleaved
            # with this one in the same run.
            if not a.baseline:
                raise BenchError('the rdocker-base server needs --baseline PATH')
            return [a.baseline, a.image]
        if name == 'rdocker-arm64':
            # The same build, with a foreign testbed: what emulation costs.
            return [self.rdocker, a.arm64_image, '--platform', 'linux/arm64']
        if name == 'rdocker-bridge':
            return [self.rdocker, a.image, '--network', 'bridge']
        if name == 'rdocker-shared':
            self.shared_counter += 1
            d = os.path.join(self.work, 'rdocker-shared-%d' % self.shared_counter)
            return [self.rdocker, '--shared-dir', d, a.image]
        if name == 'docker':
            return [REFERENCE, a.image]
        if name == 'docker-remote':
            return [REFERENCE, '--remote', a.image]
        raise BenchError('unknown server %r' % name)

    def start(self, name):
        tmp = os.path.join(self.work, 'tmp-' + name)
        os.makedirs(tmp, exist_ok=True)
        env = dict(os.environ, TMPDIR=tmp)
        s = Server(name, self.server_argv(name), env, self.work, self.a.timeout)
        self.servers_alive.append(s)
        return s

    def stop(self, s):
        s.quit()
        if s in self.servers_alive:
            self.servers_alive.remove(s)
        self.all_containers |= s.containers
        left = existing_containers(s.containers)
        if left:
            # Not ours to excuse: record it, then clean up.
            msg = '%s left container(s) %s after quit' % (s.name, ', '.join(c[:12] for c in left))
            self.notes.append('LEAK: ' + msg)
            log('WARNING: ' + msg + '; removing')
            subprocess.run(['docker', 'rm', '-f'] + left, stdout=subprocess.DEVNULL)

    def cleanup(self):
        for s in list(self.servers_alive):
            try:
                self.stop(s)
            except Exception as e:  # keep cleaning
                log('cleanup of %s: %s' % (s.name, e))
        left = existing_containers(self.all_containers)
        if left:
            subprocess.run(['docker', 'rm', '-f'] + left, stdout=subprocess.DEVNULL)
        if not os.environ.get('BENCH_DEBUG'):
            shutil.rmtree(self.work, ignore_errors=True)

    def rotate(self, lst, k):
        k %= len(lst)
        return lst[k:] + lst[:k]

    def record(self, op, server, dt):
        self.samples.setdefault((op, server), []).append(dt)

    # -- setup --

    def prepare(self):
        a = self.a
        src = a.rdocker
        if not os.access(src, os.X_OK):
            raise BenchError('rdocker binary %s not found or not executable '
                             '(cargo build --release, or --rdocker PATH)' % src)
        if a.snapshot:
            # Others may rebuild target/release concurrently; exec mode runs
            # rdocker's own executable again, so pin one build for the run.
            os.makedirs(os.path.join(self.work, 'bin'))
            self.rdocker = os.path.join(self.work, 'bin', 'autopkgtest-virt-rdocker')
            shutil.copy2(src, self.rdocker)
        else:
            self.rdocker = os.path.abspath(src)
        self.rdocker_sha = sha256_file(self.rdocker)[:16]
        self.api_version = run_text(['docker', 'version', '--format', '{{.Server.APIVersion}}'])
        if 'DOCKER_HOST' in os.environ:
            self.notes.append('DOCKER_HOST is set: the reference forces --remote mode')
        ops = set(self.ops)
        if ops & {'exec-stdout', 'exec-stdin', 'copydown-file', 'copyup-file', 'rss'}:
            log('generating %s random file' % human(a.size))
            self.blob_sha = make_blob(self.blob, a.size)
            if a.ceiling and 'copydown-file' in ops:
                self.blob_tar = os.path.join(self.work, 'blob.tar')
                with tarfile.open(self.blob_tar, 'w', format=tarfile.GNU_FORMAT) as t:
                    t.add(self.blob, arcname='ceil-down.bin')
            if ops & {'exec-stdin', 'rss'}:
                with open(self.blob, 'rb') as f:
                    p = subprocess.run([a.stdin_sink], stdin=f, stdout=subprocess.PIPE, check=True)
                # The same coreutils program on the host: the testbed's output must match.
                self.blob_sink = p.stdout.decode()
        if ops & {'copydown-tree', 'copyup-tree'}:
            log('generating tree of %d files of %s' % (a.tree_files, human(a.tree_file_size)))
            self.tree_sum = make_tree(self.tree, a.tree_files, a.tree_file_size)

    def probe_shared(self):
        """rdocker refuses --shared-dir where it cannot work; find out here."""
        try:
            s = self.start('rdocker-shared')
        except BenchError as e:
            return str(e)
        try:
            s.open()
            s.close()
        except BenchError as e:
            return str(e)
        finally:
            self.stop(s)
        return None

    # -- verification helpers --

    def tb_sha256(self, s, path):
        out = s.sh('sha256sum -- "$1"', path)
        return out.split()[0]

    def tb_tree(self, s, path):
        out = s.sh(TREE_SCRIPT, path).split()
        if len(out) != 4:
            raise BenchError('%s: tree summary %r' % (s.name, out))
        return (int(out[0]), int(out[1]), int(out[2]), out[3])

    def check(self, s, what, got, want):
        if got != want:
            raise BenchError('%s: WRONG RESULT for %s: got %r, expected %r' % (s.name, what, got, want))

    # -- operations --

    def settle(self):
        """Called right before the clock starts: flush what earlier steps
        wrote and deleted (ext4's online discard runs at journal commit), so
        that no operation pays for another's writeback, and wait until the
        CPUs are idle, so that none pays for what another server still does
        in the background (rdocker makes its spare testbed after open and
        revert; the daemon finishes removals)."""
        if self.a.sync:
            os.sync()
        if self.a.idle > 0:
            wait_idle(self.a.idle)

    def op_exec_true(self, s):
        t0 = time.perf_counter()
        p = subprocess.Popen(s.exec_cmd + ['true'], stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = p.communicate(timeout=self.a.timeout)
        dt = time.perf_counter() - t0
        if p.returncode != 0 or out or err:
            raise BenchError('%s: exec true: status %d, stdout %r, stderr %r'
                             % (s.name, p.returncode, out[:200], err[:2000]))
        return dt

    def rss_wrap(self):
        """GNU time around the exec process: ru_maxrss from our own wait4 would
        be wrong, as Linux folds the hiwater of the vfork()ed parent's memory
        (this script's, mmap included) into the child's at exec."""
        f = os.path.join(self.work, 'time.out')
        return ['/usr/bin/time', '-o', f, '-f', '%M', '--'], f

    def read_wrap(self, f):
        with open(f) as fh:
            return int(fh.read().split()[-1])

    def op_exec_stdout(self, s, rss=False):
        size = self.a.size
        wrap, tf = self.rss_wrap() if rss else ([], None)
        path = s.scratch + '/blob.bin'
        errf = tempfile.TemporaryFile()
        bad = None
        with open(self.blob, 'rb') as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as mm:
            self.settle()
            t0 = time.perf_counter()
            p = subprocess.Popen(wrap + s.exec_cmd + ['cat', '--', path], stdin=subprocess.DEVNULL,
                                 stdout=subprocess.PIPE, stderr=errf)
            fd = p.stdout.fileno()
            off = 0
            while True:
                chunk = os.read(fd, MiB)
                if not chunk:
                    break
                n = len(chunk)
                if bad is None and (off + n > size or chunk != mm[off:off + n]):
                    bad = 'bytes differ in [%d, %d)' % (off, off + n)
                off += n
            p.wait()
            dt = time.perf_counter() - t0
        p.stdout.close()
        err = read_err(errf)
        errf.close()
        if p.returncode != 0 or err:
            raise BenchError('%s: exec cat: status %d, stderr %r' % (s.name, p.returncode, err[:2000]))
        if bad is None and off != size:
            bad = 'got %d bytes' % off
        if bad:
            raise BenchError('%s: WRONG RESULT for exec stdout of %s: %s' % (s.name, human(size), bad))
        if rss:
            self.exec_rss[('exec-stdout', s.name)] = self.read_wrap(tf)
        return dt

    def op_exec_stdin(self, s, rss=False):
        wrap, tf = self.rss_wrap() if rss else ([], None)
        errf = tempfile.TemporaryFile()
        self.settle()
        t0 = time.perf_counter()
        feeder = subprocess.Popen(['cat', '--', self.blob], stdout=subprocess.PIPE)
        p = subprocess.Popen(wrap + s.exec_cmd + [self.a.stdin_sink], stdin=feeder.stdout,
                             stdout=subprocess.PIPE, stderr=errf)
        feeder.stdout.close()
        out = p.stdout.read()
        p.wait()
        dt = time.perf_counter() - t0
        feeder.wait()
        p.stdout.close()
        err = read_err(errf)
        errf.close()
        if p.returncode != 0 or err or feeder.returncode != 0:
            raise BenchError('%s: exec %s: status %d (feeder %d), stderr %r'
                             % (s.name, self.a.stdin_sink, p.returncode, feeder.returncode, err[:2000]))
        self.check(s, 'exec stdin (%s) output' % self.a.stdin_sink, out.decode(), self.blob_sink)
        if rss:
            self.exec_rss[('exec-stdin', s.name)] = self.read_wrap(tf)
        return dt

    def op_copydown_file(self, s):
        dst = s.scratch + '/down.bin'
        s.sh('rm -rf -- "$1"', dst)
        self.settle()
        _, dt = s.command('copydown', self.blob, dst, nresults=0)
        self.check(s, 'copydown file sha256', self.tb_sha256(s, dst), self.blob_sha)
        s.sh('rm -f -- "$1"', dst)
        return dt

    def op_copyup_file(self, s):
        dst = os.path.join(self.work, 'up-%s.bin' % s.name)
        if os.path.exists(dst):
            os.unlink(dst)
        self.settle()
        _, dt = s.command('copyup', s.scratch + '/blob.bin', dst, nresults=0)
        self.check(s, 'copyup file sha256', sha256_file(dst), self.blob_sha)
        os.unlink(dst)
        return dt

    # Each tree round copies to a new destination and deletes nothing until
    # the session ends. ext4 without a journal (this machine's disk) does not
    # reuse an inode freed less than 60 s ago (300 s while its inode table
    # block is unwritten) and steps past each one on every allocation in its
    # group: 5000 files created after deleting 5000 took 3.3-4.3 s against
    # 0.15 s in a fresh area (a plain Python loop). With a delete per round,
    # later rounds measured the previous round's deletion, not the copy.
    def op_copydown_tree(self, s):
        s.tree_rounds += 1
        dst = '%s/tree-%d' % (s.scratch, s.tree_rounds)
        s.sh('test ! -e "$1"', dst)
        self.settle()
        _, dt = s.command('copydown', self.tree + '/', dst + '/', nresults=0)
        self.check(s, 'copydown tree (files, dirs, others, digest)', self.tb_tree(s, dst), self.tree_sum)
        return dt

    def op_copyup_tree(self, s):
        s.tree_rounds += 1
        dst = os.path.join(self.work, 'up-tree-%s-%d' % (s.name, s.tree_rounds))
        self.settle()
        _, dt = s.command('copyup', s.scratch + '/src-tree/', dst + '/', nresults=0)
        self.check(s, 'copyup tree (files, dirs, others, digest)', tree_summary(dst), self.tree_sum)
        s.host_trees.append(dst)
        return dt

    # -- the raw API ceiling, same work and same checks --

    def ceil_exec_true(self, c):
        t0 = time.perf_counter()
        rc, out, err = c._exec(['true'])
        dt = time.perf_counter() - t0
        if rc != 0 or out or err:
            raise BenchError('api-ceiling: exec true: rc %s, %r %r' % (rc, out[:200], err[:200]))
        return dt

    def ceil_exec_stdout(self, c):
        size = self.a.size
        st = {'off': 0, 'bad': None}
        with open(self.blob, 'rb') as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as mm:
            self.settle()

            def take(chunk):
                off, n = st['off'], len(chunk)
                if st['bad'] is None and (off + n > size or chunk != mm[off:off + n]):
                    st['bad'] = 'bytes differ in [%d, %d)' % (off, off + n)
                st['off'] = off + n
            t0 = time.perf_counter()
            rc, _, err = c._exec(['cat', '--', c.s.scratch + '/blob.bin'], on_stdout=take)
            dt = time.perf_counter() - t0
        if rc != 0 or err or st['bad'] or st['off'] != size:
            raise BenchError('api-ceiling: WRONG RESULT for exec stdout: rc %s, %s, %d bytes, %r'
                             % (rc, st['bad'], st['off'], err[:500]))
        return dt

    def ceil_exec_stdin(self, c):
        with open(self.blob, 'rb') as f:
            self.settle()
            t0 = time.perf_counter()
            rc, out, err = c._exec([self.a.stdin_sink], stdin_file=f)
            dt = time.perf_counter() - t0
        if rc != 0 or err:
            raise BenchError('api-ceiling: exec stdin: rc %s, %r' % (rc, err[:500]))
        self.check(c, 'exec stdin (%s) output' % self.a.stdin_sink, out.decode(), self.blob_sink)
        return dt

    def ceil_copydown_file(self, c):
        dst = c.s.scratch + '/ceil-down.bin'
        c.s.sh('rm -f -- "$1"', dst)
        size = os.path.getsize(self.blob_tar)
        with open(self.blob_tar, 'rb') as f:
            self.settle()
            t0 = time.perf_counter()
            conn, st, rest = c._send('PUT', '/containers/%s/archive?path=%s' % (
                c.cid, urllib.parse.quote(c.s.scratch, safe='')), extra=b'Content-Type: application/x-tar\r\n',
                body_file=f, body_len=size)
            with conn:
                while conn.recv(65536):
                    pass
            dt = time.perf_counter() - t0
        if st != 200:
            raise BenchError('api-ceiling: archive PUT: %d %r' % (st, rest[:300]))
        self.check(c, 'copydown file sha256', self.tb_sha256(c.s, dst), self.blob_sha)
        c.s.sh('rm -f -- "$1"', dst)
        return dt

    def ceil_copyup_file(self, c):
        dst = os.path.join(self.work, 'ceil-up.tar')
        self.settle()
        t0 = time.perf_counter()
        conn, st, rest = c._send('GET', '/containers/%s/archive?path=%s' % (
            c.cid, urllib.parse.quote(c.s.scratch + '/blob.bin', safe='')))
        with conn, open(dst, 'wb') as f:
            f.write(rest)
            buf = bytearray(MiB)
            while True:
                n = conn.recv_into(buf)
                if not n:
                    break
                f.write(memoryview(buf)[:n])
        dt = time.perf_counter() - t0
        if st != 200:
            raise BenchError('api-ceiling: archive GET: %d' % st)
        with tarfile.open(dst) as t:
            m = t.next()
            h = hashlib.sha256()
            r = t.extractfile(m)
            while True:
                b = r.read(4 * MiB)
                if not b:
                    break
                h.update(b)
        self.check(c, 'copyup file sha256', h.hexdigest(), self.blob_sha)
        os.unlink(dst)
        return dt

    # -- phases --

    def session_setup(self, s):
        """Untimed: put the data the copyup/exec ops read into the testbed,
        through the server under test, and verify it."""
        ops = set(self.ops)
        s.sh('test -d "$1"', s.scratch)
        if s.name == 'rdocker-arm64':
            # Numbers for an emulated testbed must come from one.
            self.check(s, 'testbed machine', s.sh('uname -m').strip(), 'aarch64')
        if ops & {'exec-stdout', 'copyup-file'}:
            s.command('copydown', self.blob, s.scratch + '/blob.bin', nresults=0)
            self.check(s, 'setup copydown sha256', self.tb_sha256(s, s.scratch + '/blob.bin'), self.blob_sha)
        if 'copyup-tree' in ops:
            s.command('copydown', self.tree + '/', s.scratch + '/src-tree/', nresults=0)
            self.check(s, 'setup tree', self.tb_tree(s, s.scratch + '/src-tree'), self.tree_sum)

    def data_phase(self, servers):
        ops = [o for o in DATA_OPS if o in self.ops]
        if not ops:
            return
        sessions = []
        for name in servers:
            log('[data] starting and opening %s' % name)
            s = self.start(name)
            s.open()
            self.session_setup(s)
            sessions.append(s)
        if {'copydown-tree', 'copyup-tree'} & set(ops) and self.a.deleted_wait > 0:
            # See op_copydown_tree: whatever was deleted shortly before this
            # run (a previous run's testbeds, say) would slow the tree rounds.
            log('[data] waiting %d s for ext4 to reuse inodes deleted before the run'
                % self.a.deleted_wait)
            os.sync()
            time.sleep(self.a.deleted_wait)
        ceiling = None
        if self.a.ceiling and set(ops) & (BIG_OPS | {'exec-true'}):
            host = [s for s in sessions if s.name == 'rdocker']
            if host:
                ceiling = ApiCeiling(self.a.docker_socket, self.api_version, host[0])
                self.notes.append('raw API (ceiling): the same transfers done directly on the Engine API '
                                  'socket by this script (exec start hijack, archive PUT/GET), in the '
                                  'container of the rdocker session; its exec `true` runs `true` bare, '
                                  'without the environment/cleanup wrapper both servers add')
        for r in range(self.a.rounds):
            order = self.rotate(sessions, r)
            for op in ops:
                if op == 'exec-true':
                    self.settle()
                    for k in range(self.a.exec_reps):
                        for s in self.rotate(order + ([ceiling] if ceiling else []), k):
                            fn = self.ceil_exec_true if s is ceiling else self.op_exec_true
                            self.record(op, s.name, fn(s))
                    log('[data] round %d/%d exec-true x%d: %s' % (
                        r + 1, self.a.rounds, self.a.exec_reps, ', '.join(
                            '%s %.1f ms' % (s.name, 1000 * statistics.median(
                                self.samples[(op, s.name)][-self.a.exec_reps:]))
                            for s in order + ([ceiling] if ceiling else []))))
                    continue
                fn = getattr(self, 'op_' + op.replace('-', '_'))
                for s in order + ([ceiling] if ceiling and op in BIG_OPS else []):
                    if s is ceiling:
                        dt = getattr(self, 'ceil_' + op.replace('-', '_'))(s)
                    else:
                        dt = fn(s)
                    self.record(op, s.name, dt)
                    log('[data] round %d/%d %-13s %-14s %8.3f s' % (r + 1, self.a.rounds, op, s.name, dt))
        for s in sessions:
            s.close()
            self.stop(s)
            for t in s.host_trees:
                shutil.rmtree(t)

    def lifecycle_phase(self, servers):
        ops = [o for o in LIFECYCLE_OPS if o in self.ops]
        if not ops:
            return
        for r in range(self.a.lifecycle_rounds):
            order = self.rotate(servers, r)
            sessions = []
            for name in order:
                s = self.start(name)
                self.settle()
                dt = s.open()
                if 'open' in ops:
                    self.record('open', name, dt)
                    log('[life] round %d/%d open   %-14s %8.3f s' % (r + 1, self.a.lifecycle_rounds, name, dt))
                sessions.append(s)
            for s in sessions:
                # autopkgtest's first commands after open; also dirties the testbed
                s.sh('echo x > /etc/rdocker-bench-marker; test -d "$1"', s.scratch)
            if 'revert' in ops:
                for s in sessions:
                    old_ids = set(container_ids(s.exec_cmd))
                    old_scratch = s.scratch
                    self.settle()
                    dt = s.revert()
                    self.record('revert', s.name, dt)
                    log('[life] round %d/%d revert %-14s %8.3f s' % (r + 1, self.a.lifecycle_rounds, s.name, dt))
                    self.check(s, 'scratch after revert', s.scratch, old_scratch)
                    out = s.sh('test ! -e /etc/rdocker-bench-marker && test -d "$1" && echo reverted', s.scratch)
                    self.check(s, 'testbed reverted', out.strip(), 'reverted')
                    new_ids = set(container_ids(s.exec_cmd))
                    if old_ids and new_ids and old_ids != new_ids:
                        # rdocker ends the old testbed at once and removes it
                        # in the background; what matters is that nothing of
                        # it still runs once the new one is in use.
                        if existing_containers(old_ids, running=True):
                            self.notes.append('%s: old container still running after revert answered '
                                              'and a command ran in the new one' % s.name)
                        elif existing_containers(old_ids):
                            self.notes.append('%s: old container stopped but not yet removed right after '
                                              'revert answered (removal runs in the background)' % s.name)
            for s in sessions:
                ids = set(container_ids(s.exec_cmd))
                self.settle()
                dt = s.close()
                if 'close' in ops:
                    self.record('close', s.name, dt)
                    log('[life] round %d/%d close  %-14s %8.3f s' % (r + 1, self.a.lifecycle_rounds, s.name, dt))
                still = existing_containers(ids)
                if still:
                    self.notes.append('%s: container still exists right after close answered (round %d)'
                                      % (s.name, r + 1))
            for s in sessions:
                self.stop(s)

    def rss_phase(self, servers):
        if 'rss' not in self.ops:
            return
        size = self.a.rss_size
        big = os.path.join(self.work, 'rss-blob.bin')
        log('[rss] generating %s random file' % human(size))
        big_sha = make_blob(big, size)
        for name in servers:
            s = self.start(name)
            s.open()
            # Exec-mode process peak RSS over a --size stream each way.
            s.command('copydown', self.blob, s.scratch + '/blob.bin', nresults=0)
            self.check(s, 'setup copydown sha256', self.tb_sha256(s, s.scratch + '/blob.bin'), self.blob_sha)
            self.op_exec_stdout(s, rss=True)
            self.op_exec_stdin(s, rss=True)
            log('[rss] %s exec-mode peak RSS: stdout %d KiB, stdin %d KiB' % (
                name, self.exec_rss[('exec-stdout', name)], self.exec_rss[('exec-stdin', name)]))
            if not name.startswith('rdocker'):
                s.close()
                self.stop(s)
                continue
            pid = s.pid
            self.rss[(name, 'after open + exec runs')] = vm_hwm_kib(pid)
            can_reset = reset_hwm(pid)
            dst = s.scratch + '/rss.bin'
            self.settle()
            _, dt = s.command('copydown', big, dst, nresults=0)
            if can_reset:
                self.rss[(name, 'copydown %s' % human(size))] = vm_hwm_kib(pid)
            self.rss[(name, 'copydown-time')] = dt
            log('[rss] %s copydown %s %.2f s, VmHWM %s KiB' % (name, human(size), dt, vm_hwm_kib(pid)))
            self.check(s, 'rss copydown sha256', self.tb_sha256(s, dst), big_sha)
            up = os.path.join(self.work, 'rss-up.bin')
            if can_reset:
                reset_hwm(pid)
            self.settle()
            _, dt = s.command('copyup', dst, up, nresults=0)
            if can_reset:
                self.rss[(name, 'copyup %s' % human(size))] = vm_hwm_kib(pid)
            self.rss[(name, 'copyup-time')] = dt
            log('[rss] %s copyup %s %.2f s, VmHWM %s KiB' % (name, human(size), dt, vm_hwm_kib(pid)))
            self.check(s, 'rss copyup sha256', sha256_file(up), big_sha)
            os.unlink(up)
            # The brief's measure: VmHWM read just before quit.
            self.rss[(name, 'before quit')] = vm_hwm_kib(pid)
            if not can_reset:
                self.notes.append('could not reset VmHWM via /proc/PID/clear_refs: '
                                  'the "before quit" peak includes open and both copies')
            s.close()
            self.stop(s)
        os.unlink(big)

    # -- report --

    def med(self, op, server):
        v = self.samples.get((op, server))
        return statistics.median(v) if v else None

    def fmt_t(self, t):
        if t is None:
            return '–'
        if t < 1:
            return '%.0f ms' % (t * 1000) if t >= 0.1 else '%.1f ms' % (t * 1000)
        return '%.2f s' % t

    def size_of(self, op):
        return self.a.size if op in BIG_OPS else None

    def cell(self, op, server):
        t = self.med(op, server)
        if t is None:
            return '–'
        sz = self.size_of(op)
        if sz:
            return '%s (%.0f MiB/s)' % (self.fmt_t(t), sz / MiB / t)
        return self.fmt_t(t)

    def target(self, op):
        """(text, met or None)."""
        rd = self.med(op, 'rdocker')
        refs = [self.med(op, r) for r in REFERENCES if self.med(op, r) is not None]
        best = min(refs) if refs else None
        if rd is None:
            return ('', None)
        if op == 'revert':
            return ('≤ 0.5 s', rd <= 0.5)
        if op == 'conformance' and best is not None:
            return ('≤ 0.4× ref (%.2f×)' % (rd / best), rd <= 0.4 * best)
        if op == 'e2e':
            return ('faster than ref (%.2f×)' % (rd / best), rd <= best) if best else ('', None)
        if op == 'close':
            return ('≤ 0.3 s', rd <= 0.3)
        if best is None:
            return ('', None)
        if op == 'exec-true':
            return ('≤ 0.7× ref (%.2f×)' % (rd / best), rd <= 0.7 * best)
        if op in ('exec-stdout', 'exec-stdin'):
            return ('≥ 1.4× ref MiB/s (%.2f×)' % (best / rd), best / rd >= 1.4)
        if op.startswith('copy'):
            api = self.med(op, 'rdocker-api')
            if api is None:
                return ('≤ faster ref (%.2f×)' % (rd / best), rd <= best)
            return ('≤ faster ref (%.2f×; API only %.2f×)' % (rd / best, api / best),
                    rd <= best and api <= best)
        return ('', None)

    def op_label(self, op):
        a = self.a
        return {
            'open': 'open',
            'exec-true': 'exec `true`',
            'exec-stdout': 'exec stdout %s (`cat`)' % human(a.size),
            'exec-stdin': 'exec stdin %s (`%s`)' % (human(a.size), a.stdin_sink),
            'copydown-file': 'copydown %s file' % human(a.size),
            'copyup-file': 'copyup %s file' % human(a.size),
            'copydown-tree': 'copydown tree %d × %s' % (a.tree_files, human(a.tree_file_size)),
            'copyup-tree': 'copyup tree %d × %s' % (a.tree_files, human(a.tree_file_size)),
            'revert': 'revert',
            'close': 'close',
            'e2e': 'autopkgtest of tests/pkg/rdocker-hello',
            'conformance': "upstream suite (DockerRunner's 43 tests)",
        }[op]

    def report(self, servers, cmdline, started):
        out = []
        p = out.append
        p('## Benchmark: rdocker vs autopkgtest-virt-docker')
        p('')
        p('Command: `%s`' % cmdline)
        p('')
        for line in machine_info(self.rdocker, self.a.rdocker, self.rdocker_sha):
            p('- ' + line)
        p('- started %s, took %.0f s; load average %s at start, %s at end (other work on the '
          'machine shows up here)' % (
              started, time.time() - self.t_start, ' '.join('%.2f' % x for x in self.load_start),
              ' '.join('%.2f' % x for x in os.getloadavg())))
        p('- rounds: %d data rounds (exec `true`: %d reps per round), %d open/revert/close rounds; '
          'servers interleaved, median reported' % (self.a.rounds, self.a.exec_reps, self.a.lifecycle_rounds))
        for name, why in self.skipped.items():
            p('- %s skipped: %s' % (LABELS[name], why))
        p('')
        shown = [s for s in servers]
        if any(k[1] == 'api-ceiling' for k in self.samples):
            shown.append('api-ceiling')
        refs = [r for r in REFERENCES if r in shown]
        ops = [o for o in ALL_OPS if o != 'rss' and any((o, s) in self.samples for s in shown)]
        if ops:
            hdr = ['Operation'] + [LABELS[s] for s in shown]
            emulated = 'rdocker' in shown and 'rdocker-arm64' in shown
            if emulated:
                hdr += ['arm64 (qemu) ÷ native']
            if 'rdocker' in shown:
                hdr += ['%s ÷ rdocker' % LABELS[r] for r in refs] + ['Target (rdocker)', 'Met']
            p('| ' + ' | '.join(hdr) + ' |')
            aligns = ['---'] + ['---:'] * (len(hdr) - 1)
            if 'rdocker' in shown:
                aligns[-2:] = ['---', '---']
            p('|' + '|'.join(aligns) + '|')
            for op in ops:
                row = [self.op_label(op)] + [self.cell(op, s) for s in shown]
                if emulated:
                    rd, em = self.med(op, 'rdocker'), self.med(op, 'rdocker-arm64')
                    row.append('%.1f×' % (em / rd) if rd and em is not None else '–')
                if 'rdocker' in shown:
                    rd = self.med(op, 'rdocker')
                    for r in refs:
                        t = self.med(op, r)
                        row.append('%.2f' % (t / rd) if t is not None and rd else '–')
                    text, met = self.target(op)
                    row += [text, {True: 'yes', False: '**no**', None: ''}[met]]
                p('| ' + ' | '.join(row) + ' |')
            p('')
            p('Ratios are reference time ÷ rdocker time: above 1 means rdocker is faster. '
              'Throughput is size ÷ median time, start to exit/`ok` included.')
            if emulated:
                p('')
                p('arm64 (qemu) ÷ native: the same rdocker build with %s --platform linux/arm64 '
                  '(qemu-user-static through binfmt_misc) against %s: what emulating the testbed '
                  'costs.' % (self.a.arm64_image, self.a.image))
            p('')
            p('Spread (min / median / max, n samples):')
            p('')
            p('| Operation | ' + ' | '.join(LABELS[s] for s in shown) + ' |')
            p('|---|' + '|'.join(['---:'] * len(shown)) + '|')
            for op in ops:
                cells = []
                for s in shown:
                    v = self.samples.get((op, s))
                    cells.append('%s / %s / %s, n=%d' % (self.fmt_t(min(v)), self.fmt_t(statistics.median(v)),
                                                          self.fmt_t(max(v)), len(v)) if v else '–')
                p('| %s | %s |' % (self.op_label(op), ' | '.join(cells)))
            p('')
        if self.exec_rss:
            p('Peak RSS of the exec-mode process (the print-execute-command argv[0]: rdocker '
              '--internal-exec, or the docker CLI), measured with GNU time -f %M:')
            p('')
            p('| Operation | ' + ' | '.join(LABELS[s] for s in shown) + ' |')
            p('|---|' + '|'.join(['---:'] * len(shown)) + '|')
            for op in ('exec-stdout', 'exec-stdin'):
                if any((op, s) in self.exec_rss for s in shown):
                    p('| %s | %s |' % (self.op_label(op), ' | '.join(
                        '%.1f MiB' % (self.exec_rss[(op, s)] / 1024) if (op, s) in self.exec_rss else '–'
                        for s in shown)))
            p('')
        if self.rss:
            p('rdocker server process peak RSS (VmHWM of /proc/PID/status; reset between phases '
              'via /proc/PID/clear_refs), target ≤ 16 MiB while copying %s:' % human(self.a.rss_size))
            p('')
            p('| Server | Phase | VmHWM | Time | Met |')
            p('|---|---|---:|---:|---|')
            for (name, phase), v in self.rss.items():
                if phase.endswith('-time'):
                    continue
                tkey = 'copydown-time' if phase.startswith('copydown') else \
                    'copyup-time' if phase.startswith('copyup') else None
                tt = self.rss.get((name, tkey)) if tkey else None
                tcell = '%.2f s (%.0f MiB/s)' % (tt, self.a.rss_size / MiB / tt) if tt else ''
                met = '' if phase.startswith('after open') else ('yes' if v <= 16 * 1024 else '**no**')
                p('| %s | %s | %.1f MiB | %s | %s |' % (LABELS[name], phase, v / 1024, tcell, met))
            p('')
        if self.notes:
            p('Notes:')
            p('')
            for n in dict.fromkeys(self.notes):
                p('- ' + n)
            p('')
        return '\n'.join(out)

    def run(self, servers):
        self.t_start = time.time()
        self.load_start = os.getloadavg()
        self.prepare()
        if 'rdocker-shared' in servers:
            log('probing rdocker --shared-dir')
            why = self.probe_shared()
            if why:
                servers.remove('rdocker-shared')
                self.skipped['rdocker-shared'] = why
                log('rdocker-shared skipped: ' + why)
        self.data_phase(servers)
        self.lifecycle_phase(servers)
        self.rss_phase(servers)
        self.suite_phase(servers)
        return servers

    # -- whole suites --

    def suite_argv(self, op, server, out):
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        virt = self.rdocker if server == 'rdocker' else REFERENCE
        if op == 'e2e':
            return [['autopkgtest', os.path.join(here, 'tests/pkg/rdocker-hello') + '/',
                     '-o', out, '--', virt, self.a.user_image]]
        # conformance.py names the server; the snapshot goes first on PATH.
        return [['python3', os.path.join(here, 'ci/conformance.py'), self.a.autopkgtest_src,
                 self.a.image, 'rdocker' if server == 'rdocker' else 'docker']]

    def suite_phase(self, servers):
        ops = [o for o in SUITE_OPS if o in self.ops]
        # The default (shared-directory) reference mode is what autopkgtest
        # users get; --remote would only add its slower copies.
        names = [s for s in ('rdocker', 'docker') if s in servers]
        env = dict(os.environ, PATH=os.path.dirname(self.rdocker) + ':' + os.environ['PATH'])
        for op in ops:
            for r in range(self.a.suite_rounds):
                for name in self.rotate(names, r):
                    out = tempfile.mkdtemp(prefix='suite-', dir=self.work)
                    log('%s: %s, round %d' % (op, name, r + 1))
                    t = time.monotonic()
                    for argv in self.suite_argv(op, name, os.path.join(out, 'out')):
                        p = subprocess.run(argv, env=env, stdout=subprocess.PIPE,
                                           stderr=subprocess.STDOUT, text=True)
                        dt = time.monotonic() - t
                        if op == 'e2e' and p.returncode != 0:
                            raise BenchError('%s e2e run failed (exit %d): %s' % (
                                name, p.returncode, p.stdout[-2000:]))
                        if op == 'conformance':
                            # Known failures (ci/conformance-expected-failures.txt)
                            # fail for both servers alike; the count is reported.
                            line = [l for l in p.stdout.splitlines() if l.startswith('conformance:')]
                            self.notes.append('conformance with %s: %s' % (
                                LABELS[name], line[0][len('conformance: '):] if line else
                                'no summary (exit %d)' % p.returncode))
                    if op == 'e2e' and not os.path.exists(os.path.join(out, 'out', 'artifacts', 'greeting')):
                        raise BenchError('%s e2e run left no artifacts' % name)
                    self.record(op, name, dt)
                    shutil.rmtree(out, ignore_errors=True)


def run_text(argv):
    try:
        p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, timeout=30)
        return p.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return '?'


def machine_info(rdocker, rdocker_src, sha):
    cpu = '?'
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    cpu = line.split(':', 1)[1].strip()
                    break
    except OSError:
        pass
    mem = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / (1 << 30)
    dv = run_text(['docker', 'version', '--format',
                   'server {{.Server.Version}} (API {{.Server.APIVersion}}), '
                   'client {{.Client.Version}}'])
    drv = run_text(['docker', 'info', '--format', '{{.Driver}}'])
    src_dir = os.path.dirname(os.path.abspath(rdocker_src))
    git = run_text(['git', '-C', src_dir, 'describe', '--always', '--dirty'])
    return [
        'machine: %d CPUs (nproc), %s, %.1f GiB RAM, kernel %s' % (
            os.cpu_count(), cpu, mem, platform.release()),
        'docker: %s, storage driver %s, CLI %s' % (dv, drv, shutil.which('docker')),
        'rdocker: %s (%s, sha256 %s…, tree %s)' % (
            rdocker_src, run_text([rdocker, '--version']), sha, git),
        'reference: %s (autopkgtest %s)' % (
            REFERENCE, run_text(['dpkg-query', '-W', '-f', '${Version}', 'autopkgtest'])),
        'python %s' % platform.python_version(),
    ]


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--rdocker', default='target/release/autopkgtest-virt-rdocker',
                    help='rdocker binary (default %(default)s)')
    ap.add_argument('--baseline', default=None, metavar='PATH',
                    help='another rdocker binary, run as the server rdocker-base '
                         '(name it in --servers): a before/after comparison in one run')
    ap.add_argument('--no-snapshot', dest='snapshot', action='store_false',
                    help='run --rdocker in place instead of a private copy (a concurrent '
                    'cargo build could otherwise swap it mid-run)')
    ap.add_argument('--servers', default=','.join(ALL_SERVERS),
                    help='comma-separated, from %s (default all; rdocker-shared is skipped '
                    'with the reason when rdocker refuses --shared-dir); also rdocker-base '
                    '(--baseline), rdocker-arm64 (--arm64-image through qemu) and rdocker-bridge '
                    '(this build with --network bridge)' % ','.join(ALL_SERVERS))
    ap.add_argument('--ops', default=None,
                    help='comma-separated, from %s (default all but conformance)' % ','.join(ALL_OPS))
    ap.add_argument('--rss-only', action='store_true', help='same as --ops rss')
    ap.add_argument('--rounds', type=int, default=None, help='data rounds (default 5, --quick 2)')
    ap.add_argument('--lifecycle-rounds', type=int, default=None,
                    help='rounds of open/revert/close (default 3, --quick 1); the reference '
                    'takes about 10 s for each revert and close')
    ap.add_argument('--exec-reps', type=int, default=None,
                    help='exec `true` runs per server per round (default 20, --quick 5)')
    ap.add_argument('--image', default='rdocker-test/autopkgtest:bookworm')
    ap.add_argument('--arm64-image', default='rdocker-test/autopkgtest:bookworm-arm64',
                    help='image of the rdocker-arm64 server, run with --platform linux/arm64 '
                    '(default %(default)s; ci/provision-foreign.sh builds it)')
    ap.add_argument('--user-image', default='rdocker-test/user:bookworm',
                    help='image for the e2e autopkgtest run (one with a normal user)')
    ap.add_argument('--suite-rounds', type=int, default=1,
                    help='runs of each whole suite per server (default %(default)s)')
    ap.add_argument('--autopkgtest-src', default='/var/cache/rdocker-test/autopkgtest-src',
                    help='unpacked autopkgtest source, for conformance')
    ap.add_argument('--size', type=int, default=None,
                    help='bytes for the big file and exec streams (default 256 MiB, --quick 16 MiB)')
    ap.add_argument('--rss-size', type=int, default=None,
                    help='bytes copied for the RSS measure (default 1 GiB, --quick 64 MiB)')
    ap.add_argument('--tree-files', type=int, default=None, help='default 5000, --quick 300')
    ap.add_argument('--tree-file-size', type=int, default=1024)
    ap.add_argument('--stdin-sink', choices=['cksum', 'sha256sum'], default='cksum',
                    help="testbed command that consumes exec stdin (default cksum: bookworm's "
                    'sha256sum runs at ~130 MB/s here and would hide the transport)')
    ap.add_argument('--no-ceiling', dest='ceiling', action='store_false',
                    help='skip the raw Engine API ceiling column for the big transfers')
    ap.add_argument('--docker-socket', default='/var/run/docker.sock',
                    help='daemon socket for the ceiling column (default %(default)s)')
    ap.add_argument('--no-sync', dest='sync', action='store_false',
                    help='do not sync(2) before each timed data operation')
    ap.add_argument('--idle', type=float, default=0.85, metavar='FRACTION',
                    help='before each timed operation, wait (up to 10 s) until the CPUs are this '
                         'idle; 0: do not wait')
    ap.add_argument('--wait-load', type=float, default=None, metavar='LOAD',
                    help='before starting, wait (up to --wait-max s) until the 1-minute load '
                    'average is below LOAD')
    ap.add_argument('--wait-max', type=int, default=1800)
    ap.add_argument('--deleted-wait', type=int, default=361, metavar='SECONDS',
                    help='before tree copies, wait this long for inodes deleted before the run '
                    'to become reusable (ext4 without a journal: up to 360 s; 0: do not wait)')
    ap.add_argument('--timeout', type=int, default=900, help='seconds per protocol command or exec')
    ap.add_argument('--quick', action='store_true', help='small sizes and few rounds: a smoke run')
    ap.add_argument('--json', help='also write raw samples to this file')
    ap.add_argument('--output', help='also write the Markdown report to this file')
    a = ap.parse_args()

    def d(v, full, quick):
        return v if v is not None else (quick if a.quick else full)
    a.rounds = d(a.rounds, 5, 2)
    a.lifecycle_rounds = d(a.lifecycle_rounds, 3, 1)
    a.exec_reps = d(a.exec_reps, 20, 5)
    a.size = d(a.size, 256 * MiB, 16 * MiB)
    a.rss_size = d(a.rss_size, 1024 * MiB, 64 * MiB)
    a.tree_files = d(a.tree_files, 5000, 300)
    servers = [s for s in a.servers.split(',') if s]
    for s in servers:
        if s not in ALL_SERVERS + EXTRA_SERVERS:
            ap.error('unknown server %r' % s)
    ops = DEFAULT_OPS if a.ops is None else [o for o in a.ops.split(',') if o]
    if a.rss_only:
        ops = ['rss']
    for o in ops:
        if o not in ALL_OPS:
            ap.error('unknown operation %r' % o)
    if a.rounds < 1 or a.lifecycle_rounds < 0 or a.exec_reps < 1:
        ap.error('rounds must be positive')
    return a, servers, ops


def main():
    a, servers, ops = parse_args()
    cmdline = ' '.join(shlex.quote(x) for x in [sys.argv[0]] + sys.argv[1:])
    started = time.strftime('%Y-%m-%d %H:%M:%S %Z')
    if a.wait_load is not None:
        deadline = time.monotonic() + a.wait_max
        while os.getloadavg()[0] >= a.wait_load and time.monotonic() < deadline:
            log('load average %.2f >= %.2f, waiting' % (os.getloadavg()[0], a.wait_load))
            time.sleep(30)
    b = Bench(a)
    b.ops = ops

    def on_signal(sig, frame):
        raise KeyboardInterrupt('signal %d' % sig)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    try:
        servers = b.run(servers)
        text = b.report(servers, cmdline, started)
    except BenchError as e:
        log('bench: ERROR: %s' % e)
        return 1
    except KeyboardInterrupt:
        log('bench: interrupted, cleaning up')
        return 130
    finally:
        b.cleanup()
    print(text)
    if a.output:
        with open(a.output, 'w') as f:
            f.write(text + '\n')
    if a.json:
        with open(a.json, 'w') as f:
            json.dump({
                'command': cmdline, 'started': started,
                'samples': {'%s %s' % k: v for k, v in b.samples.items()},
                'exec_rss_kib': {'%s %s' % k: v for k, v in b.exec_rss.items()},
                'server_rss': {'%s %s' % k: v for k, v in b.rss.items()},
                'skipped': b.skipped, 'notes': b.notes,
            }, f, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
