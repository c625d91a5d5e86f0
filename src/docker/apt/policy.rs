//! The apt cache's one policy for a testbed's request, pure: what is
//! fetched for it, and exactly what rdocker asks for. hyper parsed the
//! request; nothing here parses HTTP again.
//!
//! - Only GET and HEAD of an absolute `http://` URL, without a body (405,
//!   400 otherwise). Any path: flat repositories (`deb http://h/dir ./`)
//!   have no `dists/`, and the testbed reaches the network without the
//!   proxy anyway; what the proxy must not be is a way to the host.
//! - rdocker builds its own request from the URL: its method, its path
//!   (or the whole URL for a chained proxy), `Host` from the URL, a fixed
//!   `User-Agent`, and of apt's headers only those in [`KEPT`], checked.
//!   The testbed's `Host` and every other header stay behind, so what is
//!   kept under a URL is what that URL gave rdocker.
//! - Where the URL's host resolves to is checked by resolve.rs, before
//!   anything connects, chained or not.

use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, StatusCode, Uri};

/// The `User-Agent` of every request rdocker makes for a testbed.
pub const USER_AGENT: &str = "autopkgtest-virt-rdocker-apt-cache";

/// apt's headers that rdocker asks with, and why: `Range` and `If-Range`
/// resume a partial download (apt's `archives/partial/`, where a lost
/// connection leaves one); `If-Modified-Since` revalidates an index apt
/// already has; `Cache-Control` is how apt asks a chained proxy to
/// revalidate indices (`max-age=0`). No other header of the testbed's
/// goes anywhere.
pub const KEPT: [&str; 4] = ["range", "if-range", "if-modified-since", "cache-control"];

/// The longest value of a kept header: apt's are a date, a byte range
/// or `max-age=0`.
const VALUE_MAX: usize = 128;

/// An absolute `http://` URL as rdocker fetches it.
#[derive(Debug, Clone, PartialEq)]
pub struct Url {
    /// Lowercase; an IPv6 address in brackets.
    pub host: String,
    pub port: u16,
    /// From the first `/`, query included.
    pub path: String,
}

impl Url {
    /// From a URL hyper parsed; the user and password, if any, are
    /// dropped (they never leave rdocker).
    pub fn from_uri(uri: &Uri) -> Result<Url, String> {
        match uri.scheme_str() {
            Some(s) if s.eq_ignore_ascii_case("http") => {}
            Some(s) => return Err(format!("only http:// URLs are proxied, not {s}://")),
            None => {
                return Err(format!(
                    "{uri} is not a proxy request: an absolute http:// URL is needed"
                ))
            }
        }
        let authority = uri.authority().ok_or_else(|| format!("no host in {uri}"))?;
        // Authority::host indexes the first byte of what follows `@`.
        let hostport = authority.as_str().rsplit('@').next().unwrap_or("");
        if hostport.is_empty() || hostport.starts_with(':') {
            return Err(format!("no host in {uri}"));
        }
        let host = authority.host().to_ascii_lowercase();
        if !plain_host(&host) {
            return Err(format!("{host:?} in {uri} is not a host name or address"));
        }
        let port = match authority.port_u16() {
            None => 80,
            Some(0) => return Err(format!("port 0 in {uri}")),
            Some(p) => p,
        };
        let path = match uri.path_and_query().map(|p| p.as_str()) {
            None | Some("") => "/".to_string(),
            Some(p) if p.starts_with('/') => p.to_string(),
            Some(p) => format!("/{p}"),
        };
        Ok(Url { host, port, path })
    }

    /// The whole URL, port included: what the cache keys and what a
    /// chained proxy is asked for.
    pub fn text(&self) -> String {
        format!("http://{}:{}{}", self.host, self.port, self.path)
    }

    /// The host, brackets of IPv6 removed, to resolve.
    pub fn bare_host(&self) -> &str {
        self.host.trim_start_matches('[').trim_end_matches(']')
    }

    /// The `Host` header: host, and port unless 80.
    pub fn host_header(&self) -> String {
        match self.port {
            80 => self.host.clone(),
            p => format!("{}:{p}", self.host),
        }
    }

    fn plain_path(&self) -> &str {
        self.path.split(['?', '#']).next().unwrap_or("")
    }

    /// Whether this is a package, which never changes under its name: a
    /// .deb (or .udeb, .ddeb) below a `pool/`.
    pub fn cacheable(&self) -> bool {
        let path = self.plain_path();
        path.contains("/pool/")
            && [".deb", ".udeb", ".ddeb"].iter().any(|e| path.ends_with(e))
            && !path.contains("/../")
    }

    /// The file name in the cache: the SHA-256 of [`Url::text`] (the host
    /// is part of it, so that a server of the test's own cannot plant a
    /// package under the mirror's name), then the package's own name for
    /// whoever looks.
    pub fn key(&self) -> String {
        let digest = ring::digest::digest(&ring::digest::SHA256, self.text().as_bytes());
        let hex: String = digest.as_ref()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let base = self.plain_path().rsplit('/').next().unwrap_or("");
        let base: String = base
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || "._+~-".contains(*c))
            .take(150)
            .collect();
        format!("{hex}_{base}")
    }
}

/// What rdocker fetches for a request.
#[derive(Debug, Clone)]
pub struct Fetch {
    pub method: Method,
    pub url: Url,
    /// Of [`KEPT`] only, checked.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Where the response is kept, for a whole package (GET, no Range).
    pub key: Option<String>,
}

impl Fetch {
    /// The request rdocker sends: the path to the origin, the whole URL
    /// to a chained proxy; `Host` from the URL either way.
    pub fn request<B>(&self, chained: bool, body: B) -> Result<hyper::Request<B>, String> {
        let target = match chained {
            true => self.url.text(),
            false => self.url.path.clone(),
        };
        let mut b = hyper::Request::builder()
            .method(self.method.clone())
            .uri(target)
            .header(hyper::header::HOST, self.url.host_header())
            .header(hyper::header::USER_AGENT, USER_AGENT);
        for (k, v) in &self.headers {
            b = b.header(k, v);
        }
        b.body(body)
            .map_err(|e| format!("cannot ask for {}: {e}", self.url.text()))
    }
}

/// A request refused: its status and why, for the body.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub status: StatusCode,
    pub why: String,
}

/// A registered name (letters, digits, `.-_~`) or a bracketed IPv6
/// address: what rdocker can resolve and put back into a request line.
fn plain_host(host: &str) -> bool {
    match host.strip_prefix('[') {
        Some(rest) => rest
            .strip_suffix(']')
            .is_some_and(|a| a.parse::<std::net::Ipv6Addr>().is_ok()),
        None => {
            !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-_~".contains(&b))
        }
    }
}

fn refuse(status: StatusCode, why: impl Into<String>) -> Refusal {
    Refusal {
        status,
        why: why.into(),
    }
}

/// The policy: what to fetch for this request head, or why not.
pub fn decide(method: &Method, uri: &Uri, headers: &HeaderMap) -> Result<Fetch, Refusal> {
    if *method != Method::GET && *method != Method::HEAD {
        return Err(refuse(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("only GET and HEAD are proxied, not {method}"),
        ));
    }
    let has_body = headers.contains_key(hyper::header::TRANSFER_ENCODING)
        || headers
            .get_all(hyper::header::CONTENT_LENGTH)
            .iter()
            .any(|v| v.as_bytes() != b"0");
    if has_body {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "requests with a body are not proxied",
        ));
    }
    let url = Url::from_uri(uri).map_err(|e| refuse(StatusCode::BAD_REQUEST, e))?;
    let mut kept = Vec::new();
    for name in KEPT {
        let mut values = headers.get_all(name).iter();
        let Some(v) = values.next() else { continue };
        if values.next().is_some() {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                format!("more than one {name} header"),
            ));
        }
        if !plain_value(name, v) {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                format!("a {name} header that apt does not send"),
            ));
        }
        kept.push((HeaderName::from_static(name), v.clone()));
    }
    let ranged = headers.contains_key(hyper::header::RANGE);
    let key = (*method == Method::GET && url.cacheable() && !ranged).then(|| url.key());
    Ok(Fetch {
        method: method.clone(),
        url,
        headers: kept,
        key,
    })
}

/// A kept header's value: short, printable ASCII; a `Range` of bytes.
fn plain_value(name: &str, v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    let printable =
        !b.is_empty() && b.len() <= VALUE_MAX && b.iter().all(|c| (b' '..=b'~').contains(c));
    printable
        && match name {
            "range" => b.strip_prefix(b"bytes=").is_some_and(|r| {
                !r.is_empty() && r.iter().all(|c| c.is_ascii_digit() || b",- ".contains(c))
            }),
            _ => true,
        }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::from_uri(&s.parse().unwrap()).unwrap()
    }

    #[test]
    fn urls() {
        let t = url("http://deb.debian.org/debian/pool/main/h/hello/hello_2.10-3_amd64.deb");
        assert_eq!((t.host.as_str(), t.port), ("deb.debian.org", 80));
        assert!(t.cacheable());
        assert!(t.key().ends_with("_hello_2.10-3_amd64.deb"), "{}", t.key());
        // The key of the cache directories rdocker made before: kept.
        assert_eq!(
            t.key(),
            format!(
                "{}_hello_2.10-3_amd64.deb",
                ring::digest::digest(
                    &ring::digest::SHA256,
                    b"http://deb.debian.org:80/debian/pool/main/h/hello/hello_2.10-3_amd64.deb"
                )
                .as_ref()[..16]
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
            )
        );
        let u = url("http://Mirror.Example:8080/debian/pool/main/h/hello/hello_2.10-3_amd64.deb");
        assert_eq!((u.host.as_str(), u.port), ("mirror.example", 8080));
        assert_eq!(u.host_header(), "mirror.example:8080");
        assert_ne!(t.key(), u.key(), "the host is part of the key");
        let v = url("http://u:p@[::1]:3142/x");
        assert_eq!(
            (v.host.as_str(), v.bare_host(), v.port, v.path.as_str()),
            ("[::1]", "::1", 3142, "/x")
        );
        assert_eq!(url("http://h").path, "/");
        for bad in [
            "https://deb.debian.org/",
            "/debian/dists/x",
            "http://u@/x",
            "http://[@]/x",
            "http://[1.2.3.4]/x",
            "http://a%2f/x",
            "http://h:0/",
        ] {
            // hyper's parser refuses some, the policy the rest.
            let uri = bad.parse::<Uri>();
            assert!(
                uri.is_err() || Url::from_uri(&uri.unwrap()).is_err(),
                "{bad}"
            );
        }
        for not in [
            "http://deb.debian.org/debian/dists/bookworm/InRelease",
            "http://deb.debian.org/x.deb",
            "http://deb.debian.org/debian/pool/main/h/hello/hello_2.10-3.dsc",
        ] {
            assert!(!url(not).cacheable(), "{not}");
        }
        let w =
            Url::from_uri(&"http://h/pool/../../etc/x/a%20b;$(x).deb".parse().unwrap()).unwrap();
        assert!(!w.key().contains('/') && !w.key().contains('$'));
        assert!(!w.cacheable());
    }

    fn head(lines: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in lines {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn decisions() {
        let deb: Uri = "http://m/debian/pool/main/h/hello/hello_1_all.deb"
            .parse()
            .unwrap();
        let f = decide(
            &Method::GET,
            &deb,
            &head(&[
                ("Host", "evil"),
                ("X-Other", "1"),
                ("If-Modified-Since", "x"),
            ]),
        )
        .unwrap();
        assert!(f.key.is_some());
        let r = f.request(false, ()).unwrap();
        assert_eq!(r.uri(), "/debian/pool/main/h/hello/hello_1_all.deb");
        assert_eq!(r.headers()["host"], "m");
        assert_eq!(r.headers()["user-agent"], USER_AGENT);
        assert_eq!(r.headers().len(), 3);
        let r = f.request(true, ()).unwrap();
        assert_eq!(
            r.uri(),
            "http://m:80/debian/pool/main/h/hello/hello_1_all.deb"
        );
        let ranged = decide(&Method::GET, &deb, &head(&[("Range", "bytes=10-")])).unwrap();
        assert!(ranged.key.is_none());
        assert_eq!(ranged.headers.len(), 1);
        for (m, h, status) in [
            (Method::POST, vec![], 405),
            (Method::CONNECT, vec![], 405),
            (Method::GET, vec![("Content-Length", "5")], 400),
            (Method::GET, vec![("Transfer-Encoding", "chunked")], 400),
            (Method::GET, vec![("Range", "lines=1")], 400),
            (
                Method::GET,
                vec![("Range", "bytes=1-"), ("Range", "bytes=2-")],
                400,
            ),
        ] {
            let e = decide(&m, &deb, &head(&h)).unwrap_err();
            assert_eq!(e.status.as_u16(), status, "{m} {h:?}: {e:?}");
        }
        // Any path: a flat repository's too (the address is resolve.rs's).
        let flat: Uri = "http://h/repo/./Packages.gz".parse().unwrap();
        assert!(decide(&Method::GET, &flat, &HeaderMap::new()).is_ok());
    }
}

/// Property tests of the request head: whatever a testbed sends, hyper
/// and the policy either make a fetch that keeps the policy, or answer a
/// clean 4xx; never a panic.
#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    /// A fetch keeps the policy: the method, a host and port, only kept
    /// headers with plain values, and the request rdocker builds from it
    /// carries nothing else.
    fn conforming(f: &Fetch) -> Result<(), String> {
        if f.method != Method::GET && f.method != Method::HEAD {
            return Err(format!("method {}", f.method));
        }
        if f.url.port == 0 || f.url.host.is_empty() {
            return Err(format!("url {:?}", f.url));
        }
        for (k, v) in &f.headers {
            if !KEPT.contains(&k.as_str()) || !plain_value(k.as_str(), v) {
                return Err(format!("header {k}: {v:?}"));
            }
        }
        for chained in [false, true] {
            let r = f.request(chained, ())?;
            if r.headers()["host"] != f.url.host_header().as_str()
                || r.headers()["user-agent"] != USER_AGENT
                || r.headers().len() != 2 + f.headers.len()
            {
                return Err(format!("request {r:?}"));
            }
        }
        Ok(())
    }

    fn host() -> impl Strategy<Value = String> {
        prop_oneof![
            6 => Just("deb.debian.org".to_string()),
            1 => Just("127.1".to_string()),
            1 => Just("[::1]".to_string()),
            1 => Just("[::ffff:127.0.0.1]".to_string()),
            1 => Just("u:p@h".to_string()),
            1 => Just("".to_string()),
            1 => "[a-zA-Z0-9.:@%\\[\\]_-]{0,24}",
        ]
    }

    fn target() -> impl Strategy<Value = String> {
        let path = prop_oneof![
            3 => Just("/debian/pool/main/h/hello/hello_1_amd64.deb".to_string()),
            3 => Just("/debian/dists/sid/InRelease".to_string()),
            1 => Just("/x/pool/../../etc/passwd".to_string()),
            1 => "(/[a-z.%?#]{0,8}){0,4}",
        ];
        let scheme = prop_oneof![
            6 => Just("http://"),
            1 => Just("HTTP://"),
            1 => Just("https://"),
            1 => Just(""),
            1 => Just("ftp://")

        ];
        let port = prop_oneof![3 => Just(String::new()), 1 => "[:][0-9]{0,6}"];
        (scheme, host(), port, path).prop_map(|(s, h, p, path)| format!("{s}{h}{p}{path}"))
    }

    fn header() -> impl Strategy<Value = (String, String)> {
        let name = prop_oneof![
            Just("Host".to_string()),
            Just("Range".to_string()),
            Just("If-Range".to_string()),
            Just("If-Modified-Since".to_string()),
            Just("Cache-Control".to_string()),
            Just("Content-Length".to_string()),
            Just("Transfer-Encoding".to_string()),
            Just("Connection".to_string()),
            "[A-Za-z-]{1,12}",
        ];
        let value = prop_oneof![
            Just("bytes=0-".to_string()),
            Just("0".to_string()),
            Just("close".to_string()),
            "[ -~]{0,40}",
            proptest::collection::vec(any::<u8>(), 0..40)
                .prop_map(|v| String::from_utf8_lossy(&v).into_owned()),
        ];
        (name, value)
    }

    fn method() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => Just("GET".to_string()),
            2 => Just("HEAD".to_string()),
            1 => Just("POST".to_string()),
            1 => Just("CONNECT".to_string()),
            1 => "[A-Za-z]{1,8}",
        ]
    }

    /// What hyper's server makes of a raw head, answered by the policy.
    fn through_hyper(raw: Vec<u8>) -> (String, Vec<String>) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (mut client, server) = tokio::io::duplex(1 << 16);
            let errors = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
            let errs = errors.clone();
            let svc =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let errs = errs.clone();
                    async move {
                        let status = match decide(req.method(), req.uri(), req.headers()) {
                            Ok(f) => {
                                if let Err(e) = conforming(&f) {
                                    errs.lock().unwrap().push(e);
                                }
                                StatusCode::OK
                            }
                            Err(r) => r.status,
                        };
                        let mut resp = hyper::Response::new(String::new());
                        *resp.status_mut() = status;
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
            let conn = tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .max_buf_size(64 * 1024)
                    .serve_connection(hyper_util::rt::TokioIo::new(server), svc),
            );
            client.write_all(&raw).await.unwrap();
            client.shutdown().await.unwrap();
            let mut out = Vec::new();
            let _ = tokio::time::timeout(
                std::time::Duration::from_secs(5),
                client.read_to_end(&mut out),
            )
            .await;
            conn.abort();
            let errors = errors.lock().unwrap().clone();
            (String::from_utf8_lossy(&out).into_owned(), errors)
        })
    }

    proptest! {
        #[test]
        fn any_head_is_a_conforming_fetch_or_a_4xx(
            m in method(),
            t in target(),
            hs in proptest::collection::vec(header(), 0..6),
        ) {
            let Ok(method) = Method::from_bytes(m.as_bytes()) else { return Ok(()) };
            let Ok(uri) = t.parse::<Uri>() else { return Ok(()) };
            let mut headers = HeaderMap::new();
            for (k, v) in &hs {
                if let (Ok(k), Ok(v)) = (HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_str(v)) {
                    headers.append(k, v);
                }
            }
            match decide(&method, &uri, &headers) {
                Ok(f) => prop_assert_eq!(conforming(&f), Ok(())),
                Err(r) => prop_assert!(r.status.is_client_error(), "{:?}", r),
            }
        }

        #[test]
        fn raw_heads_through_hyper_get_a_fetch_or_a_4xx(
            m in method(),
            t in target(),
            version in prop_oneof![4 => Just("HTTP/1.1"), 2 => Just("HTTP/1.0"), 1 => Just("HTTP/2"), 1 => Just("")],
            hs in proptest::collection::vec(header(), 0..6),
            junk in prop_oneof![3 => Just(Vec::new()), 1 => proptest::collection::vec(any::<u8>(), 0..16)],
        ) {
            let mut raw = format!("{m} {t} {version}\r\n").into_bytes();
            for (k, v) in &hs {
                raw.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
            }
            raw.extend_from_slice(&junk);
            raw.extend_from_slice(b"\r\n\r\n");
            let (out, errors) = through_hyper(raw);
            prop_assert!(errors.is_empty(), "{:?}", errors);
            // Nothing, or one or more answers, each 200 (a conforming
            // fetch) or a 4xx (hyper's or the policy's).
            for line in out.lines().filter(|l| l.starts_with("HTTP/")) {
                let code: u16 = line.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
                prop_assert!(code == 200 || (400..500).contains(&code), "{}", out);
            }
        }
    }
}
