//! The package cache that survives reverts: a small HTTP proxy for the
//! testbeds' apt, run by rdocker on the host, that keeps each .deb it
//! fetches in a directory and serves it from there the next time. The
//! testbed sees only apt's proxy setting (see life/apt.rs); its
//! /var/cache/apt is the image's. Everything that is not a .deb of a
//! `pool/` (indices, Release files) passes through uncached, to the origin
//! or to the host's own apt proxy. Several rdockers may share one
//! directory: a file appears in it only whole, by rename, and nobody
//! waits for anybody.

use anyhow::{anyhow, bail, Context, Result};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// The most a request or response head may take.
const HEAD_LIMIT: usize = 64 * 1024;
/// The most client connections served at once: a test that opens more
/// waits, and rdocker's memory stays bounded (apt opens a few).
const CONNECTIONS: usize = 64;
/// How long a client connection may stay idle between requests.
const IDLE: std::time::Duration = std::time::Duration::from_secs(60);

/// Where the cached .debs are: a directory of the caller's (kept), or a
/// temporary one of this session (removed when dropped).
pub struct Store {
    dir: PathBuf,
    temporary: bool,
}

impl Store {
    /// `--apt-cache DIR`: made if missing, kept.
    pub fn at(dir: &Path) -> Result<Store> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the apt cache {}", dir.display()))?;
        Ok(Store {
            dir: dir.to_path_buf(),
            temporary: false,
        })
    }

    /// This session's cache, in $TMPDIR, removed at the end.
    pub fn session() -> Result<Store> {
        let base = std::env::temp_dir();
        let dir = base.join(format!(
            "rdocker-apt-cache.{}.{}",
            std::process::id(),
            crate::docker::names::random_hex(4)
        ));
        std::fs::create_dir(&dir)
            .with_context(|| format!("cannot create the apt cache {}", dir.display()))?;
        Ok(Store {
            dir,
            temporary: true,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn temporary(&self) -> bool {
        self.temporary
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if self.temporary {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// What the proxy did, for -d.
#[derive(Default)]
pub struct Stats {
    pub hits: AtomicU64,
    pub hit_bytes: AtomicU64,
    pub stored: AtomicU64,
    pub stored_bytes: AtomicU64,
    pub passed: AtomicU64,
}

impl Stats {
    pub fn summary(&self) -> String {
        let mib = |b: &AtomicU64| b.load(Ordering::Relaxed) as f64 / (1 << 20) as f64;
        format!(
            "{} .debs from the cache ({:.1} MiB), {} fetched and kept ({:.1} MiB), {} other \
             requests passed through",
            self.hits.load(Ordering::Relaxed),
            mib(&self.hit_bytes),
            self.stored.load(Ordering::Relaxed),
            mib(&self.stored_bytes),
            self.passed.load(Ordering::Relaxed)
        )
    }
}

/// The running proxy. Dropping it stops it (the listener's task is
/// aborted; a transfer under way ends with its connection).
pub struct Proxy {
    pub addr: SocketAddr,
    pub stats: Arc<Stats>,
    task: tokio::task::JoinHandle<()>,
    _store: Arc<Store>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Ctx {
    store: Arc<Store>,
    /// The host's own apt proxy, as host and port, to chain to.
    upstream: Option<(String, u16)>,
    stats: Arc<Stats>,
    resolved: Resolved,
}

/// Names looked up, kept for a minute. A lookup per request, as each
/// opens its own connection, met the host resolver's 5 s retry now and
/// then: 5 stalls of 4.9 s in one install of 79 packages, where apt
/// itself, straight to the mirror, looks the name up once.
#[derive(Default)]
struct Resolved(std::sync::Mutex<std::collections::HashMap<(String, u16), Looked>>);

struct Looked {
    at: std::time::Instant,
    addrs: Vec<SocketAddr>,
}

const RESOLVED_FOR: std::time::Duration = std::time::Duration::from_secs(60);

impl Resolved {
    async fn lookup(&self, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let key = (host.to_string(), port);
        if let Some(l) = self.0.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            if l.at.elapsed() < RESOLVED_FOR {
                return Ok(l.addrs.clone());
            }
        }
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port)).await?.collect();
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        // A name per archive: few entries, but never unbounded.
        if map.len() > 64 {
            map.clear();
        }
        map.insert(
            key,
            Looked {
                at: std::time::Instant::now(),
                addrs: addrs.clone(),
            },
        );
        Ok(addrs)
    }
}

/// Listen on `ip` (a port of the kernel's choice) and serve the
/// testbeds' apt from `store`, fetching misses from `upstream` (an
/// `http://` proxy URL) or the origin.
pub async fn start(ip: IpAddr, store: Arc<Store>, upstream: Option<&str>) -> Result<Proxy> {
    let upstream = match upstream {
        Some(u) => {
            let t = Target::parse(u).with_context(|| format!("apt proxy {u}"))?;
            Some((t.host, t.port))
        }
        None => None,
    };
    let listener = TcpListener::bind((ip, 0))
        .await
        .with_context(|| format!("cannot listen on {ip} for the testbeds' apt"))?;
    let addr = listener.local_addr()?;
    let stats = Arc::new(Stats::default());
    let ctx = Arc::new(Ctx {
        store: store.clone(),
        upstream,
        stats: stats.clone(),
        resolved: Resolved::default(),
    });
    let slots = Arc::new(tokio::sync::Semaphore::new(CONNECTIONS));
    let task = tokio::spawn(async move {
        loop {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let Ok((conn, _)) = listener.accept().await else {
                continue;
            };
            let ctx = ctx.clone();
            tokio::spawn(async move {
                if let Err(e) = serve(conn, ctx).await {
                    crate::debug!("apt cache: {e:#}");
                }
                drop(slot);
            });
        }
    });
    Ok(Proxy {
        addr,
        stats,
        task,
        _store: store,
    })
}

/// An absolute `http://` URL, as a proxy receives it.
#[derive(Debug, PartialEq, Clone)]
pub struct Target {
    pub host: String,
    pub port: u16,
    /// From the first `/`, query included.
    pub path: String,
}

impl Target {
    pub fn parse(url: &str) -> Result<Target> {
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("HTTP://"))
            .ok_or_else(|| anyhow!("not an http:// URL: {url:?}"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        // user:password@ is the upstream proxy's business, not ours.
        let authority = authority.rsplit('@').next().unwrap_or(authority);
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| anyhow!("bad host in {url:?}"))?;
            (format!("[{h}]"), after.strip_prefix(':'))
        } else {
            match authority.split_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (authority.to_string(), None),
            }
        };
        let port = match port {
            Some("") | None => 80,
            Some(p) => p.parse().map_err(|_| anyhow!("bad port in {url:?}"))?,
        };
        if host.is_empty() {
            bail!("no host in {url:?}");
        }
        Ok(Target {
            host: host.to_ascii_lowercase(),
            port,
            path: path.to_string(),
        })
    }

    /// Whether this is a package, which never changes under its name: a
    /// .deb (or .udeb, .ddeb) below a `pool/`.
    pub fn cacheable(&self) -> bool {
        let path = self.path.split(['?', '#']).next().unwrap_or("");
        path.contains("/pool/")
            && [".deb", ".udeb", ".ddeb"].iter().any(|e| path.ends_with(e))
            && !path.contains("/../")
    }

    /// The file name in the cache: the URL's SHA-256 (the host is part of
    /// it, so that a server of the test's own cannot plant a package
    /// under the Debian mirror's name), then the package's own name for
    /// whoever looks.
    pub fn key(&self) -> String {
        let url = format!("http://{}:{}{}", self.host, self.port, self.path);
        let digest = ring::digest::digest(&ring::digest::SHA256, url.as_bytes());
        let hex: String = digest.as_ref()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let base = self.path.rsplit('/').next().unwrap_or("");
        let base: String = base
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || "._+~-".contains(*c))
            .take(150)
            .collect();
        format!("{hex}_{base}")
    }

    /// Whether this is something apt fetches from an archive: below a
    /// `dists/` (indices, Release files) or a `pool/` (packages). The proxy
    /// is apt's, not a way out of the testbed through the host: nothing
    /// else is fetched for it.
    pub fn apt_path(&self) -> bool {
        let path = self.path.split(['?', '#']).next().unwrap_or("");
        (path.contains("/dists/") || path.contains("/pool/")) && !path.contains("/../")
    }

    /// A host the proxy must not fetch from for a testbed: the host's own
    /// loopback, which the testbed cannot reach by itself.
    fn names_loopback(&self) -> bool {
        let h = self.host.trim_start_matches('[').trim_end_matches(']');
        h == "localhost" || h.ends_with(".localhost") || h.parse::<IpAddr>().is_ok_and(local_only)
    }
}

/// An address that means this host itself, or its link (169.254.0.0/16,
/// fe80::/10: a cloud's metadata service, which answers the host with
/// its credentials and which a container's hop limit may keep out).
fn local_only(ip: IpAddr) -> bool {
    let v4 = |v: std::net::Ipv4Addr| v.is_loopback() || v.is_unspecified() || v.is_link_local();
    match ip {
        IpAddr::V4(v) => v4(v),
        IpAddr::V6(v) => {
            v.is_loopback()
                || v.is_unspecified()
                || (v.segments()[0] & 0xffc0) == 0xfe80
                || v.to_ipv4_mapped().is_some_and(v4)
        }
    }
}

/// A request or response head: its first line and its headers.
#[derive(Debug, Clone)]
pub struct Head {
    pub first: String,
    pub headers: Vec<(String, String)>,
}

impl Head {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The headers, less those that concern only one hop.
    fn end_to_end(&self) -> impl Iterator<Item = &(String, String)> {
        const HOP: [&str; 6] = [
            "connection",
            "keep-alive",
            "proxy-connection",
            "proxy-authorization",
            "te",
            "upgrade",
        ];
        self.headers
            .iter()
            .filter(|(k, _)| !HOP.iter().any(|h| k.eq_ignore_ascii_case(h)))
    }
}

/// Read a head; None at a clean end of stream before it.
async fn read_head<R: AsyncRead + Unpin>(r: &mut BufReader<R>) -> Result<Option<Head>> {
    let mut lines = Vec::new();
    let mut total = 0;
    loop {
        let mut line = Vec::new();
        let n = (&mut *r)
            .take((HEAD_LIMIT - total) as u64 + 1)
            .read_until(b'\n', &mut line)
            .await?;
        if n == 0 {
            if lines.is_empty() {
                return Ok(None);
            }
            bail!("the connection ended within a head");
        }
        total += n;
        if total > HEAD_LIMIT {
            bail!("a head longer than {HEAD_LIMIT} bytes");
        }
        let line = String::from_utf8_lossy(&line)
            .trim_end_matches(['\r', '\n'])
            .to_string();
        if line.is_empty() {
            if lines.is_empty() {
                continue; // a stray CRLF between requests
            }
            break;
        }
        lines.push(line);
    }
    let first = lines.remove(0);
    let headers = lines
        .into_iter()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.trim().to_string(), v.trim().to_string()))
        })
        .collect();
    Ok(Some(Head { first, headers }))
}

/// How many of a connection's pipelined misses are asked for ahead of
/// the one being answered. apt pipelines up to 10 requests on a
/// connection, so that a distant mirror's first byte is waited for once,
/// not once a package; asked one after the other, each miss would wait
/// it out in turn. (The mirror here answers in 4 ms: no gain to measure.)
const AHEAD: usize = 8;

/// One client connection: its requests are read as they come and the
/// misses asked for upstream at once; the answers go back in order, kept
/// alive while each response's length is known.
async fn serve(conn: TcpStream, ctx: Arc<Ctx>) -> Result<()> {
    let (rd, mut wr) = conn.into_split();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Queued>(AHEAD);
    let reader = tokio::spawn(read_requests(BufReader::new(rd), tx, ctx.clone()));
    let mut served = Ok(());
    while let Some(q) = rx.recv().await {
        match answer(q, &mut wr, &ctx).await {
            Ok(true) => continue,
            Ok(false) => {}
            Err(e) => served = Err(e),
        }
        break;
    }
    wr.shutdown().await.ok();
    // Closing the queue drops (aborts) what was asked ahead. What apt
    // pipelined behind is still read and dropped, so that the close is a
    // FIN, not a reset that could cut the response.
    drop(rx);
    let mut reader = reader;
    let read = match tokio::time::timeout(std::time::Duration::from_secs(2), &mut reader).await {
        Ok(r) => r.unwrap_or(Ok(())),
        Err(_) => {
            reader.abort();
            Ok(())
        }
    };
    served.and(read)
}

/// A request, with its upstream response already asked for if it is a
/// miss. Dropping it aborts that.
struct Queued {
    head: Head,
    route: Route,
    ahead: Option<Ahead>,
}

struct Ahead(tokio::task::JoinHandle<std::result::Result<Upstream, String>>);

impl Drop for Ahead {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Read the client's requests until it ends or goes idle, asking for each
/// miss upstream as it arrives. Once the queue is closed, read and drop.
async fn read_requests(
    mut rd: BufReader<tokio::net::tcp::OwnedReadHalf>,
    tx: tokio::sync::mpsc::Sender<Queued>,
    ctx: Arc<Ctx>,
) -> Result<()> {
    loop {
        let head = match tokio::time::timeout(IDLE, read_head(&mut rd)).await {
            Ok(Ok(Some(h))) => h,
            Ok(Ok(None)) | Err(_) => return Ok(()),
            Ok(Err(e)) => return Err(e),
        };
        let route = route(&head);
        let ahead = match &route {
            Route::Forward {
                method,
                target,
                key,
            } if !cached(&ctx, key.as_deref()).await => {
                let (method, target) = (method.clone(), target.clone());
                let (head, ctx) = (head.clone(), ctx.clone());
                Some(Ahead(tokio::spawn(async move {
                    fetch(&method, &target, &head, &ctx).await
                })))
            }
            _ => None,
        };
        if tx.send(Queued { head, route, ahead }).await.is_err() {
            let mut sink = [0u8; 4096];
            while matches!(rd.read(&mut sink).await, Ok(n) if n > 0) {}
            return Ok(());
        }
    }
}

async fn cached(ctx: &Ctx, key: Option<&str>) -> bool {
    match key {
        Some(k) => tokio::fs::try_exists(ctx.store.dir.join(k))
            .await
            .unwrap_or(false),
        None => false,
    }
}

async fn reply<W: AsyncWrite + Unpin>(w: &mut W, status: &str, why: &str) -> Result<bool> {
    let body = format!("{why}\n");
    w.write_all(
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await?;
    Ok(false)
}

/// What a request gets.
enum Route {
    Refuse(&'static str, String),
    /// Served from the cache if `key` is there, else fetched.
    Forward {
        method: String,
        target: Target,
        key: Option<String>,
    },
}

fn route(head: &Head) -> Route {
    let mut parts = head.first.split_whitespace();
    let (method, url) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if head.get("content-length").is_some_and(|v| v != "0")
        || head.get("transfer-encoding").is_some()
    {
        return Route::Refuse(
            "400 Bad Request",
            "requests with a body are not proxied".into(),
        );
    }
    if method != "GET" && method != "HEAD" {
        return Route::Refuse(
            "405 Method Not Allowed",
            "only GET and HEAD are proxied".into(),
        );
    }
    let target = match Target::parse(url) {
        Ok(t) => t,
        Err(e) => return Route::Refuse("400 Bad Request", format!("{e:#}")),
    };
    if target.names_loopback() {
        return Route::Refuse("403 Forbidden", "the host's loopback is not proxied".into());
    }
    if !target.apt_path() {
        return Route::Refuse(
            "403 Forbidden",
            "only an archive's dists/ and pool/ are proxied".into(),
        );
    }
    let key = (method == "GET" && target.cacheable() && head.get("range").is_none())
        .then(|| target.key());
    Route::Forward {
        method: method.to_string(),
        target,
        key,
    }
}

/// Answer one request; whether the connection may serve another.
async fn answer<W: AsyncWrite + Unpin>(q: Queued, w: &mut W, ctx: &Ctx) -> Result<bool> {
    let (method, target, key) = match q.route {
        Route::Refuse(status, why) => return reply(w, status, &why).await,
        Route::Forward {
            method,
            target,
            key,
        } => (method, target, key),
    };
    if let Some(k) = &key {
        if let Ok(f) = tokio::fs::File::open(ctx.store.dir.join(k)).await {
            let len = f.metadata().await?.len();
            w.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.debian.binary-package\r\n\
                     Content-Length: {len}\r\n\r\n"
                )
                .as_bytes(),
            )
            .await?;
            let sent = tokio::io::copy(&mut f.take(len), w).await?;
            if sent != len {
                bail!("{k} was shorter than it said");
            }
            ctx.stats.hits.fetch_add(1, Ordering::Relaxed);
            ctx.stats.hit_bytes.fetch_add(len, Ordering::Relaxed);
            return Ok(true);
        }
    }
    let fetched = match q.ahead {
        Some(mut a) => match (&mut a.0).await {
            Ok(r) => r,
            Err(e) => Err(format!("the fetch ahead failed: {e}")),
        },
        None => fetch(&method, &target, &q.head, ctx).await,
    };
    match fetched {
        Ok(up) => relay(&method, up, key, w, ctx).await,
        Err(why) => reply(w, "502 Bad Gateway", &why).await,
    }
}

/// An upstream response whose head has been read; its body waits in the
/// socket (the server's window holds the rest) until its turn.
struct Upstream {
    resp: Head,
    body: BufReader<tokio::net::tcp::OwnedReadHalf>,
    // The write half, kept: dropping it would half-close the request.
    _req: tokio::net::tcp::OwnedWriteHalf,
}

/// Ask the upstream proxy or the origin; Err: why, for a 502.
async fn fetch(
    method: &str,
    target: &Target,
    head: &Head,
    ctx: &Ctx,
) -> std::result::Result<Upstream, String> {
    let up = match &ctx.upstream {
        Some((h, p)) => match ctx.resolved.lookup(h, *p).await {
            Ok(a) => TcpStream::connect(&a[..]).await,
            Err(e) => Err(e),
        },
        None => connect_origin(target, ctx).await,
    };
    let up = up.map_err(|e| format!("cannot reach {}:{}: {e}", target.host, target.port))?;
    let (urd, mut uwr) = up.into_split();
    let line = match ctx.upstream {
        Some(_) => format!(
            "{method} http://{}:{}{} HTTP/1.1\r\n",
            target.host, target.port, target.path
        ),
        None => format!("{method} {} HTTP/1.1\r\n", target.path),
    };
    let mut req = line;
    for (k, v) in head.end_to_end() {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if head.get("host").is_none() {
        req.push_str(&format!("Host: {}:{}\r\n", target.host, target.port));
    }
    req.push_str("Connection: close\r\n\r\n");
    let said = |e: &dyn std::fmt::Display| format!("{}:{}: {e}", target.host, target.port);
    uwr.write_all(req.as_bytes()).await.map_err(|e| said(&e))?;
    let mut body = BufReader::new(urd);
    match read_head(&mut body).await {
        Ok(Some(resp)) => Ok(Upstream {
            resp,
            body,
            _req: uwr,
        }),
        Ok(None) => Err("the server closed without an answer".into()),
        Err(e) => Err(said(&format!("{e:#}"))),
    }
}

/// Relay the response, and keep a package whose length was announced and
/// fully read.
async fn relay<W: AsyncWrite + Unpin>(
    method: &str,
    up: Upstream,
    key: Option<String>,
    w: &mut W,
    ctx: &Ctx,
) -> Result<bool> {
    let Upstream {
        resp,
        body: mut urd,
        _req,
    } = up;
    let status: u16 = resp
        .first
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let length: Option<u64> = resp.get("content-length").and_then(|v| v.parse().ok());
    let chunked = resp.get("transfer-encoding").is_some();
    let bodiless =
        method == "HEAD" || status == 204 || status == 304 || (100..200).contains(&status);
    // The body's end is known without the server closing: keep the
    // client's connection.
    let keep = bodiless || (length.is_some() && !chunked);
    let mut out = format!("{}\r\n", resp.first.replacen("HTTP/1.0", "HTTP/1.1", 1));
    for (k, v) in resp.end_to_end() {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    if !keep {
        out.push_str("Connection: close\r\n");
    }
    out.push_str("\r\n");
    w.write_all(out.as_bytes()).await?;
    if bodiless {
        ctx.stats.passed.fetch_add(1, Ordering::Relaxed);
        return Ok(true);
    }
    match (key, length) {
        (Some(k), Some(len)) if status == 200 && !chunked => {
            store_while_relaying(&mut urd, w, len, &k, ctx).await?;
            Ok(true)
        }
        (_, Some(len)) if !chunked => {
            let n = tokio::io::copy(&mut (&mut urd).take(len), w).await?;
            ctx.stats.passed.fetch_add(1, Ordering::Relaxed);
            if n != len {
                bail!("the server sent {n} of {len} bytes");
            }
            Ok(true)
        }
        _ => {
            // Chunked or up to the close: relayed as it comes, then closed.
            tokio::io::copy(&mut urd, w).await?;
            ctx.stats.passed.fetch_add(1, Ordering::Relaxed);
            Ok(false)
        }
    }
}

/// Connect to the origin, never to one of the host's loopback addresses
/// (a name can resolve to one).
async fn connect_origin(t: &Target, ctx: &Ctx) -> std::io::Result<TcpStream> {
    let addrs = ctx.resolved.lookup(&t.host, t.port).await?;
    let allowed: Vec<SocketAddr> = addrs.into_iter().filter(|a| !local_only(a.ip())).collect();
    if allowed.is_empty() {
        return Err(std::io::Error::other(
            "it resolves only to this host's own addresses",
        ));
    }
    TcpStream::connect(&allowed[..]).await
}

/// Relay `len` bytes and write them to a temporary file beside the
/// cache's; renamed into place once whole. A cache that cannot take the
/// file (no room, an error writing) does not stop the relay.
async fn store_while_relaying<R, W>(
    r: &mut R,
    w: &mut W,
    len: u64,
    key: &str,
    ctx: &Ctx,
) -> Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let dir = &ctx.store.dir;
    let tmp = dir.join(format!(".tmp-{}", crate::docker::names::random_hex(8)));
    let mut file = match room_for(dir, len) {
        true => tokio::fs::File::create(&tmp).await.ok(),
        false => {
            crate::debug!("apt cache: no room in {} for {key}", dir.display());
            None
        }
    };
    let mut left = len;
    let mut buf = vec![0u8; 64 * 1024];
    let relayed: Result<()> = async {
        while left > 0 {
            let want = buf.len().min(left as usize);
            let n = r.read(&mut buf[..want]).await?;
            if n == 0 {
                bail!("the server sent {} of {len} bytes", len - left);
            }
            w.write_all(&buf[..n]).await?;
            if let Some(f) = &mut file {
                if f.write_all(&buf[..n]).await.is_err() {
                    file = None;
                }
            }
            left -= n as u64;
        }
        Ok(())
    }
    .await;
    let kept = match (relayed.is_ok(), file) {
        (true, Some(mut f)) => {
            f.flush().await.is_ok() && {
                drop(f);
                tokio::fs::rename(&tmp, dir.join(key)).await.is_ok()
            }
        }
        _ => false,
    };
    if kept {
        ctx.stats.stored.fetch_add(1, Ordering::Relaxed);
        ctx.stats.stored_bytes.fetch_add(len, Ordering::Relaxed);
    } else {
        let _ = tokio::fs::remove_file(&tmp).await;
        ctx.stats.passed.fetch_add(1, Ordering::Relaxed);
    }
    relayed
}

/// Whether `dir`'s filesystem can take `len` more bytes and keep the
/// margin that copies keep (archive.rs).
fn room_for(dir: &Path, len: u64) -> bool {
    match nix::sys::statvfs::statvfs(dir) {
        Ok(st) => crate::docker::archive::leaves_room(&st, len),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let t =
            Target::parse("http://deb.debian.org/debian/pool/main/h/hello/hello_2.10-3_amd64.deb")
                .unwrap();
        assert_eq!(t.host, "deb.debian.org");
        assert_eq!(t.port, 80);
        assert!(t.cacheable());
        assert!(t.key().ends_with("_hello_2.10-3_amd64.deb"), "{}", t.key());
        let u = Target::parse(
            "http://mirror.example:8080/debian/pool/main/h/hello/hello_2.10-3_amd64.deb",
        )
        .unwrap();
        assert_eq!(u.port, 8080);
        assert_ne!(t.key(), u.key(), "the host is part of the key");
        let v = Target::parse("http://u:p@[::1]:3142/x").unwrap();
        assert_eq!(
            (v.host.as_str(), v.port, v.path.as_str()),
            ("[::1]", 3142, "/x")
        );
        assert!(v.names_loopback());
        assert!(Target::parse("http://127.0.0.5/").unwrap().names_loopback());
        assert!(Target::parse("http://169.254.169.254/latest/meta-data/")
            .unwrap()
            .names_loopback());
        assert!(Target::parse("http://[fe80::1]/").unwrap().names_loopback());
        let meta = Target::parse("http://metadata.internal/computeMetadata/v1/").unwrap();
        assert!(!meta.apt_path());
        assert!(
            Target::parse("http://deb.debian.org/debian/dists/sid/InRelease")
                .unwrap()
                .apt_path()
        );
        assert!(Target::parse(
            "http://deb.debian.org/debian/pool/main/h/hello/hello_2.10-3_amd64.deb"
        )
        .unwrap()
        .apt_path());
        assert!(Target::parse("http://LOCALHOST:80/")
            .unwrap()
            .names_loopback());
        assert!(!Target::parse("http://172.17.0.1:3142/")
            .unwrap()
            .names_loopback());
        assert!(Target::parse("https://deb.debian.org/").is_err());
        assert!(Target::parse("http://:80/").is_err());
        for not in [
            "http://deb.debian.org/debian/dists/bookworm/InRelease",
            "http://deb.debian.org/debian/dists/bookworm/main/binary-amd64/Packages.xz",
            "http://deb.debian.org/x.deb",
            "http://deb.debian.org/debian/pool/main/h/hello/hello_2.10-3.dsc",
        ] {
            assert!(!Target::parse(not).unwrap().cacheable(), "{not}");
        }
        // The key is a plain file name, whatever the URL holds.
        let w = Target::parse("http://h/pool/../../etc/x/a b;$(x).deb").unwrap();
        assert!(!w.key().contains('/') && !w.key().contains(' ') && !w.key().contains('$'));
    }

    #[tokio::test]
    async fn heads() {
        let data = b"\r\nGET http://h/p HTTP/1.1\r\nHost: h\r\nConnection: keep-alive\r\n\r\nrest";
        let mut r = BufReader::new(&data[..]);
        let h = read_head(&mut r).await.unwrap().unwrap();
        assert_eq!(h.first, "GET http://h/p HTTP/1.1");
        assert_eq!(h.get("HOST"), Some("h"));
        assert_eq!(h.end_to_end().count(), 1);
        let mut rest = String::new();
        r.read_to_string(&mut rest).await.unwrap();
        assert_eq!(rest, "rest");
        let long = vec![b'a'; HEAD_LIMIT + 10];
        assert!(read_head(&mut BufReader::new(&long[..])).await.is_err());
        assert!(read_head(&mut BufReader::new(&b""[..]))
            .await
            .unwrap()
            .is_none());
    }
}
