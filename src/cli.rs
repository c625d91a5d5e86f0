//! Command-line options of the server mode.

use clap::Parser;
use std::path::PathBuf;

/// autopkgtest virtualisation server that runs tests in Docker containers,
/// talking to the Docker Engine API directly (no docker CLI needed).
#[derive(Parser, Debug)]
#[command(
    name = "autopkgtest-virt-rdocker",
    version,
    after_help = "Normally run by autopkgtest: autopkgtest PKG -- rdocker IMAGE [DOCKER-RUN-OPTIONS...]\n\n\
        docker run options after IMAGE: -v/--volume, -e/--env, --network, --tmpfs, --cap-add, \
        --privileged, --memory, --cpus, --shm-size, --add-host, --platform, --cgroupns.\n\n\
        The daemon is found as the docker CLI finds it: --host, --context, DOCKER_HOST, \
        DOCKER_CONTEXT, the current context in $DOCKER_CONFIG/config.json, else \
        unix:///var/run/docker.sock. TLS: DOCKER_TLS_VERIFY, DOCKER_TLS, DOCKER_CERT_PATH. \
        ssh:// logs in once a session, with the ssh client, and forwards the remote \
        daemon's socket (-d says so, or why not)."
)]
pub struct Cli {
    /// Print debugging output, including which daemon and copy mode rdocker chose and why
    #[arg(short, long)]
    pub debug: bool,

    /// Pull IMAGE through the daemon before starting the container, even when the daemon has
    /// it (a missing image is always pulled), with the docker CLI's
    /// credentials for its registry (docker login, or its credential helper)
    #[arg(short, long)]
    pub pull: bool,

    /// Use Podman's Docker-compatible API: CONTAINER_HOST, else the socket of
    /// podman.socket (the rootless user's, or root's /run/podman/podman.sock)
    #[arg(long, conflicts_with_all = ["host", "context", "docker"])]
    pub podman: bool,

    /// Use Docker (the default); accepted for autopkgtest-virt-docker's command lines
    #[arg(long)]
    pub docker: bool,

    /// Run the image's init system (/sbin/init) as the testbed's first process, wait
    /// until it has booted, and advertise isolation-container, for tests that need
    /// services; systemd needs docker run options such as --tmpfs /run --tmpfs
    /// /run/lock -v /sys/fs/cgroup:/sys/fs/cgroup:ro
    #[arg(long)]
    pub init: bool,

    /// Do not boot the image's init even when its org.debian.autopkgtest.init label
    /// asks for one (images from autopkgtest-build-docker 5.40 and later)
    #[arg(long, conflicts_with = "init")]
    pub no_init: bool,

    /// Assume the daemon cannot see this machine's filesystem or processes: move files
    /// and command streams, and start commands, only through the Engine API, never
    /// through a shared directory or the testbed's root
    #[arg(long)]
    pub remote: bool,

    /// Share a directory of this host directory with the testbed as its scratch directory
    /// (PATH/.rdocker-XXXXXXXX/downtmp, in a 0700 directory of rdocker's; a local daemon only)
    #[arg(long, value_name = "PATH")]
    pub shared_dir: Option<PathBuf>,

    /// The proxy for the testbeds' apt (Acquire::http::Proxy in an apt.conf.d file), or none.
    /// Default: the host's own (its apt's Acquire::http::Proxy, auto-apt-proxy's answer, an
    /// apt-cacher-ng on 127.0.0.1:3142); an address on the host's loopback is rewritten to the
    /// testbed network's gateway
    #[arg(long, value_name = "URL|none")]
    pub apt_proxy: Option<String>,

    /// Keep the .debs that the testbeds' apt downloads in DIR, shared by runs at once and kept
    /// between runs, or off. Default: a cache of this session only, removed at close, so that
    /// each .deb is downloaded once however often autopkgtest reverts
    #[arg(long, value_name = "DIR|off")]
    pub apt_cache: Option<String>,

    /// Daemon address: unix:///path, tcp://host:port or ssh://[user@]host[:port];
    /// overrides everything else
    #[arg(short = 'H', long, value_name = "URL")]
    pub host: Option<String>,

    /// Docker context to use, as `docker --context`; overrides DOCKER_HOST, DOCKER_CONTEXT
    /// and the current context
    #[arg(long, value_name = "NAME", conflicts_with = "host")]
    pub context: Option<String>,

    /// Remove rdocker containers whose owner process on this host is gone
    /// (left by an rdocker killed with SIGKILL), or whose owner's container
    /// is gone from the daemon (a cancelled CI job), and exit
    #[arg(long, conflicts_with_all = ["image", "pull", "init", "remote", "shared_dir"])]
    pub reap: bool,

    /// Image to run the tests in, for example debian:sid
    #[arg(required_unless_present = "reap")]
    pub image: Option<String>,

    /// docker run options for the testbed container
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "DOCKER-RUN-OPTIONS"
    )]
    pub run_args: Vec<String>,
}
