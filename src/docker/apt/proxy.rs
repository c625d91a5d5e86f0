//! The package cache's proxy: an HTTP/1.1 server for the testbeds' apt,
//! on hyper (one parser for the testbed's requests and the servers'
//! answers), that serves each .deb of a `pool/` from the store once it
//! has it and fetches the rest, by policy.rs's rules, from the origin or
//! the host's own apt proxy, after resolve.rs checked where the URL's
//! host is. Everything a testbed makes it hold is bounded: connections
//! per testbed, the time each step may take, the disk space downloads in
//! flight may fill.

use anyhow::{Context, Result};
use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderMap};
use hyper::{Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};

use super::policy::{self, Fetch, Refusal};
use super::resolve::{Denied, Guard};
use super::store::{Reservation, Stats, Store};
use crate::debug;

/// Connections one testbed may have open at once: apt opens one per
/// server, and pipelines on it. One testbed that opens more is refused
/// the extra ones (closed at once); other testbeds are not affected.
pub const SLOTS: usize = 16;
/// Testbeds with slots of their own at once: the open one and its spare,
/// and a reverted one not yet released. Others, and peers that are no
/// testbed of this session, share one set of SLOTS.
const TESTBEDS: usize = 8;
/// The most a request head may take (hyper's buffer; its least is 8 KiB).
const HEAD_LIMIT: usize = 64 * 1024;
/// hyper's buffer for a server's answer: its head (a mirror's is under
/// 1 KiB), and the most of its body one read takes.
const READ_LIMIT: usize = 32 * 1024;

/// How long each step towards a server may take. A mirror answers in
/// milliseconds; these only end what would otherwise hold a slot for
/// ever, and stay under apt's own 120 s, so that apt sees a clean 504
/// rather than its own timeout.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// TCP connect to the origin or the chained proxy: a host that does
    /// not answer a SYN in 30 s is down.
    pub connect: Duration,
    /// From the request sent to the response's head: a chained proxy may
    /// first fetch a large file whole (apt-cacher-ng does not), hence more.
    pub head: Duration,
    /// Between two pieces of a body, either way (the server's, or apt
    /// taking ours), and a client connection idle between requests.
    pub idle: Duration,
}

impl Timeouts {
    pub const DEFAULT: Timeouts = Timeouts {
        connect: Duration::from_secs(30),
        head: Duration::from_secs(60),
        idle: Duration::from_secs(60),
    };

    /// The defaults, or, for the attack tests only, every one of them set
    /// to `RDOCKER_APT_TEST_TIMEOUT` seconds (undocumented for users).
    pub fn from_env() -> Timeouts {
        match std::env::var("RDOCKER_APT_TEST_TIMEOUT")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
        {
            Some(s) if s > 0 => {
                let d = Duration::from_secs(s);
                Timeouts {
                    connect: d,
                    head: d,
                    idle: d,
                }
            }
            _ => Timeouts::DEFAULT,
        }
    }
}

/// The running proxy. Dropping it stops it: the listener and every
/// connection are aborted.
pub struct Proxy {
    pub addr: SocketAddr,
    pub stats: Arc<Stats>,
    peers: Arc<Peers>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.peers.release_all();
    }
}

impl Proxy {
    /// A testbed's addresses: its connections get SLOTS of their own.
    pub fn admit(&self, ips: &[IpAddr]) {
        self.peers.admit(ips);
    }

    /// A testbed gone (reverted, removed): its connections end now, and
    /// whatever they fetched with them; its slots are free.
    pub fn release(&self, ips: &[IpAddr]) {
        self.peers.release(ips);
    }
}

/// Connections by testbed.
#[derive(Default)]
struct Peers {
    testbeds: Mutex<HashMap<IpAddr, Arc<Peer>>>,
    others: Arc<Peer>,
}

struct Peer {
    slots: Arc<Semaphore>,
    conns: Mutex<Vec<tokio::task::AbortHandle>>,
}

impl Default for Peer {
    fn default() -> Peer {
        Peer {
            slots: Arc::new(Semaphore::new(SLOTS)),
            conns: Mutex::default(),
        }
    }
}

impl Peer {
    fn abort_all(&self) {
        for c in self
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            c.abort();
        }
    }
}

impl Peers {
    fn of(&self, ip: IpAddr) -> Arc<Peer> {
        let t = self.testbeds.lock().unwrap_or_else(|e| e.into_inner());
        t.get(&ip).cloned().unwrap_or_else(|| self.others.clone())
    }

    fn admit(&self, ips: &[IpAddr]) {
        let mut t = self.testbeds.lock().unwrap_or_else(|e| e.into_inner());
        for ip in ips {
            if t.len() < TESTBEDS {
                t.entry(*ip).or_default();
            }
        }
    }

    fn release(&self, ips: &[IpAddr]) {
        let gone: Vec<Arc<Peer>> = {
            let mut t = self.testbeds.lock().unwrap_or_else(|e| e.into_inner());
            ips.iter().filter_map(|ip| t.remove(ip)).collect()
        };
        for p in gone {
            p.abort_all();
        }
    }

    fn release_all(&self) {
        let all: Vec<Arc<Peer>> = {
            let mut t = self.testbeds.lock().unwrap_or_else(|e| e.into_inner());
            t.drain().map(|(_, p)| p).collect()
        };
        for p in all {
            p.abort_all();
        }
        self.others.abort_all();
    }
}

struct Ctx {
    store: Arc<Store>,
    /// The host's own apt proxy, to chain to: its addresses, resolved
    /// once (the caller's, trusted: not checked).
    upstream: Option<Vec<SocketAddr>>,
    guard: Guard,
    stats: Arc<Stats>,
    timeouts: Timeouts,
}

/// Listen on `ip` (a port of the kernel's choice) and serve the
/// testbeds' apt from `store`, fetching misses from `upstream` (an
/// `http://` proxy URL) or the origin. `gateways`: the testbeds'
/// gateways, addresses of the host's that nothing is fetched from.
pub async fn start(
    ip: IpAddr,
    store: Arc<Store>,
    upstream: Option<&str>,
    gateways: Vec<IpAddr>,
) -> Result<Proxy> {
    let upstream = match upstream {
        Some(u) => {
            let uri: hyper::Uri = u.parse().with_context(|| format!("apt proxy {u}"))?;
            let url = policy::Url::from_uri(&uri)
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("apt proxy {u}"))?;
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((url.bare_host(), url.port))
                .await
                .with_context(|| format!("cannot resolve the apt proxy {u}"))?
                .collect();
            Some(addrs)
        }
        None => None,
    };
    let listener = TcpListener::bind((ip, 0))
        .await
        .with_context(|| format!("cannot listen on {ip} for the testbeds' apt"))?;
    let addr = listener.local_addr()?;
    let stats = Arc::new(Stats::default());
    let ctx = Arc::new(Ctx {
        store,
        upstream,
        guard: Guard::new(gateways),
        stats: stats.clone(),
        timeouts: Timeouts::from_env(),
    });
    let peers = Arc::new(Peers::default());
    let task = tokio::spawn(accept(listener, ctx, peers.clone()));
    Ok(Proxy {
        addr,
        stats,
        peers,
        task,
    })
}

async fn accept(listener: TcpListener, ctx: Arc<Ctx>, peers: Arc<Peers>) {
    loop {
        let (conn, from) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors, for one: try again shortly.
                debug!("apt cache: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let peer = peers.of(from.ip());
        let Ok(slot) = peer.slots.clone().try_acquire_owned() else {
            debug!(
                "apt cache: {} has {SLOTS} connections open already: one more refused",
                from.ip()
            );
            continue;
        };
        let ctx = ctx.clone();
        let handle = tokio::spawn(async move {
            serve(conn, ctx).await;
            drop(slot);
        });
        let mut conns = peer.conns.lock().unwrap_or_else(|e| e.into_inner());
        conns.retain(|c| !c.is_finished());
        conns.push(handle.abort_handle());
    }
}

/// One client connection, kept alive between requests as HTTP/1.1 says
/// (`Connection: close` and HTTP/1.0 end it after the response).
async fn serve(conn: TcpStream, ctx: Arc<Ctx>) {
    let idle = ctx.timeouts.idle;
    let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let ctx = ctx.clone();
        async move { Ok::<_, std::convert::Infallible>(answer(req, &ctx).await) }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(idle)
        .max_buf_size(HEAD_LIMIT)
        .serve_connection(TokioIo::new(Stalled::new(conn, idle)), svc)
        .await;
    if let Err(e) = served {
        debug!("apt cache: a client connection: {e}");
    }
}

async fn answer(req: hyper::Request<Incoming>, ctx: &Ctx) -> Response<Out> {
    let (parts, _body) = req.into_parts();
    let fetch = match policy::decide(&parts.method, &parts.uri, &parts.headers) {
        Ok(f) => f,
        Err(r) => return refusal(r),
    };
    if let Some(r) = from_store(&fetch, ctx).await {
        return r;
    }
    match fetch_upstream(&fetch, ctx).await {
        Ok(r) => r,
        Err(r) => {
            debug!("apt cache: {}: {}", fetch.url.text(), r.why);
            refusal(r)
        }
    }
}

fn refusal(r: Refusal) -> Response<Out> {
    let mut resp = Response::new(Out::whole(format!("{}\n", r.why).into()));
    *resp.status_mut() = r.status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain"),
    );
    resp
}

fn fail(status: StatusCode, why: String) -> Refusal {
    Refusal { status, why }
}

/// A package the store has, sent from it.
async fn from_store(fetch: &Fetch, ctx: &Ctx) -> Option<Response<Out>> {
    let key = fetch.key.as_ref()?;
    let mut file = tokio::fs::File::open(ctx.store.dir().join(key))
        .await
        .ok()?;
    let len = file.metadata().await.ok()?.len();
    let (tx, out) = Out::channel(Some(len));
    let idle = ctx.timeouts.idle;
    let stats = ctx.stats.clone();
    tokio::spawn(async move {
        let mut left = len;
        let mut buf = vec![0u8; READ_LIMIT];
        while left > 0 {
            let want = buf.len().min(left as usize);
            let piece = match file.read(&mut buf[..want]).await {
                Ok(0) => Err(std::io::Error::other(
                    "the cached file is shorter than it was",
                )),
                Ok(n) => Ok(Bytes::copy_from_slice(&buf[..n])),
                Err(e) => Err(e),
            };
            let failed = piece.is_err();
            if let Ok(p) = &piece {
                left -= p.len() as u64;
            }
            if !matches!(tokio::time::timeout(idle, tx.send(piece)).await, Ok(Ok(()))) || failed {
                return;
            }
        }
        Stats::add(&stats.hits, 1);
        Stats::add(&stats.hit_bytes, len);
    });
    let mut resp = Response::new(out);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/vnd.debian.binary-package"),
    );
    h.insert(header::CONTENT_LENGTH, len.into());
    Some(resp)
}

/// Aborts the task that drives a connection to a server when dropped:
/// whoever gives up on a fetch closes its connection.
struct Driver(tokio::task::JoinHandle<()>);

impl Drop for Driver {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Ask the origin or the chained proxy; the response's body is relayed
/// (and kept, for a package) by a task of its own.
async fn fetch_upstream(fetch: &Fetch, ctx: &Ctx) -> Result<Response<Out>, Refusal> {
    let t = ctx.timeouts;
    let url = &fetch.url;
    // Where the URL's host is, checked, chained or not.
    let addrs = match ctx.guard.resolve(url.bare_host(), url.port).await {
        Ok(a) => a,
        Err(d @ Denied::Own(_)) => {
            return Err(fail(StatusCode::FORBIDDEN, format!("{}: {d}", url.host)))
        }
        Err(d) => return Err(fail(StatusCode::BAD_GATEWAY, format!("{}: {d}", url.host))),
    };
    let to = ctx.upstream.as_ref().unwrap_or(&addrs);
    let conn = match tokio::time::timeout(t.connect, TcpStream::connect(&to[..])).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            return Err(fail(
                StatusCode::BAD_GATEWAY,
                format!("cannot connect to {}: {e}", to[0]),
            ))
        }
        Err(_) => {
            return Err(fail(
                StatusCode::GATEWAY_TIMEOUT,
                format!("no connection to {} within {:?}", to[0], t.connect),
            ))
        }
    };
    let (mut send, connection) = hyper::client::conn::http1::Builder::new()
        .max_buf_size(READ_LIMIT)
        .handshake::<_, Empty>(TokioIo::new(conn))
        .await
        .map_err(|e| fail(StatusCode::BAD_GATEWAY, format!("{}: {e}", url.host)))?;
    let driver = Driver(tokio::spawn(async move {
        let _ = connection.await;
    }));
    let req = fetch
        .request(ctx.upstream.is_some(), Empty)
        .map_err(|e| fail(StatusCode::BAD_REQUEST, e))?;
    let resp = match tokio::time::timeout(t.head, send.send_request(req)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return Err(fail(StatusCode::BAD_GATEWAY, format!("{}: {e}", url.host))),
        Err(_) => {
            return Err(fail(
                StatusCode::GATEWAY_TIMEOUT,
                format!("no answer from {} within {:?}", url.host, t.head),
            ))
        }
    };
    let (parts, body) = resp.into_parts();
    let len: Option<u64> = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse().ok());
    let bodiless = fetch.method == hyper::Method::HEAD
        || parts.status.is_informational()
        || parts.status == StatusCode::NO_CONTENT
        || parts.status == StatusCode::NOT_MODIFIED;
    let mut out_resp = Response::new(Out::whole(Bytes::new()));
    *out_resp.status_mut() = parts.status;
    *out_resp.headers_mut() = end_to_end(&parts.headers);
    if bodiless {
        Stats::add(&ctx.stats.passed, 1);
        return Ok(out_resp);
    }
    let keep = fetch.key.clone().filter(|_| parts.status == StatusCode::OK);
    let (tx, out) = Out::channel(len);
    *out_resp.body_mut() = out;
    tokio::spawn(relay(Relay {
        body,
        tx,
        len,
        keep,
        store: ctx.store.clone(),
        stats: ctx.stats.clone(),
        idle: t.idle,
        _driver: driver,
    }));
    Ok(out_resp)
}

/// The response headers that concern the whole way, not one hop.
fn end_to_end(h: &HeaderMap) -> HeaderMap {
    const HOP: [&str; 9] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    ];
    let mut out = HeaderMap::new();
    for (k, v) in h {
        if !HOP.contains(&k.as_str()) {
            out.append(k.clone(), v.clone());
        }
    }
    out
}

struct Relay {
    body: Incoming,
    tx: mpsc::Sender<std::io::Result<Bytes>>,
    len: Option<u64>,
    /// The cache's name for it, when it is a package to keep.
    keep: Option<String>,
    store: Arc<Store>,
    stats: Arc<Stats>,
    idle: Duration,
    _driver: Driver,
}

/// A package being written aside, in a temporary file beside the store's
/// files, within its reservation.
struct Aside {
    file: tokio::fs::File,
    tmp: std::path::PathBuf,
    room: Reservation,
}

/// Relay a body to apt, piece by piece, each within the idle timeout
/// both ways, and write a package aside while space is reserved for it;
/// it is renamed into the store once whole. A store that cannot take it
/// (no room, an error writing) does not stop the relay.
async fn relay(mut r: Relay) {
    let mut aside = match r.keep.as_ref() {
        Some(_) => open_aside(&r.store, r.len).await,
        None => None,
    };
    let mut got: u64 = 0;
    let whole = loop {
        let frame = tokio::select! {
            f = std::future::poll_fn(|cx| Pin::new(&mut r.body).poll_frame(cx)) => f,
            _ = r.tx.closed() => break false,
            _ = tokio::time::sleep(r.idle) => {
                let _ = r.tx.try_send(Err(std::io::Error::other("the server stalled")));
                break false;
            }
        };
        let data = match frame {
            None => {
                let whole = r.len.is_none_or(|l| l == got);
                if !whole {
                    let _ =
                        r.tx.try_send(Err(std::io::Error::other("the server's body was short")));
                }
                break whole;
            }
            Some(Err(e)) => {
                let _ = r.tx.try_send(Err(std::io::Error::other(e)));
                break false;
            }
            Some(Ok(f)) => match f.into_data() {
                Ok(d) => d,
                Err(_) => continue, // trailers
            },
        };
        got += data.len() as u64;
        if let Some(a) = &mut aside {
            let ok = a.room.write(data.len() as u64) && a.file.write_all(&data).await.is_ok();
            if !ok {
                debug!(
                    "apt cache: no room (or an error) writing {} aside",
                    a.tmp.display()
                );
                drop_aside(aside.take()).await;
            }
        }
        if !matches!(
            tokio::time::timeout(r.idle, r.tx.send(Ok(data))).await,
            Ok(Ok(()))
        ) {
            break false;
        }
    };
    let kept = match (whole, aside.take(), &r.keep) {
        (true, Some(a), Some(key)) => {
            let Aside {
                mut file,
                tmp,
                room,
            } = a;
            let ok = file.flush().await.is_ok() && {
                drop(file);
                tokio::fs::rename(&tmp, r.store.dir().join(key))
                    .await
                    .is_ok()
            };
            drop(room);
            if !ok {
                let _ = tokio::fs::remove_file(&tmp).await;
            }
            ok
        }
        (_, a, _) => {
            drop_aside(a).await;
            false
        }
    };
    if kept {
        Stats::add(&r.stats.stored, 1);
        Stats::add(&r.stats.stored_bytes, got);
    } else {
        Stats::add(&r.stats.passed, 1);
    }
}

async fn open_aside(store: &Arc<Store>, len: Option<u64>) -> Option<Aside> {
    let Some(room) = store.reserve(len.unwrap_or(0)) else {
        debug!(
            "apt cache: no room in {} for another package",
            store.dir().display()
        );
        return None;
    };
    let tmp = store
        .dir()
        .join(format!(".tmp-{}", crate::docker::names::random_hex(8)));
    let file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .await
        .ok()?;
    Some(Aside { file, tmp, room })
}

async fn drop_aside(a: Option<Aside>) {
    if let Some(a) = a {
        drop(a.file);
        let _ = tokio::fs::remove_file(&a.tmp).await;
    }
}

/// A client connection whose writes fail once one has waited `limit`: a
/// client that stops reading frees its slot like one that stops
/// writing (hyper's header timeout).
struct Stalled {
    io: TcpStream,
    limit: Duration,
    since: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Stalled {
    fn new(io: TcpStream, limit: Duration) -> Stalled {
        Stalled {
            io,
            limit,
            since: None,
        }
    }

    /// `r` from the socket; a pending one starts (or checks) the clock.
    fn timed<T>(
        &mut self,
        r: Poll<std::io::Result<T>>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<std::io::Result<T>> {
        if r.is_ready() {
            self.since = None;
            return r;
        }
        let limit = self.limit;
        let since = self
            .since
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match since.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client has not read its answer",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl tokio::io::AsyncRead for Stalled {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Stalled {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        self.timed(r, cx)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_flush(cx);
        self.timed(r, cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<std::io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_shutdown(cx);
        self.timed(r, cx)
    }
}

/// A request without a body.
struct Empty;

impl Body for Empty {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        true
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(0)
    }
}

/// A response body to apt: one piece, or the pieces a task sends through
/// a small channel (2 of at most 32 KiB: the memory a connection
/// costs stays bounded whatever the server sends).
pub struct Out {
    first: Option<Bytes>,
    rx: Option<mpsc::Receiver<std::io::Result<Bytes>>>,
    len: Option<u64>,
}

impl Out {
    fn whole(b: Bytes) -> Out {
        let len = b.len() as u64;
        Out {
            first: Some(b).filter(|b| !b.is_empty()),
            rx: None,
            len: Some(len),
        }
    }

    fn channel(len: Option<u64>) -> (mpsc::Sender<std::io::Result<Bytes>>, Out) {
        let (tx, rx) = mpsc::channel(2);
        (
            tx,
            Out {
                first: None,
                rx: Some(rx),
                len,
            },
        )
    }
}

impl Body for Out {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Some(b) = self.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(b))));
        }
        let Some(rx) = self.rx.as_mut() else {
            return Poll::Ready(None);
        };
        match rx.poll_recv(cx) {
            Poll::Ready(Some(r)) => Poll::Ready(Some(r.map(Frame::data))),
            Poll::Ready(None) => {
                self.rx = None;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.rx.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.len {
            Some(l) => SizeHint::with_exact(l),
            None => SizeHint::default(),
        }
    }
}
