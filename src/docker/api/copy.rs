//! Copies through the archive endpoints, streamed: tar is produced and
//! consumed on blocking threads, and bridged to the HTTP bodies through
//! bounded channels, so memory stays flat whatever the size.

use anyhow::{anyhow, bail, Context, Result};
use bollard::query_parameters::{
    DownloadFromContainerOptionsBuilder, UploadToContainerOptionsBuilder,
};
use bytes::Bytes;
use futures_util::StreamExt;
use std::ffi::OsStr;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use tokio::sync::mpsc;

use super::exec::{Bounded, Captured, Overflow};
use crate::debug;
use crate::docker::archive::{self, SingleFile};
use crate::docker::cancel::{self, CancelOnDrop};
use crate::docker::daemon::client::{status_of, Client};
use crate::docker::names::{random_hex, split_testbed_path};

const CHUNK: usize = 256 * 1024;

/// A Write that hands chunks to another thread; `send` says whether the
/// other side still takes them.
pub struct ChanWriter {
    send: Box<dyn FnMut(Bytes) -> bool + Send>,
    cancel: Option<Arc<AtomicBool>>,
}

impl ChanWriter {
    fn tokio(tx: mpsc::Sender<io::Result<Bytes>>) -> ChanWriter {
        ChanWriter {
            send: Box::new(move |b| tx.blocking_send(Ok(b)).is_ok()),
            cancel: None,
        }
    }

    pub fn std(tx: std::sync::mpsc::SyncSender<io::Result<Bytes>>) -> ChanWriter {
        ChanWriter {
            send: Box::new(move |b| tx.send(Ok(b)).is_ok()),
            cancel: None,
        }
    }

    /// Failing every write once `cancel` is set (cancel.rs).
    pub fn until(mut self, cancel: Arc<AtomicBool>) -> ChanWriter {
        self.cancel = Some(cancel);
        self
    }
}

impl Write for ChanWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(c) = &self.cancel {
            cancel::check(c)?;
        }
        if !(self.send)(Bytes::copy_from_slice(buf)) {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the other side of the copy stopped",
            ));
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A Read over chunks from another thread; `next` gives None at the end.
pub struct ChanReader {
    next: Box<dyn FnMut() -> Option<io::Result<Bytes>> + Send>,
    cur: Bytes,
    cancel: Option<Arc<AtomicBool>>,
}

impl ChanReader {
    fn tokio(mut rx: mpsc::Receiver<io::Result<Bytes>>) -> ChanReader {
        ChanReader {
            next: Box::new(move || rx.blocking_recv()),
            cur: Bytes::new(),
            cancel: None,
        }
    }

    pub fn std(rx: std::sync::mpsc::Receiver<io::Result<Bytes>>) -> ChanReader {
        ChanReader {
            next: Box::new(move || rx.recv().ok()),
            cur: Bytes::new(),
            cancel: None,
        }
    }

    /// Failing every read once `cancel` is set (cancel.rs).
    pub fn until(mut self, cancel: Arc<AtomicBool>) -> ChanReader {
        self.cancel = Some(cancel);
        self
    }
}

impl Read for ChanReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(c) = &self.cancel {
            cancel::check(c)?;
        }
        while self.cur.is_empty() {
            match (self.next)() {
                Some(Ok(b)) => self.cur = b,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        let _ = self.cur.split_to(n);
        Ok(n)
    }
}

/// Create the scratch directory, mode 1777 like the reference's, with one
/// archive upload instead of a `mkdir` exec.
pub async fn make_scratch_dir(client: &Client, container: &str, path: &str) -> Result<()> {
    let (parent, name) = split_testbed_path(path);
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o1777);
    h.set_size(0);
    h.set_mtime(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    );
    let mut b = tar::Builder::new(Vec::new());
    b.append_data(&mut h, format!("{name}/"), std::io::empty())?;
    let body = b.into_inner()?;
    let opts = bollard::query_parameters::UploadToContainerOptionsBuilder::new()
        .path(&parent)
        .build();
    client
        .docker
        .upload_to_container(container, Some(opts), bollard::body_full(body.into()))
        .await
        .with_context(|| format!("cannot create the scratch directory {path} in the testbed"))
}

/// A small text file of the testbed's, such as /etc/passwd, through the
/// archive endpoint; None if it is not there. Bounded: its size is the
/// testbed's to choose.
pub async fn read_small_file(
    client: &Client,
    container: &str,
    path: &str,
) -> Result<Option<String>> {
    const LIMIT: u64 = 1 << 20;
    let dir = std::env::temp_dir().join(format!("rdocker-read-{}", random_hex(6)));
    std::fs::create_dir(&dir)?;
    let file = dir.join("f");
    let got = pull(client, container, path, &file, false).await;
    let text = got.and_then(|_| {
        let f = std::fs::File::open(&file)?;
        if f.metadata()?.len() > LIMIT {
            bail!("{path} in the testbed is over {} MiB", LIMIT >> 20);
        }
        let mut t = String::new();
        f.take(LIMIT).read_to_string(&mut t)?;
        Ok(t)
    });
    let _ = std::fs::remove_dir_all(&dir);
    match text {
        Ok(t) => Ok(Some(t)),
        Err(e) => {
            debug!("no {path} in the testbed: {e:#}");
            Ok(None)
        }
    }
}

fn check_push_source(host: &Path, dir: bool) -> Result<()> {
    let md = std::fs::metadata(host)
        .with_context(|| format!("cannot copy {} into the testbed", host.display()))?;
    if dir && !md.is_dir() {
        bail!(
            "{} is not a directory, but the paths end in /",
            host.display()
        );
    }
    if !dir && md.is_dir() {
        bail!(
            "{} is a directory: end both paths in / to copy a directory",
            host.display()
        );
    }
    Ok(())
}

/// The archive of `src` (a file, or with `dir` a tree) named `name`,
/// written to `out` in CHUNK-sized pieces.
fn write_archive<W: Write>(out: W, src: &Path, name: &str, dir: bool) -> Result<()> {
    let w = BufWriter::with_capacity(CHUNK, out);
    let w = if dir {
        archive::write_tree(w, src, name)
    } else {
        archive::write_file(w, src, name)
    }?;
    w.into_inner()
        .map(drop)
        .map_err(|e| anyhow!("{}", e.error()))
}

/// copydown: `host` (a file, or with `dir` a directory) to `testbed`.
pub async fn push(
    client: &Client,
    container: &str,
    host: &Path,
    testbed: &str,
    dir: bool,
) -> Result<()> {
    check_push_source(host, dir)?;
    let (parent, name) = split_testbed_path(testbed);
    if !dir && name.is_empty() {
        bail!("cannot copy a file to {testbed:?}: it names no file");
    }
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(4);
    let src = host.to_path_buf();
    let (_cancel, flag) = CancelOnDrop::new();
    let producer = tokio::task::spawn_blocking(move || {
        let r = write_archive(ChanWriter::tokio(tx.clone()).until(flag), &src, &name, dir);
        if let Err(e) = &r {
            // Fail the upload rather than let a short archive look whole.
            let _ = tx.blocking_send(Err(io::Error::other(format!("{e:#}"))));
        }
        r
    });
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let opts = UploadToContainerOptionsBuilder::new().path(&parent).build();
    let upload =
        client
            .docker
            .upload_to_container(container, Some(opts), bollard::body_try_stream(body));
    let (uploaded, produced) = tokio::join!(upload, producer);
    produced.context("the archive writer panicked")??;
    uploaded.map_err(|e| {
        let hint = match status_of(&e) {
            Some(404) => format!(": {parent} does not exist in the testbed"),
            _ => String::new(),
        };
        anyhow::Error::new(e).context(format!("cannot copy into {testbed} in the testbed{hint}"))
    })
}

/// Start a download, failing before anything touches the host when the
/// testbed path is not there.
async fn download(
    client: &Client,
    container: &str,
    path: &str,
) -> Result<(
    Bytes,
    impl futures_util::Stream<Item = Result<Bytes, bollard::errors::Error>>,
)> {
    let opts = DownloadFromContainerOptionsBuilder::new()
        .path(path)
        .build();
    let mut stream = Box::pin(client.docker.download_from_container(container, Some(opts)));
    let first = match stream.next().await {
        Some(Ok(b)) => b,
        Some(Err(e)) => {
            let why = match status_of(&e) {
                Some(404) => format!("{path} does not exist in the testbed"),
                _ => format!("cannot read {path} from the testbed"),
            };
            return Err(anyhow::Error::new(e).context(why));
        }
        None => bail!("the daemon sent nothing for {path}"),
    };
    Ok((first, stream))
}

/// Feed a download into a blocking consumer of its tar stream.
async fn consume<T: Send + 'static>(
    first: Bytes,
    stream: impl futures_util::Stream<Item = Result<Bytes, bollard::errors::Error>> + Unpin,
    f: impl FnOnce(ChanReader) -> Result<T> + Send + 'static,
) -> Result<T> {
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(4);
    let (_cancel, flag) = CancelOnDrop::new();
    let consumer = tokio::task::spawn_blocking(move || f(ChanReader::tokio(rx).until(flag)));
    let feed = async move {
        if tx.send(Ok(first)).await.is_err() {
            return;
        }
        // The body comes in small frames: what is ready goes over in one
        // piece, so that the reader thread wakes once per batch, not per
        // frame.
        let mut batches = stream.ready_chunks(64);
        while let Some(items) = batches.next().await {
            let mut joined = bytes::BytesMut::new();
            let mut failed = None;
            for item in items {
                match item {
                    Ok(b) => joined.extend_from_slice(&b),
                    Err(e) => {
                        failed = Some(io::Error::other(format!(
                            "download from the testbed failed: {e}"
                        )));
                        break;
                    }
                }
            }
            if !joined.is_empty() && tx.send(Ok(joined.freeze())).await.is_err() {
                return;
            }
            if let Some(e) = failed {
                let _ = tx.send(Err(e)).await;
                return;
            }
        }
    };
    let (_, out) = tokio::join!(feed, consumer);
    out.context("the archive reader panicked")?
}

/// copyup: `testbed` (a file, or with `dir` a directory) to `host`.
pub async fn pull(
    client: &Client,
    container: &str,
    testbed: &str,
    host: &Path,
    dir: bool,
) -> Result<()> {
    if dir {
        let (first, stream) = download(client, container, testbed).await?;
        let dst = host.to_path_buf();
        return consume(first, Box::pin(stream), move |r| {
            archive::extract_tree(r, &dst)
        })
        .await
        .with_context(|| {
            format!(
                "cannot copy {testbed} from the testbed to {}",
                host.display()
            )
        });
    }
    // A symlink's archive holds the link; follow it as `cat` would.
    let mut path = testbed.to_string();
    for _ in 0..16 {
        let (first, stream) = download(client, container, &path).await?;
        let dst = host.to_path_buf();
        let got = consume(first, Box::pin(stream), move |r| {
            archive::extract_file(r, &dst)
        })
        .await
        .with_context(|| {
            format!(
                "cannot copy {testbed} from the testbed to {}",
                host.display()
            )
        })?;
        match got {
            SingleFile::Written => return Ok(()),
            SingleFile::Directory => bail!(
                "{testbed} is a directory in the testbed: end both paths in / to copy a directory"
            ),
            SingleFile::Symlink(target) => {
                let (parent, _) = split_testbed_path(&path);
                path = resolve_link(&parent, &target);
            }
        }
    }
    bail!("{testbed}: too many levels of symbolic links in the testbed")
}

fn resolve_link(parent: &str, target: &Path) -> String {
    let joined: PathBuf = if target.is_absolute() {
        target.to_path_buf()
    } else {
        Path::new(parent).join(target)
    };
    joined.to_string_lossy().into_owned()
}

/// The daemon's archive endpoints read and write a container's own
/// filesystem, beneath any tmpfs mounted over it: a `docker cp` into a
/// --tmpfs path "succeeds" and the file is invisible to the testbed
/// (moby/moby#22020). Paths under a tmpfs therefore go through tar in the
/// testbed, over an exec, as autopkgtest-virt-docker --remote does.
pub fn needs_exec_route(testbed: &str, tmpfs_mounts: &[String]) -> bool {
    let path = testbed.trim_end_matches('/');
    tmpfs_mounts.iter().any(|m| {
        let m = m.trim_end_matches('/');
        !m.is_empty() && (path == m || path.starts_with(&format!("{m}/")))
    })
}

/// Hands an exec's stdout to a blocking consumer, with backpressure, and
/// keeps its stderr for the error message.
struct TarSink {
    tx: Option<std::sync::mpsc::SyncSender<io::Result<Bytes>>>,
    err: Bounded,
}

impl super::exec::Sink for TarSink {
    fn stdout(&mut self, d: &[u8]) -> Result<()> {
        let tx = self.tx.as_ref().ok_or_else(|| anyhow!("copy ended"))?;
        let chunk = Bytes::copy_from_slice(d);
        // The consumer is on the blocking pool; waiting for it here is
        // the backpressure that keeps memory flat.
        tokio::task::block_in_place(|| tx.send(Ok(chunk)))
            .map_err(|_| anyhow!("the host side of the copy stopped"))
    }
    fn stderr(&mut self, d: &[u8]) -> Result<()> {
        self.err.push(d);
        Ok(())
    }
}

/// The testbed has no tar (or no sh) to run: the caller may take the
/// archive endpoints instead. Nothing was written on either side.
#[derive(Debug)]
pub struct NoTar(pub String);

impl std::fmt::Display for NoTar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the testbed cannot run tar: {}", self.0)
    }
}
impl std::error::Error for NoTar {}

/// Exit statuses of the copy scripts below, besides tar's own.
const NOT_THERE: i64 = 3;
/// sh: command not found, or found but not executable.
const NOT_FOUND: [i64; 2] = [127, 126];

/// What a copy script's failure means, for the error message;
/// `not_there` says what NOT_THERE means.
fn script_failure(code: i64, err: &Bounded, not_there: &str) -> anyhow::Error {
    let err = err.to_string();
    if NOT_FOUND.contains(&code) {
        return NoTar(err).into();
    }
    if code == NOT_THERE {
        return anyhow!("{not_there}");
    }
    anyhow!("tar in the testbed exited {code}: {err}")
}

/// copyup through `tar -c` in the testbed: one exec, which checks the path
/// and packs it. Nothing on the host is touched before the first byte of
/// the archive arrives, so a missing path leaves no target behind.
pub async fn pull_via_exec(
    client: &Client,
    container: &str,
    testbed: &str,
    host: &Path,
    dir: bool,
) -> Result<()> {
    let (parent, name) = split_testbed_path(testbed);
    let (tx, rx) = std::sync::mpsc::sync_channel::<io::Result<Bytes>>(8);
    let dst = host.to_path_buf();
    let (_cancel, flag) = CancelOnDrop::new();
    let consumer = tokio::task::spawn_blocking(move || -> Result<()> {
        // Wait for data before touching the host.
        let first = match rx.recv() {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => bail!("the testbed sent nothing"),
        };
        let mut r = ChanReader::std(rx).until(flag);
        r.cur = first;
        if dir {
            archive::extract_tree(&mut r, &dst)?;
        } else {
            match archive::extract_file(&mut r, &dst)? {
                SingleFile::Written => {}
                _ => bail!("the testbed sent no regular file"),
            }
        }
        // tar pads its output to a whole record after the archive's end:
        // take that too, so that the exec's output never finds the copy
        // gone. Not without bound: a testbed could send for ever.
        io::copy(&mut (&mut r).take(1 << 20), &mut io::sink())?;
        Ok(())
    });
    let mut sink = TarSink {
        tx: Some(tx),
        err: Bounded::default(),
    };
    // -h: a file copyup follows symlinks, as `cat` does. --sparse: holes
    // travel as a map, not as zeros, so a testbed's 8 GiB sparse file is a
    // few bytes on the wire. GNU tar is Essential in Debian; nothing runs
    // it first to ask (a tar the test replaced could answer for ever).
    let (script, not_there) = if dir {
        (
            "cd -- \"$1\" 2>/dev/null && test -d \"$2\" || exit 3; tar --format=gnu --sparse -cf - -- \"$2\"; \
             exit $?",
            format!("{testbed} is not a directory in the testbed"),
        )
    } else {
        (
            "cd -- \"$1\" 2>/dev/null && test -f \"$2\" || exit 3; tar --format=gnu --sparse -chf - -- \"$2\"; \
             exit $?",
            format!("{testbed} is not a regular file in the testbed"),
        )
    };
    let args = vec![parent, name];
    let ran = super::exec::run_script(client, container, script, args, None, &mut sink).await;
    let tx = sink.tx.take().expect("sender");
    // An exec that failed on its own (Ok(code)) is the cause; one whose
    // output found the host side gone (Err) is not, if the host side failed.
    let (failure, stream_broke) = match ran {
        Ok(0) => (None, false),
        Ok(code) => (Some(script_failure(code, &sink.err, &not_there)), false),
        Err(e) => (Some(e), true),
    };
    if let Some(f) = &failure {
        // A short stream must fail the extraction, not look complete.
        let _ = tx.send(Err(io::Error::other(format!("{f:#}"))));
    }
    drop(tx);
    let extracted = consumer.await.context("the archive reader panicked")?;
    match failure {
        Some(f) if !(stream_broke && extracted.is_err()) => {
            return Err(f.context(format!("cannot copy {testbed} from the testbed")))
        }
        _ => {}
    }
    extracted.with_context(|| {
        format!(
            "cannot copy {testbed} from the testbed to {}",
            host.display()
        )
    })
}

/// Unpacks what push_via_exec sends (no `exec`: the process with
/// run_script's tag must stay, for the kill): a line with the length of a first
/// archive, that archive, then the rest. With a first part, it is kept in
/// a file unlinked as soon as it is open, so that two tars unpack at once,
/// one from the file and one from the stream.
const UNPACK_SCRIPT: &str = r#"cd -- "$1" 2>/dev/null || exit 3
IFS= read -r n || exit 2
case "$n" in ''|*[!0-9]*) echo "rdocker-copydown: bad length line" >&2; exit 2;; esac
if [ "$n" -gt 0 ]; then
    t=.rdocker-copydown-$$
    set -C
    head -c "$n" > "$t" || { s=$?; rm -f -- "$t"; exit $s; }
    exec 4< "$t"
    rm -f -- "$t"
    tar --no-same-owner -xpf - <&4 & a=$!
    exec 4<&-
    tar --no-same-owner -xpf -; b=$?
    wait $a; a=$?
    [ $a = 0 ] || exit $a
    exit $b
fi
tar --no-same-owner -xpf -
exit $?
"#;

/// A tree with at least this many files in its first part goes to two
/// tars at once: fewer are not worth the temporary file.
const SPLIT_MIN_FILES: usize = 256;
/// The first part is held in memory until it is sent, so it has a bound;
/// a tree whose first part would be bigger goes to one tar.
const SPLIT_MAX_BYTES: usize = 4 << 20;

/// Which part of a split tree a file goes to: by its name alone, so that
/// both walks agree on every file without keeping a list. FNV-1a, then
/// murmur3's finalizer: FNV alone leaves the last byte's change out of
/// some bits, and file names often differ in their last byte only.
fn first_part(name: &OsStr) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let mut h = name
        .as_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h & 1 == 0
}

/// The first part of `src` for two tars at once: every directory and the
/// files first_part() takes. None when the tree is too small or too big.
fn split_first(src: &Path, name: &str) -> Result<Option<Vec<u8>>> {
    let mut files = 0usize;
    let mut keep = |n: &OsStr| {
        let k = first_part(n);
        files += usize::from(k);
        k
    };
    let mut out = Capped {
        buf: Vec::new(),
        over: false,
    };
    let written = archive::write_tree_part(&mut out, src, name, &mut keep).map(drop);
    match written {
        Err(_) if out.over => return Ok(None),
        r => r?,
    }
    Ok((files >= SPLIT_MIN_FILES).then_some(out.buf))
}

/// A Vec that refuses to grow past SPLIT_MAX_BYTES.
struct Capped {
    buf: Vec<u8>,
    over: bool,
}

impl Write for Capped {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.buf.len() + buf.len() > SPLIT_MAX_BYTES {
            self.over = true;
            return Err(io::Error::other("the first part is too big"));
        }
        self.buf.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What push_via_exec sends: UNPACK_SCRIPT's length line, then one
/// archive, or a tree's two parts.
fn write_unpack_stream(mut out: BytesWriter, src: &Path, name: &str, dir: bool) -> Result<()> {
    let first = if dir { split_first(src, name)? } else { None };
    let Some(first) = first else {
        out.write_all(b"0\n")?;
        return write_archive(out, src, name, dir);
    };
    debug!(
        "copydown of {}: two tars at once, one part each",
        src.display()
    );
    out.write_all(format!("{}\n", first.len()).as_bytes())?;
    out.send(Bytes::from(first))?;
    let w = BufWriter::with_capacity(CHUNK, out);
    let w = archive::write_tree_part(w, src, name, &mut |n| !first_part(n))?;
    w.into_inner()
        .map(drop)
        .map_err(|e| anyhow!("{}", e.error()))
}

/// copydown through `tar -x` in the testbed, as root (--no-same-owner:
/// root's anyway, without a chown per file). A tree of many small files
/// goes to two tars at once in one exec: 5000 files of 1 KiB unpacked in
/// 94 to 105 ms that way against 148 to 157 ms with one tar inside a
/// testbed on this project's 2-core machine; two tars in two execs had
/// gained nothing, the second exec costing the daemon what the split saved.
pub async fn push_via_exec(
    client: &Client,
    container: &str,
    host: &Path,
    testbed: &str,
    dir: bool,
) -> Result<()> {
    check_push_source(host, dir)?;
    let (parent, name) = split_testbed_path(testbed);
    if name.is_empty() {
        bail!("cannot copy to {testbed:?}: it names no file or directory");
    }
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    let src = host.to_path_buf();
    let (_cancel, flag) = CancelOnDrop::new();
    let producer = tokio::task::spawn_blocking(move || {
        write_unpack_stream(BytesWriter(tx, flag), &src, &name, dir)
    });
    let mut cap = Captured::quiet_stdout();
    let args = vec![parent.clone()];
    let ran =
        super::exec::run_script(client, container, UNPACK_SCRIPT, args, Some(rx), &mut cap).await;
    let produced = producer.await;
    let code = match ran {
        Err(e) if e.is::<Overflow>() => {
            return Err(anyhow!(
                "cannot copy into {testbed} in the testbed: tar in the testbed {e} (it began \
                 {}); the testbed's tar is not a working GNU tar (a test may have replaced \
                 it): reinstall it (apt-get install --reinstall tar) or leave it alone",
                cap.out.excerpt(40)
            ))
        }
        r => r?,
    };
    if code == 0 {
        return produced_ok(produced);
    }
    let failure = script_failure(
        code,
        &cap.err,
        &format!("{parent} does not exist in the testbed"),
    );
    if !failure.is::<NoTar>() {
        // A host file that could not be read explains why tar failed,
        // unless tar stopped first.
        if let Err(e) = produced_ok(produced) {
            let tar_stopped = e
                .downcast_ref::<io::Error>()
                .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe);
            if !tar_stopped {
                return Err(e);
            }
        }
    }
    Err(failure.context(format!("cannot copy into {testbed} in the testbed")))
}

fn produced_ok(r: Result<Result<()>, tokio::task::JoinError>) -> Result<()> {
    r.context("the archive writer panicked")?
}

/// A Write that feeds an exec's stdin, until the copy is cancelled.
struct BytesWriter(mpsc::Sender<Bytes>, Arc<AtomicBool>);

impl BytesWriter {
    fn send(&mut self, b: Bytes) -> io::Result<()> {
        cancel::check(&self.1)?;
        self.0.blocking_send(b).map_err(|_| {
            io::Error::new(
                io::ErrorKind::BrokenPipe,
                "tar in the testbed stopped reading",
            )
        })
    }
}

impl Write for BytesWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.send(Bytes::copy_from_slice(buf))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_parts_are_balanced() {
        let names: Vec<String> = (0..2000).map(|i| format!("file{i}.txt")).collect();
        let first = names.iter().filter(|n| first_part(OsStr::new(n))).count();
        assert!(
            (800..1200).contains(&first),
            "{first} of 2000 in the first part"
        );
        // Names that differ in their last byte alone still spread.
        let last: Vec<bool> = (b'a'..=b'z')
            .map(|c| first_part(OsStr::new(&format!("f{}", c as char))))
            .collect();
        assert!(
            last.iter().any(|&b| b) && last.iter().any(|&b| !b),
            "{last:?}"
        );
    }

    #[test]
    fn a_cancelled_copy_fails_its_channel_reads_and_writes() {
        let (tx, rx) = std::sync::mpsc::sync_channel(8);
        let (guard, flag) = CancelOnDrop::new();
        let mut w = ChanWriter::std(tx).until(flag.clone());
        let mut r = ChanReader::std(rx).until(flag);
        w.write_all(b"abc").unwrap();
        let mut buf = [0u8; 3];
        r.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"abc");
        w.write_all(b"def").unwrap();
        drop(guard);
        // Even with data waiting, and a sender still there.
        assert!(r.read(&mut buf).is_err());
        assert!(w.write(b"ghi").is_err());
    }

    #[test]
    fn links_resolve_against_their_directory() {
        assert_eq!(resolve_link("/a/b", Path::new("c")), "/a/b/c");
        assert_eq!(resolve_link("/a/b", Path::new("/etc/x")), "/etc/x");
    }
}
