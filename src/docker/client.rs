//! The one wrapper around bollard's client: connecting, version
//! negotiation, and errors that say where we looked.

use anyhow::{anyhow, bail, Context, Result};
use bollard::{ClientVersion, Docker};

use super::endpoint::Endpoint;

/// Long operations (copies, execs) are bounded by their own timeouts; this
/// only keeps a dead daemon from hanging a request for ever.
const REQUEST_TIMEOUT_SECS: u64 = 3600;

#[derive(Clone)]
pub struct Client {
    pub docker: Docker,
    pub endpoint: Endpoint,
}

impl Client {
    /// Connect and negotiate the API version with the daemon (Debian's
    /// docker.io 20.10 speaks 1.41, older than bollard's default).
    pub async fn connect(endpoint: &Endpoint) -> Result<Client> {
        let docker = raw_connect(endpoint, bollard::API_DEFAULT_VERSION)?;
        let docker = docker
            .negotiate_version()
            .await
            .map_err(|e| unreachable_error(endpoint, e))?;
        Ok(Client {
            docker,
            endpoint: endpoint.clone(),
        })
    }

    /// Connect with an already negotiated version: the exec helper runs
    /// once per command, and a /version round trip would cost each one.
    pub fn connect_with_version(endpoint: &Endpoint, version: &str) -> Result<Client> {
        let v = parse_version(version)?;
        Ok(Client {
            docker: raw_connect(endpoint, &v)?,
            endpoint: endpoint.clone(),
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

fn raw_connect(endpoint: &Endpoint, version: &ClientVersion) -> Result<Docker> {
    let host = endpoint.host.as_str();
    let docker = if let Some(path) = endpoint.unix_path() {
        Docker::connect_with_unix(path, REQUEST_TIMEOUT_SECS, version)
    } else if host.starts_with("tcp://") || host.starts_with("http://") {
        Docker::connect_with_http(host, REQUEST_TIMEOUT_SECS, version)
    } else {
        bail!(
            "unsupported daemon address {host} (from {}): rdocker reaches unix:// and tcp:// \
             daemons; set DOCKER_HOST or --host to one of those",
            endpoint.source
        );
    };
    docker.map_err(|e| unreachable_error(endpoint, e))
}

fn unreachable_error(endpoint: &Endpoint, e: bollard::errors::Error) -> anyhow::Error {
    anyhow!(
        "the Docker daemon is unreachable at {} (from {}): {e}. Is the daemon running, \
         and is DOCKER_HOST (or --host) set to where it listens?",
        endpoint.host,
        endpoint.source
    )
}

/// The HTTP status of a daemon error, if it was one.
pub fn status_of(e: &bollard::errors::Error) -> Option<u16> {
    match e {
        bollard::errors::Error::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}
