//! autopkgtest-virt-rdocker: an autopkgtest virt server over the Docker
//! Engine API.

mod cli;
mod docker;
mod exec_mode;
mod protocol;
mod server;
mod signals;
mod terminal;
mod testbed;

use anyhow::{Context, Result};
use clap::Parser;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use docker::daemon::endpoint::Endpoint;
use docker::daemon::locality::{self, CopyMode, Evidence};

pub const PROG: &str = "autopkgtest-virt-rdocker";

pub static DEBUG: AtomicBool = AtomicBool::new(false);

/// Debug output on stderr with -d, as the reference's adtlog.debug.
#[macro_export]
macro_rules! debug {
    ($($arg:tt)*) => {
        if $crate::DEBUG.load(std::sync::atomic::Ordering::Relaxed) {
            eprintln!("{}: DBG: {}", $crate::PROG, format!($($arg)*));
        }
    };
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(exec_mode::FLAG) {
        return exec_mode::main(&args[2..]);
    }
    let cli = cli::Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{PROG}: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: cli::Cli) -> Result<ExitCode> {
    DEBUG.store(cli.debug, Ordering::Relaxed);
    if cli.reap {
        return reap(&cli);
    }
    let image = cli.image.clone().context("no IMAGE given")?;
    let run_opts =
        docker::life::runopts::RunOptions::parse(&cli.run_args, |k| std::env::var(k).ok())?;
    let copy_timeout = copy_timeout()?;
    let apt_options = docker::apt::plan::AptOptions {
        proxy: docker::apt::conf::Choice::parse(cli.apt_proxy.as_deref())?,
        cache: docker::apt::plan::CacheChoice::parse(cli.apt_cache.as_deref()),
    };
    let endpoint = endpoint(&cli)?;
    let evidence = Evidence::gather();
    let copy_mode =
        locality::choose_copy_mode(&endpoint, &evidence, cli.remote, cli.shared_dir.as_deref())
            .map_err(anyhow::Error::msg)?;
    debug!("daemon: {} (from {})", endpoint.host, endpoint.source);
    match &copy_mode {
        CopyMode::Api { why, local } => debug!(
            "copies go through the Engine API: {why}{}",
            if *local {
                "; straight through the testbed's root instead if rdocker can see it"
            } else {
                ""
            }
        ),
        CopyMode::Shared { dir, why, .. } => debug!("shared directory {}: {why}", dir.display()),
    }

    // Before the runtime, on this thread (see Tunnel::open), and dropped
    // after the reaper: removals dropped as the runtime ends use it.
    let tunnel = endpoint
        .host
        .starts_with("ssh://")
        .then(|| docker::daemon::tunnel::Tunnel::open(&endpoint.host))
        .flatten();
    // Declared before the runtime, so dropped after it, on every path
    // (panics too): containers dropped as the runtime ends are removed.
    let _drain = DrainReaper;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let exit = rt.block_on(async {
        // Before anything exists that a signal could leak.
        let sigs = signals::Terminations::listen().context("cannot install signal handlers")?;
        let mut client = docker::daemon::connect(&endpoint, tunnel.as_ref()).await?;
        debug!("API version {}", client.api_version());
        // Lives as long as the session; a helper whose relay is gone
        // connects on its own.
        let relay = docker::daemon::relay_for(&endpoint);
        if let Some(r) = &relay {
            client.via = Some(r.socket().to_path_buf());
        }
        docker::note_own_container(&client, &evidence).await;
        let tb = docker::DockerTestbed::new(
            client,
            image,
            run_opts,
            copy_mode,
            cli.pull,
            docker::Init::from_flags(cli.init, cli.no_init),
            apt_options,
        )?;
        anyhow::Ok(server::serve(server::Server::new(tb, copy_timeout), sigs).await)
    });
    // Drops the tasks still alive, and with them their containers; a
    // blocking copy stuck on a fifo is not waited for.
    rt.shutdown_timeout(Duration::from_millis(500));
    docker::life::reaper::drain(REAPER_LIMIT);
    // `now` may die of a signal, which runs no destructor.
    drop(tunnel);
    Ok(exit?.now())
}

/// How long exiting waits for the removal of dropped containers: a little
/// over what one removal waits for a restarting daemon.
const REAPER_LIMIT: Duration = Duration::from_secs(35);

struct DrainReaper;

impl Drop for DrainReaper {
    fn drop(&mut self) {
        docker::life::reaper::drain(REAPER_LIMIT);
    }
}

/// The daemon: Podman's rules with --podman, the docker CLI's otherwise.
fn endpoint(cli: &cli::Cli) -> Result<Endpoint> {
    let env = docker::daemon::context::Env::process();
    if cli.podman {
        Endpoint::podman(&env)
    } else {
        Endpoint::resolve(cli.host.as_deref(), cli.context.as_deref(), &env)
    }
}

fn reap(cli: &cli::Cli) -> Result<ExitCode> {
    let endpoint = endpoint(cli)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async {
        let client = docker::daemon::client::Client::connect(&endpoint, None).await?;
        docker::life::reap::reap(&client).await
    })?;
    Ok(ExitCode::SUCCESS)
}

/// AUTOPKGTEST_VIRT_COPY_TIMEOUT, in seconds, as the reference reads it.
fn copy_timeout() -> Result<Duration> {
    match std::env::var("AUTOPKGTEST_VIRT_COPY_TIMEOUT") {
        Ok(v) => v
            .trim()
            .parse::<u64>()
            .map(Duration::from_secs)
            .with_context(|| {
                format!("AUTOPKGTEST_VIRT_COPY_TIMEOUT={v:?} is not a number of seconds")
            }),
        Err(_) => Ok(Duration::from_secs(300)),
    }
}
