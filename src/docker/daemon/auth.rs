//! Registry credentials for `--pull`, found as the docker CLI finds them:
//! a credential helper named for the registry in config.json's
//! `credHelpers`, else its `credsStore`, else the `auths` that
//! `docker login` wrote. The daemon pulls, but only with the credentials
//! its client sends (X-Registry-Auth): without them a private image fails
//! with "no basic auth credentials" where `docker pull` works.

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine;
use bollard::auth::DockerCredentials;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

/// Docker Hub's key in config.json and for credential helpers.
const HUB: &str = "https://index.docker.io/v1/";

/// The registry an image reference names: its first component when that
/// looks like a host (a dot, a port, or localhost), else Docker Hub.
pub fn registry_of(image: &str) -> String {
    match image.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            if first == "docker.io" || first == "index.docker.io" {
                HUB.to_string()
            } else {
                first.to_string()
            }
        }
        _ => HUB.to_string(),
    }
}

/// How the user logs in to `registry` with the docker CLI.
pub fn login_command(registry: &str) -> String {
    if registry == HUB {
        "docker login".into()
    } else {
        format!("docker login {registry}")
    }
}

/// The keys `docker login` may have stored a registry under.
fn keys(registry: &str) -> Vec<String> {
    if registry == HUB {
        return vec![HUB.into(), "index.docker.io".into(), "docker.io".into()];
    }
    ["", "https://", "http://"]
        .iter()
        .flat_map(|scheme| {
            ["", "/", "/v1/", "/v2/"]
                .iter()
                .map(move |suffix| format!("{scheme}{registry}{suffix}"))
        })
        .collect()
}

/// What config.json says for `registry`: a helper to ask, stored
/// credentials, or nothing.
#[derive(Debug, PartialEq)]
pub enum Source {
    Helper(String),
    Stored(DockerCredentials),
    None,
}

/// The pure part: config.json's text to a source for `registry`.
pub fn source(config: &str, registry: &str) -> Result<Source> {
    let json: serde_json::Value = serde_json::from_str(config).context("not valid JSON")?;
    let keys = keys(registry);
    let helpers = json.get("credHelpers").and_then(|h| h.as_object());
    if let Some(h) = keys
        .iter()
        .find_map(|k| helpers.and_then(|h| h.get(k)).and_then(|v| v.as_str()))
    {
        return Ok(Source::Helper(h.to_string()));
    }
    if let Some(store) = json.get("credsStore").and_then(|v| v.as_str()) {
        if !store.is_empty() {
            return Ok(Source::Helper(store.to_string()));
        }
    }
    let auths = json.get("auths").and_then(|a| a.as_object());
    let Some(entry) = keys.iter().find_map(|k| auths.and_then(|a| a.get(k))) else {
        return Ok(Source::None);
    };
    let field = |f: &str| {
        entry
            .get(f)
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
    };
    let (username, password) = match field("auth") {
        Some(a) => {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(a.trim())
                .map_err(|e| anyhow!("the `auth` of {registry} is not base64: {e}"))?;
            let text = String::from_utf8(raw)
                .map_err(|_| anyhow!("the `auth` of {registry} is not text"))?;
            let (u, p) = text
                .split_once(':')
                .ok_or_else(|| anyhow!("the `auth` of {registry} is not USER:PASSWORD"))?;
            (Some(u.to_string()), Some(p.to_string()))
        }
        None => (
            field("username").map(str::to_string),
            field("password").map(str::to_string),
        ),
    };
    let identitytoken = field("identitytoken").map(str::to_string);
    if username.is_none() && identitytoken.is_none() {
        return Ok(Source::None);
    }
    Ok(Source::Stored(DockerCredentials {
        username,
        password,
        identitytoken,
        serveraddress: Some(registry.to_string()),
        ..Default::default()
    }))
}

/// The helper's answer (`docker-credential-NAME get`), parsed: a
/// Username of `<token>` means the Secret is an identity token.
pub fn from_helper_output(out: &str, registry: &str) -> Result<DockerCredentials> {
    let json: serde_json::Value = serde_json::from_str(out).context("not valid JSON")?;
    let get = |f: &str| json.get(f).and_then(|v| v.as_str()).map(str::to_string);
    let (user, secret) = (get("Username"), get("Secret"));
    let mut c = DockerCredentials {
        serveraddress: Some(registry.to_string()),
        ..Default::default()
    };
    if user.as_deref() == Some("<token>") {
        c.identitytoken = secret;
    } else {
        c.username = user;
        c.password = secret;
    }
    Ok(c)
}

fn ask_helper(name: &str, registry: &str) -> Result<Option<DockerCredentials>> {
    let prog = format!("docker-credential-{name}");
    let mut child = Command::new(&prog)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| {
            format!("cannot run {prog}, the credential helper docker's config.json names")
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        // A helper that does not read its input says so in its answer.
        let _ = stdin.write_all(registry.as_bytes());
    }
    let out = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // The helpers' way of saying "not logged in there".
        if stdout.contains("credentials not found") {
            return Ok(None);
        }
        bail!(
            "{prog} get {registry} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    from_helper_output(&stdout, registry)
        .map(Some)
        .with_context(|| format!("{prog} gave an answer rdocker cannot read"))
}

/// The credentials to pull `image` with, from the docker CLI's
/// configuration directory; None when there are none for its registry.
pub fn for_image(config_dir: &Path, image: &str) -> Result<Option<DockerCredentials>> {
    let registry = registry_of(image);
    let path = config_dir.join("config.json");
    let Some(text) = super::context::read_config(&path)? else {
        return Ok(None);
    };
    let src = source(&text, &registry)
        .with_context(|| format!("cannot read the credentials in {}", path.display()))?;
    match src {
        Source::Helper(h) => ask_helper(&h, &registry),
        Source::Stored(c) => Ok(Some(c)),
        Source::None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registries() {
        assert_eq!(registry_of("debian:sid"), HUB);
        assert_eq!(registry_of("library/debian"), HUB);
        assert_eq!(registry_of("docker.io/library/debian"), HUB);
        assert_eq!(registry_of("me/img:1"), HUB);
        assert_eq!(
            registry_of("registry.gitlab.com/g/p:tag"),
            "registry.gitlab.com"
        );
        assert_eq!(registry_of("127.0.0.1:5000/x"), "127.0.0.1:5000");
        assert_eq!(registry_of("localhost/x"), "localhost");
    }

    #[test]
    fn stored_credentials() {
        let cfg = r#"{"auths": {
            "https://index.docker.io/v1/": {"auth": "aHViOmh1YnBhc3M="},
            "https://registry.example.org": {"auth": "dXNlcjpwYTpzcw=="},
            "tok.example.org": {"identitytoken": "T0K"},
            "empty.example.org": {}
        }}"#;
        let Source::Stored(c) = source(cfg, HUB).unwrap() else {
            panic!()
        };
        assert_eq!(
            (c.username.as_deref(), c.password.as_deref()),
            (Some("hub"), Some("hubpass"))
        );
        // Stored with a scheme, asked for by host; a colon in the password.
        let Source::Stored(c) = source(cfg, "registry.example.org").unwrap() else {
            panic!()
        };
        assert_eq!(
            (c.username.as_deref(), c.password.as_deref()),
            (Some("user"), Some("pa:ss"))
        );
        assert_eq!(c.serveraddress.as_deref(), Some("registry.example.org"));
        let Source::Stored(c) = source(cfg, "tok.example.org").unwrap() else {
            panic!()
        };
        assert_eq!(c.identitytoken.as_deref(), Some("T0K"));
        assert_eq!(source(cfg, "empty.example.org").unwrap(), Source::None);
        assert_eq!(source(cfg, "other.example.org").unwrap(), Source::None);
        assert!(source(r#"{"auths": {"x.org": {"auth": "@@"}}}"#, "x.org").is_err());
        assert!(source("{", "x.org").is_err());
    }

    #[test]
    fn helpers_come_first() {
        let cfg = r#"{"auths": {"a.org": {"auth": "dTpw"}}, "credsStore": "pass",
                      "credHelpers": {"gcr.io": "gcloud"}}"#;
        assert_eq!(
            source(cfg, "gcr.io").unwrap(),
            Source::Helper("gcloud".into())
        );
        assert_eq!(source(cfg, "a.org").unwrap(), Source::Helper("pass".into()));
        let c = from_helper_output(r#"{"Username":"<token>","Secret":"abc"}"#, "gcr.io").unwrap();
        assert_eq!(
            (c.username, c.identitytoken.as_deref()),
            (None, Some("abc"))
        );
        let c = from_helper_output(r#"{"Username":"u","Secret":"s"}"#, "gcr.io").unwrap();
        assert_eq!(
            (c.username.as_deref(), c.password.as_deref()),
            (Some("u"), Some("s"))
        );
    }
}
