//! The apt cache's one policy for a testbed's request, pure: what is
//! fetched for it, and exactly what rdocker asks for. hyper parsed the
//! request; nothing here parses HTTP again.
//!
//! - Only GET and HEAD of an absolute `http://` URL below an archive's
//!   `dists/` or `pool/`, without a body (405, 400, 403 otherwise).
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

    /// Whether this is something apt fetches from an archive: below a
    /// `dists/` (indices, Release files) or a `pool/` (packages). The proxy
    /// is apt's, not a way out of the testbed through the host.
    pub fn apt_path(&self) -> bool {
        let path = self.plain_path();
        (path.contains("/dists/") || path.contains("/pool/")) && !path.contains("/../")
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
    if !url.apt_path() {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            "only an archive's dists/ and pool/ are proxied",
        ));
    }
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
        assert!(!w.apt_path());
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
        let other: Uri = "http://169.254.169.254/latest/meta-data/".parse().unwrap();
        assert_eq!(
            decide(&Method::GET, &other, &HeaderMap::new())
                .unwrap_err()
                .status,
            StatusCode::FORBIDDEN
        );
    }
}
