//! The `docker run` options that may follow IMAGE, mapped onto the Engine
//! API's container configuration. Pure: no daemon needed.

use anyhow::{anyhow, bail, Context, Result};
use std::collections::HashMap;

/// What the options ask for, in API terms.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct RunOptions {
    pub binds: Vec<String>,
    pub env: Vec<String>,
    pub network: Option<String>,
    pub tmpfs: HashMap<String, String>,
    pub cap_add: Vec<String>,
    pub privileged: bool,
    pub memory: Option<i64>,
    pub nano_cpus: Option<i64>,
    pub shm_size: Option<i64>,
    pub extra_hosts: Vec<String>,
    pub platform: Option<String>,
    /// "host" or "private"; systemd under --init may need the host's.
    pub cgroupns: Option<String>,
}

pub const SUPPORTED: &str = "-v/--volume, -e/--env, --network, --tmpfs, --cap-add, \
    --privileged, --memory, --cpus, --shm-size, --add-host, --platform, --cgroupns";

impl RunOptions {
    /// Parse `docker run` options. `lookup` gives host variables for
    /// `-e NAME` without a value, as docker does.
    pub fn parse(args: &[String], lookup: impl Fn(&str) -> Option<String>) -> Result<RunOptions> {
        let mut o = RunOptions::default();
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let (name, inline) = split_option(arg)?;
            if name == "--privileged" {
                match inline.as_deref() {
                    None | Some("true") => o.privileged = true,
                    Some("false") => o.privileged = false,
                    Some(v) => bail!("--privileged takes true or false, not {v:?}"),
                }
                continue;
            }
            let mut value = || -> Result<String> {
                match &inline {
                    Some(v) => Ok(v.clone()),
                    None => it
                        .next()
                        .cloned()
                        .ok_or_else(|| anyhow!("docker run option {name} needs a value")),
                }
            };
            match name.as_str() {
                "-v" | "--volume" => {
                    let v = value()?;
                    if !v.contains(':') {
                        bail!(
                            "{name} {v}: anonymous volumes are not supported; \
                             give SOURCE:TARGET[:OPTIONS]"
                        );
                    }
                    o.binds.push(v);
                }
                "-e" | "--env" => {
                    let v = value()?;
                    if v.contains('=') {
                        o.env.push(v);
                    } else if let Some(host) = lookup(&v) {
                        o.env.push(format!("{v}={host}"));
                    }
                }
                "--network" | "--net" => o.network = Some(value()?),
                "--tmpfs" => {
                    let v = value()?;
                    let (path, opts) = v.split_once(':').unwrap_or((&v, ""));
                    o.tmpfs.insert(path.to_string(), opts.to_string());
                }
                "--cap-add" => o.cap_add.push(value()?),
                "-m" | "--memory" => o.memory = Some(parse_size(&value()?).context(name)?),
                "--shm-size" => o.shm_size = Some(parse_size(&value()?).context(name)?),
                "--cpus" => {
                    let v = value()?;
                    let cpus: f64 = v
                        .parse()
                        .ok()
                        .filter(|c: &f64| c.is_finite() && *c > 0.0)
                        .ok_or_else(|| anyhow!("--cpus {v:?}: expected a positive number"))?;
                    o.nano_cpus = Some((cpus * 1e9).round() as i64);
                }
                "--add-host" => {
                    let v = value()?;
                    if !v.contains(':') {
                        bail!("--add-host {v:?}: expected HOST:IP");
                    }
                    o.extra_hosts.push(v);
                }
                "--platform" => o.platform = Some(value()?),
                "--cgroupns" => {
                    let v = value()?;
                    if v != "host" && v != "private" {
                        bail!("--cgroupns {v:?}: expected host or private");
                    }
                    o.cgroupns = Some(v);
                }
                _ => bail!(
                    "unsupported docker run option {arg:?}: rdocker passes these through the \
                     Engine API: {SUPPORTED}"
                ),
            }
        }
        Ok(o)
    }
}

/// Split `--name=value` and `-xvalue` into name and inline value.
fn split_option(arg: &str) -> Result<(String, Option<String>)> {
    if let Some(long) = arg.strip_prefix("--") {
        if long.is_empty() {
            bail!("unexpected `--` among the docker run options");
        }
        return Ok(match arg.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (arg.to_string(), None),
        });
    }
    if arg.starts_with('-') && arg.len() >= 2 {
        let (n, rest) = arg.split_at(2);
        let rest = rest.strip_prefix('=').unwrap_or(rest);
        return Ok((n.to_string(), (!rest.is_empty()).then(|| rest.to_string())));
    }
    bail!(
        "unexpected argument {arg:?} after IMAGE: everything after IMAGE must be a docker run \
         option ({SUPPORTED}); rdocker's own options go before IMAGE"
    )
}

/// Docker's human sizes: 512, 64k, 512m, 2g (powers of 1024).
pub fn parse_size(s: &str) -> Result<i64> {
    let t = s.trim().to_ascii_lowercase();
    let t = t.strip_suffix('b').unwrap_or(&t);
    let (num, mult) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1i64 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        Some('t') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    let n: f64 = num
        .parse()
        .ok()
        .filter(|n: &f64| n.is_finite() && *n >= 0.0)
        .ok_or_else(|| anyhow!("bad size {s:?}: expected a number with an optional k, m or g"))?;
    Ok((n * mult as f64) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<RunOptions> {
        let v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        RunOptions::parse(&v, |n| (n == "HOSTVAR").then(|| "fromhost".to_string()))
    }

    #[test]
    fn common_options() {
        let o = parse(&[
            "-v",
            "/a:/b:ro",
            "--volume=/c:/d",
            "-e",
            "A=1",
            "-eB=2",
            "--env",
            "HOSTVAR",
            "--env=UNSET",
            "--network",
            "none",
            "--tmpfs",
            "/run:size=1m",
            "--tmpfs=/scratch",
            "--cap-add",
            "SYS_ADMIN",
            "--privileged",
            "--memory",
            "512m",
            "--cpus=1.5",
            "--shm-size",
            "64k",
            "--add-host",
            "db:10.0.0.2",
            "--platform=linux/amd64",
            "--cgroupns",
            "host",
        ])
        .unwrap();
        assert_eq!(o.binds, vec!["/a:/b:ro", "/c:/d"]);
        assert_eq!(o.env, vec!["A=1", "B=2", "HOSTVAR=fromhost"]);
        assert_eq!(o.network.as_deref(), Some("none"));
        assert_eq!(o.tmpfs["/run"], "size=1m");
        assert_eq!(o.tmpfs["/scratch"], "");
        assert_eq!(o.cap_add, vec!["SYS_ADMIN"]);
        assert!(o.privileged);
        assert_eq!(o.memory, Some(512 << 20));
        assert_eq!(o.nano_cpus, Some(1_500_000_000));
        assert_eq!(o.shm_size, Some(64 << 10));
        assert_eq!(o.extra_hosts, vec!["db:10.0.0.2"]);
        assert_eq!(o.platform.as_deref(), Some("linux/amd64"));
        assert_eq!(o.cgroupns.as_deref(), Some("host"));
    }

    #[test]
    fn unknown_options_are_named() {
        let e = parse(&["--rm"]).unwrap_err().to_string();
        assert!(e.contains("--rm"), "{e}");
        let e = parse(&["--pid=host"]).unwrap_err().to_string();
        assert!(e.contains("--pid=host"), "{e}");
        let e = parse(&["stray"]).unwrap_err().to_string();
        assert!(e.contains("stray"), "{e}");
    }

    #[test]
    fn missing_and_bad_values() {
        assert!(parse(&["--memory"])
            .unwrap_err()
            .to_string()
            .contains("needs a value"));
        assert!(parse(&["--memory", "lots"]).is_err());
        assert!(parse(&["--cpus", "-1"]).is_err());
        assert!(parse(&["-v", "/only-target"]).is_err());
        assert!(parse(&["--privileged=maybe"]).is_err());
        assert!(parse(&["--cgroupns=shared"]).is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1g").unwrap(), 1 << 30);
        assert_eq!(parse_size("1GB").unwrap(), 1 << 30);
        assert_eq!(parse_size("100").unwrap(), 100);
        assert_eq!(parse_size("1.5k").unwrap(), 1536);
    }
}
