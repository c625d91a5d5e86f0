//! The one wrapper around bollard's client: connecting, version
//! negotiation, and errors that say where we looked.
//!
//! unix:// and plain tcp:// use bollard's own transports. TLS and ssh://
//! go through a bollard custom transport: a hyper client whose connector
//! dials with rustls, or runs `ssh ... docker system dial-stdio` as the
//! docker CLI does (so ~/.ssh/config, keys and agents all apply) and speaks
//! HTTP over its stdin and stdout. One ssh process per connection, owned by
//! the connection: nothing on disk, nothing to clean up but children that
//! die with their pipes.

use anyhow::{anyhow, bail, Context, Result};
use bollard::{BollardRequest, ClientVersion, Docker};
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::rustls;

use super::endpoint::{Endpoint, Tls};

/// Long operations (copies, execs) are bounded by their own timeouts; this
/// only keeps a dead daemon from hanging a request for ever.
const REQUEST_TIMEOUT_SECS: u64 = 3600;

#[derive(Clone)]
pub struct Client {
    pub docker: Docker,
    pub endpoint: Endpoint,
    /// A local socket that reaches the same daemon (tunnel.rs's forward
    /// of an ssh:// daemon), used instead of `endpoint`'s own route.
    pub via: Option<PathBuf>,
}

impl Client {
    /// Connect and negotiate the API version with the daemon (Debian's
    /// docker.io 20.10 speaks 1.41, older than bollard's default).
    pub async fn connect(endpoint: &Endpoint, via: Option<&Path>) -> Result<Client> {
        match via {
            Some(v) => crate::debug!("connecting through {}", v.display()),
            None => crate::debug!("connecting through {}", endpoint.transport()),
        }
        // A server lives long: always keep an ssh connection ready (when
        // ssh is the route taken).
        let docker = raw_connect(endpoint, bollard::API_DEFAULT_VERSION, usize::MAX, via)?;
        let docker = match docker.negotiate_version().await {
            Ok(d) => d,
            Err(e) => return Err(unreachable_error(endpoint, e, diagnose(endpoint).await)),
        };
        Ok(Client {
            docker,
            endpoint: endpoint.clone(),
            via: via.map(Path::to_path_buf),
        })
    }

    /// Connect with an already negotiated version: the exec helper runs
    /// once per command, and a /version round trip would cost each one.
    pub fn connect_with_version(
        endpoint: &Endpoint,
        version: &str,
        via: Option<&Path>,
    ) -> Result<Client> {
        let v = parse_version(version)?;
        Ok(Client {
            // An exec needs two connections (the hijacked stream, then the
            // exit status): over ssh the second is dialed with the first.
            docker: raw_connect(endpoint, &v, 1, via)?,
            endpoint: endpoint.clone(),
            via: via.map(Path::to_path_buf),
        })
    }

    pub fn api_version(&self) -> String {
        let v = self.docker.client_version();
        format!("{}.{}", v.major_version, v.minor_version)
    }
}

fn parse_version(s: &str) -> Result<ClientVersion> {
    let (maj, min) = s
        .split_once('.')
        .ok_or_else(|| anyhow!("bad API version {s:?}: expected MAJOR.MINOR"))?;
    Ok(ClientVersion {
        major_version: maj.parse().context("bad API major version")?,
        minor_version: min.parse().context("bad API minor version")?,
    })
}

/// `spares`: how many ssh connections to start ahead of need (see SshDial).
/// `via`: a local socket that reaches the same daemon (tunnel.rs,
/// relay.rs), tried first for each connection; the endpoint's own route
/// is the fallback, for when nothing answers there any more (the server
/// or its ssh connection is gone).
fn raw_connect(
    endpoint: &Endpoint,
    version: &ClientVersion,
    spares: usize,
    via: Option<&Path>,
) -> Result<Docker> {
    let host = endpoint.host.as_str();
    if let Some(path) = via {
        if endpoint.tls.is_none() && !host.starts_with("ssh://") {
            bail!("{host}: only ssh:// and TLS daemons are reached through a local socket");
        }
        let dial = Dial::Via(Box::new(Via {
            path: path.to_path_buf(),
            endpoint: endpoint.clone(),
            spares,
            fallback: std::sync::OnceLock::new(),
        }));
        return Ok(custom(dial, version));
    }
    let docker = if let Some(path) = endpoint.unix_path() {
        Docker::connect_with_unix(path, REQUEST_TIMEOUT_SECS, version)
    } else if endpoint.tls.is_some() || host.starts_with("ssh://") {
        return Ok(custom(own_dial(endpoint, spares)?, version));
    } else if host.starts_with("tcp://") || host.starts_with("http://") {
        Docker::connect_with_http(host, REQUEST_TIMEOUT_SECS, version)
    } else {
        bail!(
            "unsupported daemon address {host} (from {}): rdocker reaches unix://, tcp:// \
             (with TLS from DOCKER_TLS_VERIFY or a context) and ssh:// daemons, as the docker \
             CLI does; set DOCKER_HOST, --host or a docker context to one of those",
            endpoint.source
        );
    };
    docker.map_err(|e| unreachable_error(endpoint, e, None))
}

/// The custom transport's dialer for a TLS or ssh:// endpoint.
fn own_dial(endpoint: &Endpoint, spares: usize) -> Result<Dial> {
    let host = endpoint.host.as_str();
    if let Some(tls) = &endpoint.tls {
        return Ok(Dial::Tls(TlsDial::new(host, tls)?));
    }
    let args = ssh_args(host)
        .map_err(|e| anyhow!("bad daemon address {host} (from {}): {e}", endpoint.source))?;
    crate::debug!("each connection runs: ssh {}", args.join(" "));
    Ok(Dial::Ssh(Box::new(SshDial::new(
        host,
        &endpoint.source,
        spares,
    )?)))
}

/// Why a TLS daemon failed a request, if it says so after the handshake.
/// In TLS 1.3 a daemon checks the client's certificate after the client
/// has finished its handshake, and its alert then races the first
/// request: the request may fail first, with a bare "connection closed".
/// A fresh connection that only waits for that alert gets the reason.
async fn diagnose(endpoint: &Endpoint) -> Option<String> {
    let tls = endpoint.tls.as_ref()?;
    let dial = TlsDial::new(&endpoint.host, tls).ok()?;
    let mut s = dial.dial().await.ok()?;
    let mut b = [0u8; 1];
    let read = tokio::io::AsyncReadExt::read(&mut s, &mut b);
    match tokio::time::timeout(std::time::Duration::from_secs(2), read).await {
        Ok(Err(e)) if e.get_ref().is_some_and(|i| i.is::<rustls::Error>()) => {
            Some(dial.explain.say(&e))
        }
        _ => None,
    }
}

fn unreachable_error(
    endpoint: &Endpoint,
    e: bollard::errors::Error,
    why: Option<String>,
) -> anyhow::Error {
    let plain_to_tls = endpoint.tls.is_none() && endpoint.host.starts_with("tcp://");
    let podman = endpoint.source.contains("--podman");
    let (what, ask) = if podman {
        (
            "Podman's API service",
            "Is it running (`podman system service`, or podman.socket), and does \
             CONTAINER_HOST say where it listens?",
        )
    } else {
        (
            "the Docker daemon",
            "Is the daemon running, and do --host, --context, DOCKER_HOST or the docker \
             context say where it listens?",
        )
    };
    anyhow!(
        "{what} is unreachable at {} (from {}): {}. {ask}{}",
        endpoint.host,
        endpoint.source,
        why.unwrap_or_else(|| chain(&e)),
        if plain_to_tls && !podman {
            " If it wants TLS, set DOCKER_TLS_VERIFY and DOCKER_CERT_PATH, or use a context \
             with TLS material."
        } else {
            ""
        }
    )
}

/// An error and its causes, which bollard's and hyper's messages leave out.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = e.to_string();
    let mut cur = e.source();
    while let Some(err) = cur {
        let s = err.to_string();
        if !msg.contains(&s) {
            msg.push_str(&format!(": {s}"));
        }
        cur = err.source();
    }
    msg
}

/// The HTTP status of a daemon error, if it was one.
pub fn status_of(e: &bollard::errors::Error) -> Option<u16> {
    match e {
        bollard::errors::Error::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// The custom transport.

/// A bollard client over our own connector. Connections are pooled as with
/// bollard's transports, so one server session reuses a few of them.
fn custom(dial: Dial, version: &ClientVersion) -> Docker {
    let connector = Connector(Arc::new(dial));
    let client = Arc::new(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(connector),
    );
    let transport = move |req: BollardRequest| {
        let client = client.clone();
        async move {
            client
                .request(req)
                .await
                .map_err(|e| bollard::errors::Error::IOError {
                    err: io::Error::other(innermost(&e)),
                })
        }
    };
    Docker::connect_with_custom_transport(
        transport,
        Some("http://docker"),
        REQUEST_TIMEOUT_SECS,
        version,
    )
    .expect("a custom transport always connects")
}

/// hyper wraps our dialing errors ("client error (Connect)"): say what the
/// first io::Error says, which is ours, or else the whole chain.
fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            return io.to_string();
        }
        cur = err.source();
    }
    chain(e)
}

enum Dial {
    Tls(TlsDial),
    // Boxed: it is most of the enum's size.
    Ssh(Box<SshDial>),
    Via(Box<Via>),
}

/// A local socket first, the endpoint's own route if nothing answers:
/// made at the first need (a helper on the socket reads no certificate).
struct Via {
    path: PathBuf,
    endpoint: Endpoint,
    spares: usize,
    fallback: std::sync::OnceLock<std::result::Result<Dial, String>>,
}

impl Dial {
    fn dial(&self) -> Pin<Box<dyn Future<Output = io::Result<Stream>> + Send + '_>> {
        Box::pin(async move {
            match self {
                Dial::Tls(t) => t
                    .dial()
                    .await
                    .map(|s| Stream::Tls(Box::new(s), t.explain.clone())),
                Dial::Ssh(s) => s.connection().map(|c| Stream::Ssh(Box::new(c))),
                Dial::Via(v) => match tokio::net::UnixStream::connect(&v.path).await {
                    Ok(s) => Ok(Stream::Unix(s)),
                    Err(e) => {
                        let fallback = v.fallback.get_or_init(|| {
                            crate::debug!(
                                "{} does not answer ({e}); connecting through {} instead",
                                v.path.display(),
                                v.endpoint.transport()
                            );
                            own_dial(&v.endpoint, v.spares).map_err(|e| format!("{e:#}"))
                        });
                        match fallback {
                            Ok(d) => d.dial().await,
                            Err(msg) => Err(io::Error::other(msg.clone())),
                        }
                    }
                },
            }
        })
    }
}

#[derive(Clone)]
struct Connector(Arc<Dial>);

impl tower_service::Service<hyper::Uri> for Connector {
    type Response = Io;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Io>> + Send>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: hyper::Uri) -> Self::Future {
        let dial = self.0.clone();
        Box::pin(async move {
            let s = dial.dial().await?;
            Ok(Io(hyper_util::rt::TokioIo::new(s)))
        })
    }
}

/// A connection as hyper wants it.
struct Io(hyper_util::rt::TokioIo<Stream>);

impl hyper_util::client::legacy::connect::Connection for Io {
    fn connected(&self) -> hyper_util::client::legacy::connect::Connected {
        hyper_util::client::legacy::connect::Connected::new()
    }
}

impl hyper::rt::Read for Io {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Io {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

enum Stream {
    /// With what explains its errors: under TLS 1.3 a refused client
    /// certificate only shows on the first read.
    Tls(
        Box<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
        Arc<Explain>,
    ),
    Ssh(Box<SshStream>),
    Unix(tokio::net::UnixStream),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tls(s, ex) => Pin::new(s.as_mut())
                .poll_read(cx, buf)
                .map_err(|e| ex.wrap(e)),
            Stream::Ssh(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tls(s, ex) => Pin::new(s.as_mut())
                .poll_write(cx, buf)
                .map_err(|e| ex.wrap(e)),
            Stream::Ssh(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tls(s, _) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Ssh(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tls(s, _) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Ssh(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

// ---------------------------------------------------------------------------
// TLS.

/// TLS connections to a tcp:// daemon with TLS, for relay.rs: set up
/// (certificates read and checked) once.
pub struct TlsDialer(TlsDial);

pub type TlsStream = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

impl TlsDialer {
    /// None: the endpoint does not speak TLS.
    pub fn new(endpoint: &Endpoint) -> Result<Option<TlsDialer>> {
        match &endpoint.tls {
            Some(tls) => Ok(Some(TlsDialer(TlsDial::new(&endpoint.host, tls)?))),
            None => Ok(None),
        }
    }

    pub async fn dial(&self) -> io::Result<TlsStream> {
        self.0.dial().await
    }
}

struct TlsDial {
    addr: String,
    /// The name the daemon's certificate must carry.
    name: rustls::pki_types::ServerName<'static>,
    connector: tokio_rustls::TlsConnector,
    explain: Arc<Explain>,
}

/// What a TLS error means, given where the files came from.
struct Explain {
    addr: String,
    host: String,
    tls: Tls,
}

impl TlsDial {
    /// Reads and checks every file now, so that a missing or bad one is
    /// reported by name before anything is sent.
    fn new(url: &str, tls: &Tls) -> Result<TlsDial> {
        let (host, port) = split_host_port(url, "tcp://")
            .or_else(|| split_host_port(url, "https://"))
            .ok_or_else(|| anyhow!("cannot parse the daemon address {url}"))?;
        let port = port.unwrap_or(2376);
        let name = rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|e| anyhow!("{host} (in {url}) is not a valid TLS server name: {e}"))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .context("rustls cannot set up TLS")?;
        let builder = if tls.verify {
            let mut roots = rustls::RootCertStore::empty();
            match &tls.ca {
                Some(ca) => {
                    for c in read_certs(ca, "the CA certificate", tls)? {
                        roots.add(c).map_err(|e| {
                            anyhow!(
                                "{} is not a usable CA certificate ({e}); {}",
                                ca.display(),
                                tls.hint
                            )
                        })?;
                    }
                }
                None => {
                    let system = Path::new("/etc/ssl/certs/ca-certificates.crt");
                    if let Ok(pem) = std::fs::read(system) {
                        use rustls::pki_types::pem::PemObject;
                        let certs = rustls::pki_types::CertificateDer::pem_slice_iter(&pem);
                        roots.add_parsable_certificates(certs.flatten());
                    }
                }
            }
            builder.with_root_certificates(roots)
        } else {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
        };
        let config = match (&tls.cert, &tls.key) {
            (Some(cert), Some(key)) => {
                let certs = read_certs(cert, "the client certificate", tls)?;
                let key_der = read_key(key, tls)?;
                builder.with_client_auth_cert(certs, key_der).map_err(|e| {
                    anyhow!(
                        "{} and {} do not make a usable client certificate ({e}): the key must \
                         be the certificate's; {}",
                        cert.display(),
                        key.display(),
                        tls.hint
                    )
                })?
            }
            (Some(cert), None) => bail!(
                "there is a client certificate {} but no key.pem beside it; {}",
                cert.display(),
                tls.hint
            ),
            (None, Some(key)) => bail!(
                "there is a client key {} but no cert.pem beside it; {}",
                key.display(),
                tls.hint
            ),
            (None, None) => builder.with_no_client_auth(),
        };
        let mut config = config;
        // No session resumption, as the docker CLI (Go's default): some
        // TLS terminators refuse to resume sessions with client certificates.
        config.resumption = rustls::client::Resumption::disabled();
        let addr = format!("{}:{port}", bracket(&host));
        Ok(TlsDial {
            addr: addr.clone(),
            name,
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            explain: Arc::new(Explain {
                addr,
                host,
                tls: tls.clone(),
            }),
        })
    }

    async fn dial(&self) -> io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let tcp = tokio::net::TcpStream::connect(&self.addr)
            .await
            .map_err(|e| {
                io::Error::new(e.kind(), format!("cannot connect to {}: {e}", self.addr))
            })?;
        let _ = tcp.set_nodelay(true);
        self.connector
            .connect(self.name.clone(), tcp)
            .await
            .map_err(|e| io::Error::other(self.explain.say(&e)))
    }
}

impl Explain {
    /// A TLS error said with what to check; other errors as they are.
    fn wrap(&self, e: io::Error) -> io::Error {
        if e.get_ref().is_some_and(|i| i.is::<rustls::Error>()) {
            io::Error::other(self.say(&e))
        } else {
            e
        }
    }

    /// A failed handshake, said with what to check.
    fn say(&self, e: &io::Error) -> String {
        use rustls::{AlertDescription as A, CertificateError as C, Error as E};
        let base = format!("the TLS handshake with {} failed: {e}", self.addr);
        let ca = self
            .tls
            .ca
            .as_deref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "the system's CAs".into());
        let why = match e.get_ref().and_then(|i| i.downcast_ref::<E>()) {
            Some(E::InvalidCertificate(C::UnknownIssuer | C::BadSignature)) => format!(
                "the daemon's certificate is not signed by {ca}; that must be the CA that \
                 signed the daemon's certificate"
            ),
            Some(E::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. })) => {
                format!(
                    "the daemon's certificate is not valid for {}: its subjectAltName must \
                     name the host or address rdocker connects to",
                    self.host
                )
            }
            Some(E::InvalidCertificate(C::Expired | C::ExpiredContext { .. })) => {
                "the daemon's certificate has expired".into()
            }
            Some(E::AlertReceived(
                A::CertificateRequired | A::BadCertificate | A::UnknownCA | A::HandshakeFailure,
            )) => match &self.tls.cert {
                None => "the daemon wants a client certificate, and there is none".into(),
                Some(c) => format!(
                    "the daemon refused the client certificate {}: it must be signed by a CA \
                     the daemon trusts",
                    c.display()
                ),
            },
            Some(E::InvalidMessage(_)) => format!(
                "is it a TLS port? If the daemon at {} speaks plain HTTP, do not set \
                 DOCKER_TLS_VERIFY or DOCKER_TLS",
                self.addr
            ),
            _ => return format!("{base}; {}", self.tls.hint),
        };
        format!("{base}: {why}; {}", self.tls.hint)
    }
}

fn read_certs(
    path: &Path,
    what: &str,
    tls: &Tls,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>> {
    use rustls::pki_types::pem::PemObject;
    let pem = std::fs::read(path)
        .map_err(|e| anyhow!("cannot read {what} {}: {e}; {}", path.display(), tls.hint))?;
    let certs: Vec<_> = rustls::pki_types::CertificateDer::pem_slice_iter(&pem)
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| {
            anyhow!(
                "{what} {} is not valid PEM ({e}); {}",
                path.display(),
                tls.hint
            )
        })?;
    if certs.is_empty() {
        bail!(
            "{what} {} holds no PEM certificate (-----BEGIN CERTIFICATE-----); {}",
            path.display(),
            tls.hint
        );
    }
    Ok(certs)
}

fn read_key(path: &Path, tls: &Tls) -> Result<rustls::pki_types::PrivateKeyDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    let pem = std::fs::read(path).map_err(|e| {
        anyhow!(
            "cannot read the client key {}: {e}; {}",
            path.display(),
            tls.hint
        )
    })?;
    rustls::pki_types::PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        anyhow!(
            "the client key {} holds no usable PEM private key ({e}); {}",
            path.display(),
            tls.hint
        )
    })
}

/// Accepts any daemon certificate, still checking the handshake's
/// signatures: DOCKER_TLS without DOCKER_TLS_VERIFY, or SkipTLSVerify.
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// host and port of scheme://[user@]host[:port][/path], IPv6 unbracketed.
fn split_host_port(url: &str, scheme: &str) -> Option<(String, Option<u16>)> {
    let rest = url.strip_prefix(scheme)?;
    let authority = rest.split('/').next()?;
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, after) = v6.split_once(']')?;
        (h, after.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if host.is_empty() {
        return None;
    }
    let port = match port {
        Some(p) => Some(p.parse().ok()?),
        None => None,
    };
    Some((host.to_string(), port))
}

fn bracket(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

// ---------------------------------------------------------------------------
// ssh.

/// ssh costs a handshake per connection (hundreds of milliseconds): a
/// spare connection is started as soon as one is taken, so that the next
/// one is ready or on its way when it is needed.
struct SshDial {
    program: PathBuf,
    args: Vec<String>,
    /// The address, for messages.
    url: String,
    spare: std::sync::Mutex<Option<SshStream>>,
    spares_left: std::sync::atomic::AtomicUsize,
}

impl SshDial {
    fn new(url: &str, source: &str, spares: usize) -> Result<SshDial> {
        let args =
            ssh_args(url).map_err(|e| anyhow!("bad daemon address {url} (from {source}): {e}"))?;
        let program = which::which("ssh").map_err(|_| {
            anyhow!(
                "the daemon address {url} (from {source}) is reached with the ssh client, as \
                 the docker CLI does, and there is no `ssh' on PATH; install openssh-client"
            )
        })?;
        Ok(SshDial {
            program,
            args,
            url: url.to_string(),
            spare: std::sync::Mutex::new(None),
            spares_left: std::sync::atomic::AtomicUsize::new(spares),
        })
    }

    /// A connection: the spare if it is still alive, else a new one.
    fn connection(&self) -> io::Result<SshStream> {
        let spare = self.spare.lock().map(|mut s| s.take()).unwrap_or(None);
        let conn = match spare.filter(|s| s.alive()) {
            Some(s) => s,
            None => self.dial()?,
        };
        use std::sync::atomic::Ordering::Relaxed;
        if self
            .spares_left
            .fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1))
            .is_ok()
        {
            if let (Ok(s), Ok(mut slot)) = (self.dial(), self.spare.lock()) {
                *slot = Some(s);
            }
        }
        Ok(conn)
    }

    fn dial(&self) -> io::Result<SshStream> {
        let mut child = tokio::process::Command::new(&self.program)
            .args(&self.args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            // Its own process group: a Ctrl-C or a CI runner's signal to
            // ours must leave the transport up while we remove the testbed.
            .process_group(0)
            .spawn()
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot run {}: {e}", self.program.display()),
                )
            })?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let mut stderr = child.stderr.take().expect("piped");
        // Drained all along (a full pipe would stall ssh), kept for errors.
        let stderr = tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut kept = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                if kept.len() < 16384 {
                    kept.extend_from_slice(&buf[..n]);
                }
            }
            kept
        });
        Ok(SshStream {
            _child: child,
            stdin: Some(stdin),
            stdout,
            got_data: false,
            stderr: Some(stderr),
            url: self.url.clone(),
        })
    }
}

/// `ssh [-l user] [-p port] -- host docker system dial-stdio`, with the
/// docker CLI's options.
fn ssh_args(url: &str) -> std::result::Result<Vec<String>, String> {
    let login = ssh_login(url)?;
    let mut args = login.options;
    args.extend(["--".into(), login.host, "docker".into()]);
    if let Some(path) = login.path {
        // A socket path on the remote host, as newer docker CLIs allow.
        args.push(format!("--host=unix://{path}"));
    }
    args.extend(["system".into(), "dial-stdio".into()]);
    Ok(args)
}

/// How to log in to an ssh:// address, as the docker CLI does.
pub struct SshLogin {
    /// ssh's options, before `--`.
    pub options: Vec<String>,
    pub host: String,
    /// The daemon's socket on the remote host, if the address names one.
    pub path: Option<String>,
}

pub fn ssh_login(url: &str) -> std::result::Result<SshLogin, String> {
    let rest = url.strip_prefix("ssh://").ok_or("not an ssh:// address")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if rest.contains('?') || rest.contains('#') {
        return Err("ssh:// addresses take no query or fragment".into());
    }
    let (user, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    if user.is_some_and(|u| u.contains(':')) {
        return Err(
            "a password in an ssh:// address is not supported; use a key or ssh-agent".into(),
        );
    }
    let (host, port) =
        split_host_port(&format!("ssh://{hostport}"), "ssh://").ok_or("no host, or a bad port")?;
    let mut args: Vec<String> = ["-o", "ConnectTimeout=30", "-T"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    if let Some(u) = user.filter(|u| !u.is_empty()) {
        args.extend(["-l".into(), u.to_string()]);
    }
    if let Some(p) = port {
        args.extend(["-p".into(), p.to_string()]);
    }
    Ok(SshLogin {
        options: args,
        host,
        path: (!path.is_empty() && path != "/").then(|| path.to_string()),
    })
}

/// One `docker system dial-stdio` over ssh. Should it end before saying
/// anything, ssh or the remote docker failed: what they said on stderr
/// becomes the error.
struct SshStream {
    _child: tokio::process::Child,
    /// None once shut down: closing the pipe is ssh's only end-of-input
    /// (tokio's own shutdown of a pipe only flushes).
    stdin: Option<tokio::process::ChildStdin>,
    stdout: tokio::process::ChildStdout,
    got_data: bool,
    stderr: Option<tokio::task::JoinHandle<Vec<u8>>>,
    url: String,
}

impl SshStream {
    fn alive(&self) -> bool {
        // Neither exited nor closed its stdout (ssh exits soon after).
        self._child.id().is_some() && !self.stderr.as_ref().is_some_and(|h| h.is_finished())
    }

    /// The error, once ssh's stderr is complete.
    fn failure(
        &mut self,
        cx: &mut std::task::Context<'_>,
        e: Option<io::Error>,
    ) -> Poll<io::Error> {
        let said = match &mut self.stderr {
            Some(h) => {
                let got = ready!(Pin::new(h).poll(cx)).unwrap_or_default();
                self.stderr = None;
                String::from_utf8_lossy(&got).trim().to_string()
            }
            None => String::new(),
        };
        Poll::Ready(io::Error::other(ssh_failure(&self.url, &said, e)))
    }
}

fn ssh_failure(url: &str, said: &str, e: Option<io::Error>) -> String {
    let mut msg = format!("`ssh ... docker system dial-stdio' for {url} ended without a reply");
    if let Some(e) = e {
        msg.push_str(&format!(" ({e})"));
    }
    if said.is_empty() {
        msg.push_str(", and said nothing");
    } else {
        msg.push_str(&format!("; it said: {said}"));
    }
    if said.contains("docker: command not found")
        || said.contains("docker: not found")
        || said.contains("\"docker\": executable file not found")
    {
        msg.push_str(
            ". The remote host needs the docker CLI, whose `docker system dial-stdio' \
                      connects to its daemon",
        );
    } else if said.contains("Permission denied") || said.contains("Host key verification failed") {
        msg.push_str(
            ". rdocker runs the ssh client as the docker CLI does: check that \
                      `ssh HOST docker version' works without a prompt (keys, ssh-agent, \
                      known_hosts, ~/.ssh/config)",
        );
    }
    msg
}

impl AsyncRead for SshStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.stdout).poll_read(cx, buf))?;
        if buf.filled().len() > before {
            this.got_data = true;
        } else if !this.got_data {
            return this.failure(cx, None).map(Err);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for SshStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let Some(stdin) = this.stdin.as_mut() else {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        };
        match ready!(Pin::new(stdin).poll_write(cx, buf)) {
            Err(e) if !this.got_data => this.failure(cx, Some(e)).map(Err),
            r => Poll::Ready(r),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().stdin.as_mut() {
            Some(stdin) => Pin::new(stdin).poll_flush(cx),
            None => Poll::Ready(Ok(())),
        }
    }
    fn poll_shutdown(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(stdin) = this.stdin.as_mut() {
            ready!(Pin::new(stdin).poll_flush(cx))?;
        }
        this.stdin = None;
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_command_line() {
        let a = |u: &str| ssh_args(u).unwrap().join(" ");
        assert_eq!(
            a("ssh://me@example.org:2222"),
            "-o ConnectTimeout=30 -T -l me -p 2222 -- example.org docker system dial-stdio"
        );
        assert_eq!(
            a("ssh://example.org"),
            "-o ConnectTimeout=30 -T -- example.org docker system dial-stdio"
        );
        assert_eq!(
            a("ssh://[::1]:22/run/user/1000/docker.sock"),
            "-o ConnectTimeout=30 -T -p 22 -- ::1 docker --host=unix:///run/user/1000/docker.sock \
             system dial-stdio"
        );
        assert!(ssh_args("ssh://me:secret@h")
            .unwrap_err()
            .contains("password"));
        assert!(ssh_args("ssh://").is_err());
        assert!(ssh_args("ssh://h:port").is_err());
    }

    #[test]
    fn host_and_port() {
        assert_eq!(
            split_host_port("tcp://127.0.0.1:2376", "tcp://"),
            Some(("127.0.0.1".into(), Some(2376)))
        );
        assert_eq!(
            split_host_port("tcp://docker.example/", "tcp://"),
            Some(("docker.example".into(), None))
        );
        assert_eq!(
            split_host_port("tcp://[::1]:2376", "tcp://"),
            Some(("::1".into(), Some(2376)))
        );
        assert_eq!(bracket("::1"), "[::1]");
    }

    #[test]
    fn ssh_failures_say_what_to_do() {
        let m = ssh_failure("ssh://h", "bash: line 1: docker: command not found", None);
        assert!(m.contains("needs the docker CLI"), "{m}");
        let m = ssh_failure("ssh://h", "me@h: Permission denied (publickey).", None);
        assert!(m.contains("without a prompt"), "{m}");
        assert!(ssh_failure("ssh://h", "", None).contains("said nothing"));
    }

    fn tls(dir: &Path, verify: bool) -> Tls {
        Tls {
            ca: Some(dir.join("ca.pem")),
            cert: None,
            key: None,
            verify,
            hint: "HINT".into(),
        }
    }

    #[test]
    fn missing_or_bad_certificates_are_named() {
        let dir = std::env::temp_dir().join(format!("rdocker-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let err = TlsDial::new("tcp://127.0.0.1:2376", &tls(&dir, true))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains(&format!("{}/ca.pem", dir.display())), "{err}");
        assert!(err.contains("HINT"), "{err}");
        std::fs::write(dir.join("ca.pem"), "not a certificate\n").unwrap();
        let err = TlsDial::new("tcp://127.0.0.1:2376", &tls(&dir, true))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("holds no PEM certificate"), "{err}");
        // Without verification the CA is not read at all.
        assert!(TlsDial::new("tcp://127.0.0.1:2376", &tls(&dir, false)).is_ok());
        let mut half = tls(&dir, false);
        half.cert = Some(dir.join("cert.pem"));
        let err = TlsDial::new("tcp://127.0.0.1:2376", &half)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("no key.pem"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
