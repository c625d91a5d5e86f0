//! The daemon's address and TLS settings, and how an exec helper is
//! handed exactly the same (context.rs finds them).

use std::path::PathBuf;

pub const DEFAULT_HOST: &str = "unix:///var/run/docker.sock";

/// The daemon address and where it came from, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// unix:///path, tcp://host:port, or ssh://[user@]host[:port].
    pub host: String,
    pub source: String,
    /// For tcp:// only: speak TLS, with these files.
    pub tls: Option<Tls>,
}

/// TLS to a tcp:// daemon, as the docker CLI sets it up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    /// The CA that signed the daemon's certificate; None: the system's CAs.
    pub ca: Option<PathBuf>,
    /// The client certificate and key presented to the daemon, if any.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// False: accept whatever certificate the daemon has (DOCKER_TLS
    /// without DOCKER_TLS_VERIFY, a context's SkipTLSVerify).
    pub verify: bool,
    /// Where these files come from and how to fix them, for errors.
    pub hint: String,
}

impl Endpoint {
    /// print-execute-command's arguments that give its helper exactly this
    /// endpoint: the address, and the TLS settings the server resolved
    /// (file names, not contents), so that the helper never looks them up
    /// again in an environment or context store that may have changed.
    pub fn exec_args(&self) -> Vec<String> {
        let mut a = vec![format!("--host={}", self.host)];
        if let Some(t) = &self.tls {
            let mode = if t.verify { "verify" } else { "no-verify" };
            a.push(format!("--tls={mode}"));
            for (k, p) in [("ca", &t.ca), ("cert", &t.cert), ("key", &t.key)] {
                if let Some(p) = p {
                    a.push(format!("--tls-{k}={}", p.display()));
                }
            }
        }
        a
    }

    /// The socket path for unix:// endpoints.
    pub fn unix_path(&self) -> Option<&str> {
        self.host.strip_prefix("unix://")
    }

    /// How the connection is made, for -d.
    pub fn transport(&self) -> String {
        match &self.tls {
            _ if self.host.starts_with("ssh://") => {
                "ssh, running `docker system dial-stdio' on the remote host".into()
            }
            Some(t) if t.verify => format!(
                "TLS, verifying the daemon against {}{}",
                t.ca.as_deref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "the system's CAs".into()),
                match &t.cert {
                    Some(c) => format!(", presenting {}", c.display()),
                    None => String::new(),
                }
            ),
            Some(t) => format!(
                "TLS, without verifying the daemon's certificate{}",
                match &t.cert {
                    Some(c) => format!(", presenting {}", c.display()),
                    None => String::new(),
                }
            ),
            None if self.unix_path().is_some() => "a unix socket".into(),
            None => "plain TCP, unencrypted".into(),
        }
    }
}

/// The endpoint from print-execute-command's arguments (`exec_args`).
#[derive(Default)]
pub struct ExecArgs {
    host: Option<String>,
    verify: Option<bool>,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

impl ExecArgs {
    /// Take `a` if it is one of `exec_args`'s; Ok(false): not one.
    pub fn take(&mut self, a: &str) -> anyhow::Result<bool> {
        let Some((k, v)) = a.split_once('=') else {
            return Ok(false);
        };
        match k {
            "--host" => self.host = Some(v.to_string()),
            "--tls" => {
                self.verify = Some(match v {
                    "verify" => true,
                    "no-verify" => false,
                    _ => anyhow::bail!("--tls={v}: not verify or no-verify"),
                })
            }
            "--tls-ca" => self.ca = Some(v.into()),
            "--tls-cert" => self.cert = Some(v.into()),
            "--tls-key" => self.key = Some(v.into()),
            _ => return Ok(false),
        }
        Ok(true)
    }

    pub fn endpoint(self) -> anyhow::Result<Endpoint> {
        let host = self
            .host
            .ok_or_else(|| anyhow::anyhow!("--host= missing"))?;
        let files = self.ca.is_some() || self.cert.is_some() || self.key.is_some();
        if files && self.verify.is_none() {
            anyhow::bail!("--tls-ca=, --tls-cert= or --tls-key= without --tls=");
        }
        let tls = self.verify.map(|verify| Tls {
            ca: self.ca,
            cert: self.cert,
            key: self.key,
            verify,
            hint: "the server named these files in print-execute-command's argv, as it \
                   resolved them: they must stay readable while the session runs"
                .into(),
        });
        Ok(Endpoint {
            host,
            source: "print-execute-command".into(),
            tls,
        })
    }
}
