//! Which daemon, decided as the docker CLI decides it: `--host`, then
//! `--context`, then DOCKER_HOST, then DOCKER_CONTEXT, then the current
//! context in config.json, then the default socket. A named context is
//! read from docker's own context store, so `docker context create` and
//! `docker context use` work for rdocker unchanged.
//!
//! With `--podman`, Podman's own rules instead (`podman`): CONTAINER_HOST,
//! else the rootless user's or root's API socket.
//!
//! TLS material comes with the endpoint: from DOCKER_TLS_VERIFY,
//! DOCKER_TLS and DOCKER_CERT_PATH for an address given by --host or
//! DOCKER_HOST, from the context's own store for a context.

use anyhow::{anyhow, bail, Context, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::endpoint::{Endpoint, Tls, DEFAULT_HOST};

/// The constructors live here, beside the rules they follow, so that
/// endpoint.rs needs nothing of this module.
impl Endpoint {
    /// As the docker CLI: --host, --context, DOCKER_HOST, DOCKER_CONTEXT,
    /// config.json's currentContext, the default socket (see context.rs).
    pub fn resolve(
        flag_host: Option<&str>,
        flag_context: Option<&str>,
        env: &Env,
    ) -> anyhow::Result<Endpoint> {
        resolve(flag_host, flag_context, env)
    }

    /// Podman's API (--podman), as context.rs's `podman` finds it.
    pub fn podman(env: &Env) -> anyhow::Result<Endpoint> {
        podman(env, nix::unistd::getuid().as_raw(), |p| p.exists())
    }
}

/// The variables that decide the endpoint. Gathered once, so that the rules
/// below are testable without touching the process environment.
#[derive(Debug, Clone, Default)]
pub struct Env(pub HashMap<String, String>);

const VARS: &[&str] = &[
    "DOCKER_HOST",
    "DOCKER_CONTEXT",
    "DOCKER_CONFIG",
    "DOCKER_TLS_VERIFY",
    "DOCKER_TLS",
    "DOCKER_CERT_PATH",
    "HOME",
    "CONTAINER_HOST",
    "XDG_RUNTIME_DIR",
];

impl Env {
    pub fn process() -> Env {
        let mut m: HashMap<String, String> = VARS
            .iter()
            .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v)))
            .collect();
        if !m.contains_key("HOME") {
            if let Ok(Some(u)) = nix::unistd::User::from_uid(nix::unistd::getuid()) {
                m.insert("HOME".into(), u.dir.to_string_lossy().into_owned());
            }
        }
        Env(m)
    }

    /// A variable, if set and not empty (the docker CLI ignores empty ones).
    pub fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str).filter(|v| !v.is_empty())
    }

    /// docker's configuration directory: DOCKER_CONFIG, else ~/.docker.
    pub fn config_dir(&self) -> PathBuf {
        match (self.get("DOCKER_CONFIG"), self.get("HOME")) {
            (Some(d), _) => PathBuf::from(d),
            (None, Some(h)) => Path::new(h).join(".docker"),
            (None, None) => PathBuf::from(".docker"),
        }
    }
}

/// The endpoint for these options and this environment.
pub fn resolve(flag_host: Option<&str>, flag_context: Option<&str>, env: &Env) -> Result<Endpoint> {
    if let Some(h) = flag_host.filter(|h| !h.is_empty()) {
        return Ok(from_address(h, "--host".into(), env));
    }
    if let Some(name) = flag_context.filter(|n| !n.is_empty()) {
        return context(name, format!("context `{name}' named by --context"), env);
    }
    if let Some(h) = env.get("DOCKER_HOST") {
        return Ok(from_address(h, "DOCKER_HOST".into(), env));
    }
    if let Some(name) = env.get("DOCKER_CONTEXT") {
        return context(
            name,
            format!("context `{name}' named by DOCKER_CONTEXT"),
            env,
        );
    }
    let config = env.config_dir().join("config.json");
    if let Some(name) = current_context(&config)? {
        let source = format!("context `{name}' in {}", config.display());
        return context(&name, source, env);
    }
    Ok(Endpoint {
        host: DEFAULT_HOST.into(),
        source: "the default socket".into(),
        tls: None,
    })
}

/// Podman's Docker-compatible API, found as podman-remote finds it:
/// CONTAINER_HOST, else the socket of `podman.socket` (systemd), the user's
/// for a rootless `uid`, root's for uid 0. A missing socket is an error
/// that says how to start it, before any connection is tried.
pub fn podman(env: &Env, uid: u32, exists: impl Fn(&Path) -> bool) -> Result<Endpoint> {
    if let Some(h) = env.get("CONTAINER_HOST") {
        if h.starts_with("ssh://") {
            bail!(
                "CONTAINER_HOST={h}: rdocker cannot reach Podman over ssh (podman-remote's own \
                 protocol); forward its socket instead, e.g. `ssh -nNT -L \
                 /tmp/podman.sock:/run/podman/podman.sock HOST &` and \
                 CONTAINER_HOST=unix:///tmp/podman.sock"
            );
        }
        return Ok(from_address(h, "CONTAINER_HOST (--podman)".into(), env));
    }
    let (path, how) = if uid == 0 {
        (
            PathBuf::from("/run/podman/podman.sock"),
            "systemctl start podman.socket",
        )
    } else {
        let run = env
            .get("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(format!("/run/user/{uid}")));
        (
            run.join("podman/podman.sock"),
            "systemctl --user start podman.socket",
        )
    };
    if !exists(&path) {
        bail!(
            "Podman's API socket {} does not exist: start it with `{how}`, or run `podman \
             system service --time=0 unix://{} &`, or set CONTAINER_HOST",
            path.display(),
            path.display()
        );
    }
    Ok(Endpoint {
        host: format!("unix://{}", path.display()),
        source: format!(
            "Podman's {} socket (--podman)",
            if uid == 0 { "system" } else { "rootless" }
        ),
        tls: None,
    })
}

/// An address given as such (--host, DOCKER_HOST), with TLS from the
/// environment as `docker -H` takes it.
fn from_address(host: &str, source: String, env: &Env) -> Endpoint {
    let host = normalize(host);
    let tls = if is_tcp(&host) { env_tls(env) } else { None };
    Endpoint { host, source, tls }
}

/// docker accepts a bare host:port as tcp://host:port.
fn normalize(host: &str) -> String {
    if host.contains("://") {
        host.to_string()
    } else {
        format!("tcp://{host}")
    }
}

fn is_tcp(host: &str) -> bool {
    host.starts_with("tcp://") || host.starts_with("https://")
}

/// DOCKER_TLS_VERIFY set to anything at all (even 0, as with the docker CLI)
/// turns on TLS and verification; DOCKER_TLS alone, TLS without verifying
/// the daemon. The files live in DOCKER_CERT_PATH, else docker's
/// configuration directory.
fn env_tls(env: &Env) -> Option<Tls> {
    let verify = env.get("DOCKER_TLS_VERIFY").is_some();
    let tls = env.get("DOCKER_TLS").is_some_and(parse_bool);
    if !verify && !tls {
        return None;
    }
    let (dir, named) = match env.get("DOCKER_CERT_PATH") {
        Some(d) => (PathBuf::from(d), format!("DOCKER_CERT_PATH ({d})")),
        None => {
            let d = env.config_dir();
            let named = format!("{} (DOCKER_CERT_PATH is not set)", d.display());
            (d, named)
        }
    };
    let why = if verify {
        "DOCKER_TLS_VERIFY is set, so rdocker (like the docker CLI) verifies the daemon \
         against ca.pem and presents cert.pem and key.pem"
    } else {
        "DOCKER_TLS is set without DOCKER_TLS_VERIFY, so rdocker (like the docker CLI) \
         speaks TLS without verifying the daemon, and presents cert.pem and key.pem"
    };
    // As the docker CLI: ca.pem is required when verifying; cert.pem and
    // key.pem are presented when they exist.
    Some(Tls {
        ca: Some(dir.join("ca.pem")),
        cert: Some(dir.join("cert.pem")).filter(|p| p.exists()),
        key: Some(dir.join("key.pem")).filter(|p| p.exists()),
        verify,
        hint: format!(
            "{why} from {named}; put them there, or point DOCKER_CERT_PATH at the directory \
             that holds them"
        ),
    })
}

/// Go's strconv.ParseBool, true side.
fn parse_bool(v: &str) -> bool {
    matches!(v, "1" | "t" | "T" | "true" | "TRUE" | "True")
}

/// The text of docker's config.json at `config`; None if there is none.
pub fn read_config(config: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(config) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => bail!(
            "cannot read docker's configuration {}: {e}",
            config.display()
        ),
    }
}

/// config.json's currentContext, if any. A missing file means none.
fn current_context(config: &Path) -> Result<Option<String>> {
    let Some(text) = read_config(config)? else {
        return Ok(None);
    };
    let json: serde_json::Value = serde_json::from_str(&text).with_context(|| {
        format!(
            "docker's configuration {} is not valid JSON; fix it, or set DOCKER_HOST or \
             --host to bypass it",
            config.display()
        )
    })?;
    Ok(json
        .get("currentContext")
        .and_then(|v| v.as_str())
        .filter(|s| !s.is_empty())
        .map(str::to_string))
}

/// Where docker keeps a context: directories named by the SHA-256 of the
/// context's name, under contexts/meta and contexts/tls.
pub fn context_id(name: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, name.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A named context. `default` is what the docker CLI calls the daemon of
/// DOCKER_HOST or the default socket.
fn context(name: &str, source: String, env: &Env) -> Result<Endpoint> {
    if name == "default" {
        return Ok(match env.get("DOCKER_HOST") {
            Some(h) => from_address(h, format!("DOCKER_HOST, for {source}"), env),
            None => Endpoint {
                host: DEFAULT_HOST.into(),
                source,
                tls: None,
            },
        });
    }
    let store = env.config_dir().join("contexts");
    let id = context_id(name);
    let meta = store.join("meta").join(&id).join("meta.json");
    let text = match std::fs::read_to_string(&meta) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "{source}: there is no such docker context ({} does not exist). \
             `docker context ls' lists the contexts; create this one with \
             `docker context create {name} --docker host=...', or choose another",
            meta.display()
        ),
        Err(e) => bail!(
            "cannot read docker context `{name}' ({}): {e}",
            meta.display()
        ),
    };
    let parsed = parse_meta(&text).map_err(|e| {
        anyhow!(
            "docker context `{name}' is unreadable ({}): {e}",
            meta.display()
        )
    })?;
    let (host, skip_verify) = parsed;
    let host = normalize(&host);
    let tls = if is_tcp(&host) {
        context_tls(
            name,
            &store.join("tls").join(&id).join("docker"),
            skip_verify,
        )
    } else {
        None
    };
    Ok(Endpoint { host, source, tls })
}

/// Endpoints.docker.Host and .SkipTLSVerify of a context's meta.json.
fn parse_meta(text: &str) -> std::result::Result<(String, bool), String> {
    let json: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let docker = json
        .get("Endpoints")
        .and_then(|e| e.get("docker"))
        .ok_or("it has no docker endpoint")?;
    let host = docker
        .get("Host")
        .and_then(|h| h.as_str())
        .filter(|h| !h.is_empty())
        .ok_or("its docker endpoint has no Host")?;
    let skip = docker
        .get("SkipTLSVerify")
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    Ok((host.to_string(), skip))
}

/// A context's TLS, as the docker CLI builds it: none without material or
/// SkipTLSVerify; the context's CA if it has one, else the system's.
fn context_tls(name: &str, dir: &Path, skip_verify: bool) -> Option<Tls> {
    let file = |f: &str| Some(dir.join(f)).filter(|p| p.exists());
    let (ca, cert, key) = (file("ca.pem"), file("cert.pem"), file("key.pem"));
    if ca.is_none() && cert.is_none() && key.is_none() && !skip_verify {
        return None;
    }
    Some(Tls {
        ca,
        cert,
        key,
        verify: !skip_verify,
        hint: format!(
            "docker context `{name}' keeps its TLS material in {} (`docker context create \
             {name} --docker host=...,ca=CA,cert=CERT,key=KEY' puts it there)",
            dir.display()
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Store(PathBuf);
    impl Drop for Store {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn store(tag: &str) -> Store {
        let d = std::env::temp_dir().join(format!("rdocker-ctx-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Store(d)
    }

    fn env(pairs: &[(&str, &str)]) -> Env {
        Env(pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect())
    }

    #[test]
    fn podman_sockets() {
        let none = |_: &Path| false;
        let all = |_: &Path| true;
        // CONTAINER_HOST wins, whatever exists.
        let e = podman(&env(&[("CONTAINER_HOST", "unix:///x.sock")]), 0, none).unwrap();
        assert_eq!(e.host, "unix:///x.sock");
        assert!(e.source.contains("CONTAINER_HOST"));
        let e = podman(&env(&[("CONTAINER_HOST", "tcp://b:8080")]), 1000, none).unwrap();
        assert_eq!(e.host, "tcp://b:8080");
        let err = podman(
            &env(&[("CONTAINER_HOST", "ssh://me@b/run/podman/podman.sock")]),
            0,
            all,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("ssh") && err.contains("-L"), "{err}");
        // Root's socket, or the rootless user's.
        assert_eq!(
            podman(&env(&[]), 0, all).unwrap().host,
            "unix:///run/podman/podman.sock"
        );
        let e = podman(&env(&[("XDG_RUNTIME_DIR", "/run/user/1000")]), 1000, all).unwrap();
        assert_eq!(e.host, "unix:///run/user/1000/podman/podman.sock");
        assert!(e.source.contains("rootless"), "{}", e.source);
        assert_eq!(
            podman(&env(&[]), 1001, all).unwrap().host,
            "unix:///run/user/1001/podman/podman.sock"
        );
        // DOCKER_HOST is Docker's, not Podman's.
        assert_eq!(
            podman(&env(&[("DOCKER_HOST", "tcp://d:2375")]), 0, all)
                .unwrap()
                .host,
            "unix:///run/podman/podman.sock"
        );
        // A missing socket says how to start it.
        let err = podman(&env(&[]), 1000, none).unwrap_err().to_string();
        assert!(
            err.contains("/run/user/1000/podman/podman.sock")
                && err.contains("systemctl --user start podman.socket"),
            "{err}"
        );
        let err = podman(&env(&[]), 0, none).unwrap_err().to_string();
        assert!(err.contains("systemctl start podman.socket"), "{err}");
    }

    fn add_context(cfg: &Path, name: &str, host: &str, skip: bool, tls: &[&str]) {
        let id = context_id(name);
        let meta = cfg.join("contexts/meta").join(&id);
        std::fs::create_dir_all(&meta).unwrap();
        std::fs::write(
            meta.join("meta.json"),
            format!(
                r#"{{"Name":"{name}","Metadata":{{}},"Endpoints":{{"docker":{{"Host":"{host}","SkipTLSVerify":{skip}}}}}}}"#
            ),
        )
        .unwrap();
        if !tls.is_empty() {
            let t = cfg.join("contexts/tls").join(&id).join("docker");
            std::fs::create_dir_all(&t).unwrap();
            for f in tls {
                std::fs::write(t.join(f), "x").unwrap();
            }
        }
    }

    #[test]
    fn context_ids_are_sha256_of_the_name() {
        // As docker computes them (digest.FromString).
        assert_eq!(
            context_id("default"),
            "37a8eec1ce19687d132fe29051dca629d164e2c4958ba141d5f4133a33f0688f"
        );
        assert_eq!(
            context_id(""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn precedence() {
        let s = store("prec");
        let cfg = s.0.to_str().unwrap();
        add_context(&s.0, "a", "tcp://10.0.0.1:2375", false, &[]);
        add_context(&s.0, "b", "ssh://me@10.0.0.2", false, &[]);
        std::fs::write(s.0.join("config.json"), r#"{"currentContext":"a"}"#).unwrap();

        let none = env(&[("DOCKER_CONFIG", "/nonexistent")]);
        let e = resolve(None, None, &none).unwrap();
        assert_eq!(
            (e.host.as_str(), e.source.as_str()),
            (DEFAULT_HOST, "the default socket")
        );

        let e = resolve(None, None, &env(&[("DOCKER_CONFIG", cfg)])).unwrap();
        assert_eq!(e.host, "tcp://10.0.0.1:2375");
        assert_eq!(e.source, format!("context `a' in {cfg}/config.json"));

        let with_ctx = env(&[("DOCKER_CONFIG", cfg), ("DOCKER_CONTEXT", "b")]);
        let e = resolve(None, None, &with_ctx).unwrap();
        assert_eq!(e.host, "ssh://me@10.0.0.2");
        assert_eq!(e.source, "context `b' named by DOCKER_CONTEXT");

        let with_host = env(&[
            ("DOCKER_CONFIG", cfg),
            ("DOCKER_CONTEXT", "b"),
            ("DOCKER_HOST", "unix:///x.sock"),
        ]);
        assert_eq!(
            resolve(None, None, &with_host).unwrap().host,
            "unix:///x.sock"
        );
        let e = resolve(None, Some("a"), &with_host).unwrap();
        assert_eq!(e.host, "tcp://10.0.0.1:2375");
        assert_eq!(e.source, "context `a' named by --context");
        let e = resolve(Some("tcp://h:1"), Some("a"), &with_host).unwrap();
        assert_eq!(
            (e.host.as_str(), e.source.as_str()),
            ("tcp://h:1", "--host")
        );
        // `default' is DOCKER_HOST or the socket, never a stored context.
        assert_eq!(
            resolve(None, Some("default"), &with_host).unwrap().host,
            "unix:///x.sock"
        );
        let e = resolve(None, Some("default"), &env(&[("DOCKER_CONFIG", cfg)])).unwrap();
        assert_eq!(e.host, DEFAULT_HOST);
        // Empty variables count as unset.
        let empty = env(&[
            ("DOCKER_CONFIG", cfg),
            ("DOCKER_HOST", ""),
            ("DOCKER_CONTEXT", ""),
        ]);
        assert_eq!(
            resolve(None, None, &empty).unwrap().host,
            "tcp://10.0.0.1:2375"
        );
        // A bare address is TCP, as with docker -H.
        assert_eq!(
            resolve(Some("127.0.0.1:2375"), None, &none).unwrap().host,
            "tcp://127.0.0.1:2375"
        );
    }

    #[test]
    fn unknown_context_is_named() {
        let s = store("unknown");
        let cfg = s.0.to_str().unwrap();
        let err = resolve(None, Some("nope"), &env(&[("DOCKER_CONFIG", cfg)]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("`nope'"), "{err}");
        assert!(err.contains(&context_id("nope")), "{err}");
        std::fs::write(s.0.join("config.json"), r#"{"currentContext":"gone"}"#).unwrap();
        let err = resolve(None, None, &env(&[("DOCKER_CONFIG", cfg)]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("`gone' in"), "{err}");
        std::fs::write(s.0.join("config.json"), "{not json").unwrap();
        let err = format!(
            "{:#}",
            resolve(None, None, &env(&[("DOCKER_CONFIG", cfg)])).unwrap_err()
        );
        assert!(err.contains("config.json is not valid JSON"), "{err}");
        // A config without currentContext is the default socket.
        std::fs::write(s.0.join("config.json"), r#"{"auths":{}}"#).unwrap();
        assert_eq!(
            resolve(None, None, &env(&[("DOCKER_CONFIG", cfg)]))
                .unwrap()
                .host,
            DEFAULT_HOST
        );
    }

    #[test]
    fn tls_from_the_environment() {
        let s = store("envtls");
        let dir = s.0.to_str().unwrap();
        std::fs::write(s.0.join("cert.pem"), "x").unwrap();
        let e = resolve(
            Some("tcp://h:2376"),
            None,
            &env(&[("DOCKER_TLS_VERIFY", "1"), ("DOCKER_CERT_PATH", dir)]),
        )
        .unwrap();
        let tls = e.tls.unwrap();
        assert!(tls.verify);
        assert_eq!(tls.ca, Some(s.0.join("ca.pem")));
        assert_eq!(tls.cert, Some(s.0.join("cert.pem")));
        assert_eq!(tls.key, None);
        // Default directory: DOCKER_CONFIG, else ~/.docker.
        let e = resolve(
            None,
            None,
            &env(&[
                ("DOCKER_HOST", "tcp://h:2376"),
                ("DOCKER_TLS", "1"),
                ("HOME", "/home/u"),
            ]),
        )
        .unwrap();
        let tls = e.tls.unwrap();
        assert!(!tls.verify);
        assert_eq!(tls.ca, Some(PathBuf::from("/home/u/.docker/ca.pem")));
        // No TLS variables, or not TCP: no TLS.
        assert!(resolve(Some("tcp://h:2375"), None, &env(&[]))
            .unwrap()
            .tls
            .is_none());
        let ssh = env(&[("DOCKER_HOST", "ssh://h"), ("DOCKER_TLS_VERIFY", "1")]);
        assert!(resolve(None, None, &ssh).unwrap().tls.is_none());
    }

    #[test]
    fn tls_from_a_context() {
        let s = store("ctxtls");
        let cfg = s.0.to_str().unwrap();
        add_context(
            &s.0,
            "secure",
            "tcp://10.0.0.3:2376",
            false,
            &["ca.pem", "cert.pem", "key.pem"],
        );
        add_context(&s.0, "insecure", "tcp://10.0.0.4:2376", true, &[]);
        add_context(&s.0, "plain", "tcp://10.0.0.5:2375", false, &[]);
        let e = env(&[("DOCKER_CONFIG", cfg), ("DOCKER_TLS_VERIFY", "1")]);
        let tls = resolve(None, Some("secure"), &e).unwrap().tls.unwrap();
        let dir =
            s.0.join("contexts/tls")
                .join(context_id("secure"))
                .join("docker");
        assert!(tls.verify);
        assert_eq!(tls.ca, Some(dir.join("ca.pem")));
        assert_eq!(tls.key, Some(dir.join("key.pem")));
        let tls = resolve(None, Some("insecure"), &e).unwrap().tls.unwrap();
        assert!(!tls.verify && tls.ca.is_none());
        assert!(resolve(None, Some("plain"), &e).unwrap().tls.is_none());
    }

    #[test]
    fn exec_helpers_get_the_servers_tls_exactly() {
        use crate::docker::daemon::endpoint::ExecArgs;
        let s = store("exec");
        let cfg = s.0.to_str().unwrap();
        add_context(
            &s.0,
            "secure",
            "tcp://10.0.0.3:2376",
            false,
            &["ca.pem", "cert.pem", "key.pem"],
        );
        add_context(&s.0, "insecure", "tcp://10.0.0.3:2376", true, &[]);
        let e = env(&[("DOCKER_CONFIG", cfg)]);
        let parse = |args: Vec<String>| {
            let mut x = ExecArgs::default();
            for a in &args {
                assert!(x.take(a).unwrap(), "{a}");
            }
            x.endpoint().unwrap()
        };
        // Two contexts at one address: each gives its own settings, which
        // looking the address up again could not tell apart.
        for name in ["secure", "insecure"] {
            let server = resolve(None, Some(name), &e).unwrap();
            let helper = parse(server.exec_args());
            assert_eq!(helper.host, server.host);
            let (st, ht) = (server.tls.unwrap(), helper.tls.unwrap());
            assert_eq!(
                (ht.ca, ht.cert, ht.key, ht.verify),
                (st.ca, st.cert, st.key, st.verify)
            );
        }
        let plain = parse(
            resolve(Some("tcp://10.0.0.9:2375"), None, &e)
                .unwrap()
                .exec_args(),
        );
        assert!(plain.tls.is_none());
        assert_eq!(plain.source, "print-execute-command");
        let mut x = ExecArgs::default();
        assert!(x.take("--tls-ca=/x").unwrap());
        assert!(x.take("--host=tcp://h:1").unwrap());
        assert!(x.endpoint().is_err(), "a CA without --tls=");
        assert!(ExecArgs::default().take("--tls=maybe").is_err());
    }
}
