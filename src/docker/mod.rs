//! Docker as the testbed: one container per open/revert, reached only
//! through the Engine API.

pub mod api;
pub mod apt;
pub mod archive;
pub mod cancel;
pub mod daemon;
pub mod host;
pub mod life;
pub mod names;

use anyhow::{anyhow, bail, Context, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::debug;
use crate::testbed::{Console, Testbed};
use api::{copy, exec, hub, tty};
use apt::plan::{AptOptions, AptPlan};
use apt::warm;
use daemon::client::Client;
use daemon::context;
use daemon::locality::CopyMode;
use host::shared::{self, SharedDir};
use host::{agent, root as direct, tree};
use life::container::{self, Container};
use life::runopts::RunOptions;
use life::{boot, platform, reboot};

/// Whether the testbed boots the image's init.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Init {
    /// --init.
    On,
    /// --no-init.
    Off,
    /// As the image's org.debian.autopkgtest.init label says.
    Label,
}

impl Init {
    pub fn from_flags(init: bool, no_init: bool) -> Init {
        match (init, no_init) {
            (true, _) => Init::On,
            (_, true) => Init::Off,
            _ => Init::Label,
        }
    }
}

pub struct DockerTestbed {
    client: Client,
    image: String,
    run: RunOptions,
    copy_mode: CopyMode,
    pull: bool,
    /// What the command line said of the init; `init` is what was decided
    /// once the image's labels were read.
    init_choice: Init,
    /// The image is on the daemon: pulled, or found there, once.
    pulled: bool,
    /// `--init`: PID 1 is the image's init system.
    init: bool,
    container: Option<Container>,
    /// Kept across reverts: built trees may refer to it by absolute path.
    downtmp: Option<String>,
    normal_user: Option<String>,
    exe: PathBuf,
    /// The open testbed's root, for single-file copies (root.rs).
    direct: Option<Arc<direct::Root>>,
    /// Whether execs run as root in the testbed, who can open the fifos
    /// that pipes.rs makes.
    execs_as_root: bool,
    /// The next testbed, made while this one runs, so that revert costs
    /// only the swap (see `revert`).
    spare: Option<tokio::task::JoinHandle<Result<Ready>>>,
    /// Ends the spare's warming: an ending session does not wait for it.
    spare_stop: Option<Arc<tokio::sync::Notify>>,
    /// Whether this session has reverted: only then are spares warmed.
    reverted: bool,
    /// Reverted testbeds, killed, whose removal (the daemon deleting what
    /// the tests installed: seconds after a build) runs while the next
    /// testbed works. Awaited by `stop`.
    retiring: Vec<tokio::task::JoinHandle<Result<()>>>,
    apt_options: AptOptions,
    /// The testbeds' apt proxy and package cache, decided at the first
    /// open of a session (apt/plan.rs).
    apt: Option<Arc<AptPlan>>,
    /// `run.network` was settled (life/network.rs) at the first open.
    network_chosen: bool,
    /// `run.network` is rdocker's, not `--network`'s.
    network_ours: bool,
    /// A choice of network began and did not end (the open was cut
    /// off): `stop` looks for a network it made.
    network_cut_off: bool,
    /// The network this session made (Podman, a job container), removed
    /// at close.
    own_network: Option<life::network::Own>,
    /// Where exec helpers reach the stream agents of testbeds without a
    /// direct route (api/hub.rs); made at the first open.
    hub: Option<hub::Hub>,
    /// `--shared-dir`'s scratch directory (host/shared.rs), made at the
    /// first open and kept, by descriptor, until the session ends.
    shared: Option<SharedDir>,
}

/// What it takes to make a testbed; owned, so that a spare can be made
/// on its own task.
#[derive(Clone)]
struct Recipe {
    client: Client,
    image: String,
    run: RunOptions,
    binds: Vec<String>,
    /// Made in the testbed unless it is in the shared directory.
    make_downtmp: bool,
    downtmp: String,
    find_user: bool,
    /// The daemon is local: try its root (root.rs) and the agent.
    local: bool,
    init: bool,
    apt: Option<Arc<AptPlan>>,
    /// Where a testbed without a direct route lists its stream agent.
    agents: Option<hub::Agents>,
    /// A spare: warmed while the test before it runs (apt/warm.rs),
    /// unless this is notified first (the session ends).
    warm: Option<Arc<tokio::sync::Notify>>,
}

/// A started container, with everything rdocker learned about it.
struct Ready {
    container: Container,
    direct: Option<Arc<direct::Root>>,
    execs_as_root: bool,
    /// Some when looked up (the first open).
    normal_user: Option<Option<String>>,
}

impl Ready {
    /// Whether it still runs: a spare may have died while it waited (a
    /// daemon restart, say).
    async fn alive(&self, client: &Client) -> bool {
        if let Some(root) = &self.direct {
            return root.check_alive().is_ok();
        }
        matches!(
            client.docker.inspect_container(&self.container.id, None).await,
            Ok(c) if c.state.as_ref().and_then(|s| s.running) == Some(true)
        )
    }
}

/// Create and start a container and make it a testbed: the scratch
/// directory, the normal user, the direct root and the agent. A failure
/// removes the container.
async fn prepare(r: Recipe) -> Result<Ready> {
    let mut c = Container::create(&r.client, &r.image, &r.run, r.binds.clone(), r.init).await?;
    debug!(
        "started container {} ({})",
        c.name,
        &c.id[..12.min(c.id.len())]
    );
    // A first process that died makes every step fail; its own story is
    // the error then. And a testbed is never handed out dead.
    let platform = r.run.platform.as_deref();
    let set = match set_up(&r, &c).await {
        Ok(s) => match boot::died(&r.client, &c, platform).await {
            Some(e) => Err(e),
            None => Ok(s),
        },
        // boot.rs names an init that died, with what it lacks.
        Err(e) if r.init => Err(e),
        Err(e) => Err(boot::died(&r.client, &c, platform).await.unwrap_or(e)),
    };
    match set {
        Ok((direct, execs_as_root, normal_user)) => Ok(Ready {
            container: c,
            direct,
            execs_as_root,
            normal_user,
        }),
        Err(e) => {
            if let Err(re) = c.remove().await {
                eprintln!("{}: {re:#}", crate::PROG);
            }
            Err(e)
        }
    }
}

/// Everything `prepare` does once the container runs: its direct root,
/// whether execs run as root, and the normal user if looked up.
type SetUp = (Option<Arc<direct::Root>>, bool, Option<Option<String>>);

async fn set_up(r: &Recipe, c: &Container) -> Result<SetUp> {
    if r.init {
        let t = std::time::Instant::now();
        boot::wait(&r.client, c).await?;
        debug!("{} booted in {:.2?}", c.name, t.elapsed());
    }
    let id = c.id.clone();
    let (root, execs_as_root) = find_root(&r.client, c, r.local).await;
    // Straight through the root where we have it; the archive API (or a
    // direct step that failed) otherwise, which also gives the errors.
    let mk = async {
        if !r.make_downtmp {
            return Ok(());
        }
        if let Some(rt) = &root {
            match rt.make_dir(&r.downtmp) {
                Ok(()) => return Ok(()),
                Err(e) => debug!("{e:#}; through the API instead"),
            }
        }
        copy::make_scratch_dir(&r.client, &id, &r.downtmp).await
    };
    let user = async {
        if !r.find_user {
            return Ok(None);
        }
        if let Some(rt) = &root {
            match rt.read_text("/etc/passwd") {
                Ok(t) => return Ok(Some(t.as_deref().and_then(first_normal_user))),
                Err(e) => debug!("{e:#}; through the API instead"),
            }
        }
        copy::read_small_file(&r.client, &id, "/etc/passwd")
            .await
            .map(|t| Some(t.as_deref().and_then(first_normal_user)))
    };
    let apt = async {
        match &r.apt {
            Some(p) => p.configure(&r.client, &id).await,
            None => Ok(()),
        }
    };
    // Without the direct route, commands go through the stream agent
    // where it starts.
    let stream_agent = async {
        let Some(agents) = r.agents.as_ref().filter(|_| root.is_none()) else {
            return;
        };
        match hub::start_agent(&r.client, &id, agents).await {
            Ok(()) => debug!(
                "{}: commands start through the agent in the testbed",
                c.name
            ),
            Err(e) => debug!("{}: commands start through docker exec: {e:#}", c.name),
        }
    };
    let (made, user, apt, ()) = tokio::join!(mk, user, apt, stream_agent);
    made?;
    apt?;
    let normal_user = user?;
    let direct = start_agent(&r.client, c, root, execs_as_root).await;
    if let Some(stop) = &r.warm {
        let t = std::time::Instant::now();
        let warmed = tokio::select! {
            w = warm::apt_cache(&r.client, &id) => w?,
            // prepare removes it: a spare that nobody will take.
            _ = stop.notified() => bail!("the session ended while the spare testbed warmed"),
        };
        match warmed {
            warm::Warmed::Done => debug!(
                "{}: apt's binary cache generated in {:.2?}",
                c.name,
                t.elapsed()
            ),
            warm::Warmed::Nothing => debug!(
                "{}: no apt binary cache to generate (the image's apt keeps none)",
                c.name
            ),
            // A cold cache costs the test's first apt call, not the testbed.
            warm::Warmed::Failed(e) => debug!("{}: not warmed: {e}", c.name),
        }
    }
    Ok((direct, execs_as_root, normal_user))
}

/// The testbed's root beside a local daemon (root.rs), and whether execs
/// run as root there; none where it cannot be proved.
async fn find_root(client: &Client, c: &Container, local: bool) -> (Option<direct::Root>, bool) {
    if !local {
        return (None, false);
    }
    match direct::find(client, &c.id, &c.name).await {
        Ok((rt, as_root)) => {
            debug!("files and directories are copied through the testbed's root directly");
            (Some(rt), as_root)
        }
        Err(e) => {
            debug!("files and directories go through the archive API too: {e:#}");
            (None, false)
        }
    }
}

/// The agent in the testbed, where commands may go through the root.
async fn start_agent(
    client: &Client,
    c: &Container,
    root: Option<direct::Root>,
    execs_as_root: bool,
) -> Option<Arc<direct::Root>> {
    let mut rt = root?;
    if execs_as_root {
        match agent::start(client, &c.id, &rt).await {
            Ok(ctl) => {
                rt.set_agent(ctl);
                debug!("commands start through the agent in the testbed")
            }
            Err(e) => debug!("commands start through docker exec: {e:#}"),
        }
    }
    Some(Arc::new(rt))
}

impl DockerTestbed {
    /// Where tmpfs is mounted in the testbed: the --tmpfs options, and
    /// Docker's own /dev/shm.
    fn tmpfs_mounts(&self) -> Vec<String> {
        let mut m: Vec<String> = self.run.tmpfs.keys().cloned().collect();
        m.push("/dev/shm".into());
        m
    }

    pub fn new(
        client: Client,
        image: String,
        run: RunOptions,
        copy_mode: CopyMode,
        pull: bool,
        init: Init,
        apt_options: AptOptions,
    ) -> Result<DockerTestbed> {
        let exe = std::env::current_exe()
            .context("cannot find rdocker's own executable for print-execute-command")?;
        Ok(DockerTestbed {
            client,
            image,
            run,
            copy_mode,
            pull,
            pulled: false,
            init: init == Init::On,
            init_choice: init,
            container: None,
            downtmp: None,
            normal_user: None,
            exe,
            direct: None,
            execs_as_root: false,
            spare: None,
            spare_stop: None,
            reverted: false,
            retiring: Vec::new(),
            apt_options,
            apt: None,
            network_chosen: false,
            network_ours: false,
            network_cut_off: false,
            own_network: None,
            hub: None,
            shared: None,
        })
    }

    fn shared_dir(&self) -> Option<&Path> {
        match &self.copy_mode {
            CopyMode::Shared { dir, .. } => Some(dir),
            CopyMode::Api { .. } => None,
        }
    }

    fn container(&self) -> Result<&Container> {
        self.container
            .as_ref()
            .ok_or_else(|| anyhow!("the testbed is not open"))
    }

    /// The recipe for this session's testbeds; the scratch directory's
    /// path is chosen at the first open and kept.
    fn recipe(&mut self) -> Result<Recipe> {
        let mut binds = Vec::new();
        if let (Some(dir), None) = (self.shared_dir(), &self.shared) {
            let doubt = match &self.copy_mode {
                CopyMode::Shared { doubt, .. } => doubt.clone(),
                CopyMode::Api { .. } => None,
            };
            self.shared = Some(SharedDir::make(dir, doubt)?);
        }
        if let Some(sd) = &self.shared {
            // Same path on both sides, so that downtmp-host maps 1:1.
            binds.push(sd.bind());
        }
        let downtmp = match (&self.shared, &self.downtmp) {
            (Some(sd), _) => sd.path().to_string_lossy().into_owned(),
            (None, Some(d)) => d.clone(),
            (None, None) => format!("/tmp/autopkgtest.{}", names::random_hex(3)),
        };
        self.downtmp = Some(downtmp.clone());
        Ok(Recipe {
            client: self.client.clone(),
            image: self.image.clone(),
            run: self.run.clone(),
            binds,
            make_downtmp: self.shared.is_none(),
            downtmp,
            find_user: self.normal_user.is_none(),
            local: matches!(self.copy_mode, CopyMode::Api { local: true, .. }),
            init: self.init,
            apt: self.apt.clone(),
            agents: self.hub.as_ref().map(|h| h.agents()),
            warm: None,
        })
    }

    /// Make the next testbed in the background. Only after a testbed is
    /// up: the two would compete for the daemon.
    fn make_spare(&mut self) -> Result<()> {
        // A booted spare runs its services while the test runs: on a
        // shared network they would take the test's ports (an sshd in the
        // image, say) or fail for want of them. The next testbed then
        // boots only once this one is dead: revert costs a boot.
        if self.init && self.shares_network() {
            debug!(
                "no spare testbed: under --init it would boot beside this one, on the same \
                 network"
            );
            return Ok(());
        }
        let mut r = self.recipe()?;
        r.find_user = false;
        // Warmed once the session has reverted: autopkgtest 6.x reverts
        // before every test, so each spare is taken; before that (5.x
        // reverts seldom, a short run never) the warming would mostly
        // spend a core beside the running test for nothing.
        if self.reverted {
            let stop = Arc::new(tokio::sync::Notify::new());
            r.warm = Some(stop.clone());
            self.spare_stop = Some(stop);
        }
        let t = std::time::Instant::now();
        self.spare = Some(tokio::spawn(async move {
            let ready = prepare(r).await;
            if let Ok(sp) = &ready {
                debug!(
                    "spare testbed {} ready in {:.2?}",
                    sp.container.name,
                    t.elapsed()
                );
            }
            ready
        }));
        Ok(())
    }

    /// The spare, if it was made and still runs.
    async fn take_spare(&mut self) -> Option<Ready> {
        // Revert waits for a spare still warming: no stop.
        self.spare_stop = None;
        let handle = self.spare.take()?;
        match handle.await {
            Ok(Ok(mut r)) => {
                if r.alive(&self.client).await {
                    return Some(r);
                }
                debug!("the spare testbed {} has died", r.container.name);
                if let Some(p) = &self.apt {
                    p.release(&r.container.id);
                }
                r.container.remove().await.ok();
                None
            }
            Ok(Err(e)) => {
                debug!("no spare testbed: {e:#}");
                None
            }
            Err(e) => {
                debug!("no spare testbed: {e}");
                None
            }
        }
    }

    /// Boot the image's init if its autopkgtest-build-docker label says it
    /// has one, unless --init or --no-init said otherwise.
    async fn decide_init(&mut self) -> Result<()> {
        let labels = container::image_labels(&self.client, &self.image).await?;
        for (k, v) in &labels {
            if k.starts_with(container::LABEL_AUTOPKGTEST) {
                debug!("image {} is labelled {k}={v}", self.image);
            }
        }
        let label = labels.get(container::LABEL_INIT);
        let wants = label.is_some_and(|v| container::label_wants_init(v));
        match self.init_choice {
            Init::On => debug!("booting the image's init: --init"),
            Init::Off if wants => debug!(
                "not booting the image's init, although its label {}={} asks for it: --no-init",
                container::LABEL_INIT,
                label.map_or("", |v| v.as_str())
            ),
            Init::Off => {}
            Init::Label if wants => {
                self.init = true;
                debug!(
                    "booting the image's init, as its label {}={} says it has one (as --init; \
                     --no-init turns that off)",
                    container::LABEL_INIT,
                    label.map_or("", |v| v.as_str())
                );
            }
            Init::Label => debug!(
                "not booting an init: the image has no {} label naming one (--init boots it)",
                container::LABEL_INIT
            ),
        }
        Ok(())
    }

    /// Make `ready` the open testbed.
    fn install(&mut self, ready: Ready) {
        if let Some(u) = ready.normal_user {
            self.normal_user = u;
        }
        self.direct = ready.direct;
        self.execs_as_root = ready.execs_as_root;
        self.container = Some(ready.container);
    }

    async fn bring_up(&mut self) -> Result<String> {
        if !self.pulled {
            let config_dir = context::Env::process().config_dir();
            let platform = self.run.platform.as_deref();
            if self.pull {
                debug!("pulling {}", self.image);
                container::pull(&self.client, &self.image, platform, &config_dir).await?;
            } else if !container::image_exists(&self.client, &self.image).await? {
                // As `docker run` does (--pull=missing): what the reference
                // runs pulls a missing image too.
                debug!("{} is not on the daemon: pulling it", self.image);
                container::pull(&self.client, &self.image, platform, &config_dir)
                    .await
                    .with_context(|| {
                        format!(
                            "image {} is not on the daemon at {}, and pulling it failed: build \
                             or load it there, or fix what stops the pull",
                            self.image, self.client.endpoint.host
                        )
                    })?;
            }
            self.pulled = true;
            self.decide_init().await?;
        }
        let local = match &self.copy_mode {
            CopyMode::Api { local, .. } => *local,
            CopyMode::Shared { .. } => true,
        };
        // Until chosen: an open cut off meanwhile may have made one.
        self.network_cut_off |= !self.network_chosen && self.run.network.is_none();
        // The network and the apt plan at once: the plan reads the
        // network only for `host` and `none`, which are never chosen.
        let network = async {
            if self.network_chosen || self.run.network.is_some() {
                return Ok(None);
            }
            let cache = self.apt_options.cache != apt::plan::CacheChoice::Off;
            life::network::choose(&self.client, cache && local)
                .await
                .map(Some)
        };
        let plan = async {
            if self.apt.is_some() {
                return Ok(None);
            }
            let (opts, network) = (self.apt_options.clone(), self.run.network.clone());
            tokio::task::spawn_blocking(move || AptPlan::new(&opts, network, local))
                .await
                .context("looking for the host's apt proxy panicked")?
                .map(Some)
        };
        let (network, plan) = tokio::join!(network, plan);
        if let Some(choice) = network? {
            self.use_network(choice);
        }
        self.network_chosen = true;
        self.network_cut_off = false;
        if let Some(plan) = plan? {
            self.apt = Some(Arc::new(plan));
        }
        if self.hub.is_none() {
            match hub::Hub::start() {
                Ok(h) => self.hub = Some(h),
                Err(e) => debug!("commands start through docker exec: no agents: {e:#}"),
            }
        }
        let recipe = self.recipe()?;
        if let Some(p) = &recipe.run.platform {
            platform::check(
                p,
                !matches!(self.copy_mode, CopyMode::Api { local: false, .. }),
            )?;
        }
        let downtmp = recipe.downtmp.clone();
        let ready = match prepare(recipe).await {
            // Removed (`docker network prune`) since it was chosen, before
            // a testbed was on it: made again.
            Err(e) if self.network_gone().await => {
                debug!("the testbeds' network went away ({e:#}); choosing again");
                self.run.network = None;
                let cache = self.apt_options.cache != apt::plan::CacheChoice::Off;
                let choice = life::network::choose(&self.client, cache && local).await?;
                self.use_network(choice);
                prepare(self.recipe()?).await?
            }
            r => r?,
        };
        self.install(ready);
        if let (Some(sd), Some(c)) = (&mut self.shared, &self.container) {
            sd.check_seen(&self.client, &c.id).await?;
        }
        Ok(downtmp)
    }

    /// Whether the network this session chose is gone from the daemon.
    async fn network_gone(&self) -> bool {
        match (&self.run.network, self.network_ours) {
            (Some(id), true) => !life::network::exists(&self.client, id).await,
            _ => false,
        }
    }

    /// Without `--network`, the testbeds go on rdocker's shared network,
    /// where they reach no other container (life/network.rs).
    fn use_network(&mut self, choice: life::network::Choice) {
        match choice {
            life::network::Choice::Apart { id, name, gateway } => {
                debug!(
                    "testbeds on network {name} ({}, gateway {}): they reach the host and the \
                     outside, not each other",
                    &id[..12.min(id.len())],
                    gateway.map_or("none".into(), |g| g.to_string())
                );
                self.run.network = Some(id);
                self.network_ours = true;
            }
            life::network::Choice::Session(own) => {
                debug!(
                    "testbeds on network {} ({}, gateway {}), this session's own: they reach \
                     the host and the outside, not other networks' containers",
                    own.name,
                    &own.id[..12.min(own.id.len())],
                    own.gateway.map_or("none".into(), |g| g.to_string())
                );
                self.run.network = Some(own.id.clone());
                self.network_ours = true;
                self.own_network = Some(*own);
            }
            life::network::Choice::Default(why) => {
                debug!("testbeds on the daemon's default network: {why}")
            }
        }
    }

    /// Remove the open testbed, the spare and the reverted ones, all at
    /// once.
    async fn tear_down(&mut self) -> Result<()> {
        self.direct = None;
        if let Some(h) = &self.hub {
            h.agents().lock().expect("agents").clear();
        }
        let current = self.container.take();
        if let Some(stop) = self.spare_stop.take() {
            stop.notify_one();
        }
        let spare = self.spare.take();
        let retiring = std::mem::take(&mut self.retiring);
        let (a, b, c) = tokio::join!(
            async {
                match current {
                    Some(mut c) => {
                        debug!("removing container {}", c.name);
                        c.remove().await
                    }
                    None => Ok(()),
                }
            },
            async {
                // Waited for, not aborted: a create in flight would leave
                // a container that nobody knows of.
                match spare?.await {
                    Ok(Ok(mut r)) => {
                        debug!("removing spare container {}", r.container.name);
                        Some(r.container.remove().await)
                    }
                    _ => None,
                }
            },
            futures_util::future::join_all(retiring)
        );
        if let Some(p) = self.apt.take() {
            p.close();
        }
        // Once its containers are gone; a next open makes another.
        let net = match self.own_network.take() {
            Some(mut n) => {
                debug!("removing network {}", n.name);
                self.run.network = None;
                self.network_ours = false;
                self.network_chosen = false;
                // A container whose create was cut off holds it too.
                match container::sweep_own(&self.client).await {
                    Ok(()) => n.remove().await,
                    Err(e) => Err(e),
                }
            }
            None => Ok(()),
        };
        a?;
        b.transpose()?;
        for r in c {
            r.map_err(|e| anyhow!("a container removal failed: {e}"))??;
        }
        net?;
        self.remove_shared_dir()
    }

    /// Leave the removal of a reverted (and killed) testbed to a task of
    /// its own.
    async fn retire(&mut self, mut old: Container) -> Result<()> {
        debug!("removing container {} in the background", old.name);
        self.retiring
            .push(tokio::spawn(async move { old.remove().await }));
        // Report failures of those already done, and forget them.
        let (done, running): (Vec<_>, Vec<_>) = std::mem::take(&mut self.retiring)
            .into_iter()
            .partition(|h| h.is_finished());
        self.retiring = running;
        for h in done {
            h.await
                .map_err(|e| anyhow!("a container removal failed: {e}"))??;
        }
        Ok(())
    }

    /// What a testbed shares with the next one, through which what still
    /// runs in it (a service, a background loop) could reach the next:
    /// then revert kills it before handing the next one out.
    fn shares_network(&self) -> bool {
        self.run
            .network
            .as_deref()
            .is_some_and(|n| n == "host" || n.starts_with("container:") || n.starts_with("ns:"))
    }

    fn shared_with_next(&self) -> Vec<String> {
        let mut why = Vec::new();
        if self.init {
            why.push("a booted system's services (--init)".to_string());
        }
        match self.run.network.as_deref() {
            Some(n @ "host") => why.push(format!("the network namespace (--network {n})")),
            Some(n) if n.starts_with("container:") || n.starts_with("ns:") => {
                why.push(format!("the network namespace (--network {n})"))
            }
            _ => {}
        }
        // Read-only too: a socket or fifo in it still carries messages.
        if !self.run.binds.is_empty() {
            why.push(format!("mounts (-v {})", self.run.binds.join(", -v ")));
        }
        if let Some(dir) = self.shared_dir() {
            why.push(format!("the shared directory {}", dir.display()));
        }
        why
    }

    /// Empty the shared scratch directory for the next testbed, once the
    /// last one that wrote in it is dead.
    fn clean_shared_dir(&self) -> Result<()> {
        match &self.shared {
            Some(sd) => sd.reset(),
            None => Ok(()),
        }
    }

    /// Remove the shared scratch directory: the session ends.
    fn remove_shared_dir(&mut self) -> Result<()> {
        match self.shared.take() {
            Some(sd) => sd.remove(),
            None => Ok(()),
        }
    }

    /// A copy whose host path is in the shared scratch directory is the
    /// testbed's to make (host/shared.rs).
    async fn copy_shared(
        &self,
        host: &Path,
        testbed: &str,
        dir: bool,
        up: bool,
    ) -> Option<Result<()>> {
        let sd = self.shared.as_ref().filter(|sd| sd.holds(host))?;
        debug!(
            "{} {} through {}: made in the testbed",
            if up { "copyup to" } else { "copydown from" },
            host.display(),
            sd.path().display()
        );
        let id = match self.container() {
            Ok(c) => c.id.clone(),
            Err(e) => return Some(Err(e)),
        };
        Some(shared::copy_in_testbed(&self.client, &id, host, testbed, dir, up).await)
    }
}

/// The first user in Debian Policy's dynamically allocated range
/// (1000-59999) of an /etc/passwd.
/// In a container the daemon runs (a CI job container beside it): its
/// id goes into the owner labels, so that `--reap` removes what this
/// process leaves once that container is gone.
pub async fn note_own_container(client: &Client, evidence: &daemon::locality::Evidence) {
    if evidence.container_reason().is_none() {
        return;
    }
    match daemon::locality::own_container(client, evidence).await {
        Some(id) => {
            debug!(
                "rdocker runs in container {} on the daemon: its testbeds are labelled with it",
                &id[..12]
            );
            life::labels::set_own_container(id);
        }
        None => debug!("rdocker runs in a container that the daemon does not run"),
    }
}

pub fn first_normal_user(passwd: &str) -> Option<String> {
    passwd
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            let uid: u32 = f.get(2)?.parse().ok()?;
            (1000..=59999)
                .contains(&uid)
                .then(|| (uid, f[0].to_string()))
        })
        .min_by_key(|(uid, _)| *uid)
        .map(|(_, name)| name)
}

impl Testbed for DockerTestbed {
    async fn start(&mut self) -> Result<String> {
        match self.bring_up().await {
            Ok(d) => {
                if let Err(e) = self.make_spare() {
                    debug!("no spare testbed: {e:#}");
                }
                Ok(d)
            }
            Err(e) => {
                self.tear_down().await.ok();
                Err(e)
            }
        }
    }

    async fn revert(&mut self) -> Result<String> {
        // The spare made while this testbed ran takes its place, and the
        // old one is removed by force in the background: revert
        // costs neither a create and start, nor the daemon unmounting and
        // deleting what the tests installed. Without a spare, the new
        // testbed is made meanwhile. They share no name, and a shared
        // directory is emptied after the kill, before the new testbed is
        // handed out.
        let old = self.container.take();
        self.direct = None;
        if let (Some(h), Some(c)) = (&self.hub, &old) {
            hub::forget(&h.agents(), &c.id);
        }
        if let (Some(p), Some(c)) = (&self.apt, &old) {
            p.release(&c.id);
        }
        let spare = self.take_spare().await;
        let recipe = self.recipe()?;
        let downtmp = recipe.downtmp.clone();
        let shared = self.shared_with_next();
        let next = async {
            match spare {
                Some(r) => Ok(r),
                None => prepare(recipe).await,
            }
        };
        let (killed, next) = match (&old, shared.is_empty()) {
            (None, _) => (Ok(()), next.await),
            (Some(c), true) => {
                // The forced removal kills it: a kill awaited here cost
                // revert the daemon's handling of the container's exit.
                debug!(
                    "revert: {} ends in the background, as it shares no network, mount or \
                     init with the next testbed",
                    c.name
                );
                (Ok(()), next.await)
            }
            (Some(c), false) => {
                // What still runs in it could reach the next testbed: it
                // dies first (a fresh container is made only after, too).
                debug!(
                    "revert: killing {} before handing out the next testbed, as they share {}",
                    c.name,
                    shared.join(", ")
                );
                let t = std::time::Instant::now();
                let killed = c.kill().await;
                debug!("{} dead after {:.2?}", c.name, t.elapsed());
                (killed, next.await)
            }
        };
        if let Some(old) = old {
            // Retired even if the kill failed: stop() then removes it.
            let retired = self.retire(old).await;
            killed?;
            retired?;
        }
        let next = next?;
        // Emptied and made writable again, on rdocker's descriptors.
        self.clean_shared_dir()?;
        debug!("testbed container is now {}", next.container.name);
        if let Some(s) = self.apt.as_ref().and_then(|p| p.summary()) {
            debug!("apt cache so far: {s}");
        }
        self.install(next);
        self.reverted = true;
        self.make_spare()?;
        Ok(downtmp)
    }

    async fn reboot(&mut self, prepare_only: bool) -> Result<()> {
        if let Some(why) = self.cannot_reboot() {
            bail!("{why}");
        }
        let downtmp = self
            .downtmp
            .clone()
            .ok_or_else(|| anyhow!("the testbed is not open"))?;
        // The current container reboots, never the spare: a reboot keeps
        // the files, and the spare has none of the test's. The root and
        // the agent die with this boot's PID 1; exec argvs handed out with
        // their handle find it stale (its start time differs) and take the
        // API from now on (exec_mode.rs).
        self.direct = None;
        self.execs_as_root = false;
        let c = self.container()?;
        let t = std::time::Instant::now();
        if prepare_only {
            reboot::check_bus(&self.client, c).await?;
        }
        reboot::save_scratch(&self.client, c, &downtmp).await?;
        let asked = if prepare_only {
            debug!(
                "reboot prepare-only: waiting for the test to reboot {}",
                c.name
            );
            None
        } else {
            debug!("rebooting {}", c.name);
            reboot::ask(&self.client, c).await
        };
        reboot::restart(&self.client, c, asked).await?;
        boot::wait(&self.client, c).await?;
        debug!("{} rebooted in {:.2?}", c.name, t.elapsed());
        reboot::restore_scratch(&self.client, c).await?;
        let local = matches!(self.copy_mode, CopyMode::Api { local: true, .. });
        let (root, as_root) = find_root(&self.client, c, local).await;
        let direct = start_agent(&self.client, c, root, as_root).await;
        // The stream agent died with the boot too (its exec's stream ended).
        if let (Some(h), true) = (&self.hub, direct.is_none()) {
            hub::forget(&h.agents(), &c.id);
            match hub::start_agent(&self.client, &c.id, &h.agents()).await {
                Ok(()) => debug!("{}: commands start through the agent again", c.name),
                Err(e) => debug!("{}: commands start through docker exec: {e:#}", c.name),
            }
        }
        if let Some(e) = boot::died(&self.client, c, self.run.platform.as_deref()).await {
            return Err(e);
        }
        self.direct = direct;
        self.execs_as_root = as_root;
        Ok(())
    }

    fn cannot_reboot(&self) -> Option<String> {
        // Without an init, nothing in the testbed can reboot it: a test's
        // own `reboot` fails (so `reboot prepare-only` could never end),
        // nothing boots again to pick up what --setup-commands changed,
        // and /run, on the image's filesystem, would keep the last boot's
        // state (autopkgtest's reboot marks among it). A container restart
        // would only pretend.
        (!self.init).then(|| {
            "rdocker reboots a testbed only under --init: without an init nothing in it can \
             reboot, and nothing boots again"
                .to_string()
        })
    }

    async fn stop(&mut self) -> Result<()> {
        self.tear_down().await?;
        container::sweep_own(&self.client).await?;
        if self.network_cut_off {
            life::network::sweep_own(&self.client).await?;
        }
        Ok(())
    }

    async fn push(&mut self, host: &Path, testbed: &str, dir: bool) -> Result<()> {
        if let Some(r) = self.copy_shared(host, testbed, dir, false).await {
            return r;
        }
        let id = self.container()?.id.clone();
        if let Some(root) = self.direct.clone() {
            let (h, t) = (host.to_path_buf(), testbed.to_string());
            let done = if dir {
                direct::run(root, move |r, c| tree::push(r, &h, &t, c)).await?
            } else {
                direct::run(root, move |r, c| r.push_file(&h, &t, c)).await?
            };
            if done {
                return Ok(());
            }
        }
        let tmpfs = copy::needs_exec_route(testbed, &self.tmpfs_mounts());
        if tmpfs || dir {
            // Trees go through tar in the testbed, as the reference's
            // --remote does: the daemon's own unpacking (a re-executed
            // dockerd, in Go) took 432 ms for 5000 files of 1 KiB where
            // GNU tar over one exec took 180 ms (bench/bench.py, copydown
            // tree, --remote; docs/performance.md). Single files stay on the archive
            // endpoint, which moves big data faster than an exec's stream
            // (256 MiB: 377 ms against 452 ms through exec stdin).
            debug!("copydown to {testbed} through tar in the testbed");
            match copy::push_via_exec(&self.client, &id, host, testbed, dir).await {
                Err(e) if !tmpfs && e.is::<copy::NoTar>() => {
                    debug!("{e:#}; copying through the archive endpoint instead")
                }
                r => return r,
            }
        }
        copy::push(&self.client, &id, host, testbed, dir).await
    }

    async fn pull(&mut self, testbed: &str, host: &Path, dir: bool) -> Result<()> {
        if let Some(r) = self.copy_shared(host, testbed, dir, true).await {
            return r;
        }
        let id = self.container()?.id.clone();
        if let Some(root) = self.direct.clone() {
            let (h, t) = (host.to_path_buf(), testbed.to_string());
            let done = if dir {
                direct::run(root, move |r, c| tree::pull(r, &t, &h, c)).await?
            } else {
                direct::run(root, move |r, c| r.pull_file(&t, &h, c)).await?
            };
            if done {
                return Ok(());
            }
        }
        let tmpfs = copy::needs_exec_route(testbed, &self.tmpfs_mounts());
        if tmpfs || dir {
            // As for copydown: one exec of tar, and the same host-side
            // extraction as the archive's (178 ms for the tree above in
            // docs/performance.md's run; 235 ms through the archive endpoint in an
            // earlier run of the tree rows).
            debug!("copyup from {testbed} through tar in the testbed");
            match copy::pull_via_exec(&self.client, &id, testbed, host, dir).await {
                Err(e) if !tmpfs && e.is::<copy::NoTar>() => {
                    debug!("{e:#}; copying through the archive endpoint instead")
                }
                r => return r,
            }
        }
        copy::pull(&self.client, &id, testbed, host, dir).await
    }

    fn run_argv(&self) -> Result<Vec<String>> {
        let c = self.container()?;
        let mut argv = vec![
            self.exe.to_string_lossy().into_owned(),
            crate::exec_mode::FLAG.into(),
        ];
        argv.extend(self.client.endpoint.exec_args());
        if let Some(via) = &self.client.via {
            argv.push(format!("--via={}", via.display()));
            // Its one debug line: that it went round a dead socket.
            if crate::DEBUG.load(std::sync::atomic::Ordering::Relaxed) {
                argv.push("--debug".into());
            }
        }
        argv.extend([
            format!("--api-version={}", self.client.api_version()),
            format!("--container={}", c.id),
        ]);
        if let (Some(root), true) = (&self.direct, self.execs_as_root) {
            argv.push(format!("--root={}", root.handle()));
        }
        if let Some(h) = self.hub.as_ref().filter(|h| h.serves(&c.id)) {
            argv.push(format!("--hub={}", h.socket().display()));
        }
        argv.push("--".into());
        Ok(argv)
    }

    /// Straight from the server, on a TTY exec (api/tty.rs), under the
    /// same wrapper as the test's commands, so with the same environment;
    /// the exec argv has no terminal to hand on.
    async fn shell(&mut self, script: &str, console: Console<'_>) -> Result<()> {
        let id = self.container()?.id.clone();
        let token = names::random_hex(8);
        let cmd = ["sh".to_string(), "-c".into(), script.into()];
        let argv = exec::wrapped(&token, &cmd, "");
        let ran = tty::run(
            &self.client,
            &id,
            argv,
            console.size,
            console.input,
            console.output,
            console.resizes,
        )
        .await;
        match ran {
            Ok(code) => {
                debug!("the shell exited {code}");
                Ok(())
            }
            Err(e) => {
                // A shell whose terminal went away would stay in the testbed.
                if let Err(ke) = exec::kill(&self.client, &id, &token).await {
                    debug!("could not stop the shell in the testbed: {ke:#}");
                }
                Err(e)
            }
        }
    }

    fn capabilities(&self) -> Vec<String> {
        let mut caps = vec![
            "revert".to_string(),
            "revert-full-system".into(),
            "root-on-testbed".into(),
        ];
        // As the reference: only a booted init gives tests the services
        // that isolation-container promises.
        if self.init {
            caps.push("isolation-container".into());
        }
        if self.cannot_reboot().is_none() {
            caps.push("reboot".into());
        }
        if let Some(u) = &self.normal_user {
            caps.push(format!("suggested-normal-user={u}"));
        }
        if let (Some(sd), Some(_)) = (&self.shared, &self.container) {
            caps.push(format!("downtmp-host={}", sd.path().display()));
        }
        caps
    }

    async fn describe(&mut self) -> String {
        let Some(c) = &self.container else {
            return "no testbed container is open".into();
        };
        match self.client.docker.inspect_container(&c.id, None).await {
            Ok(i) => format!(
                "testbed container {} is {}",
                c.name,
                i.state
                    .and_then(|s| s.status)
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "in an unknown state".into())
            ),
            Err(e) => format!("testbed container {} cannot be inspected: {e}", c.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_user_is_the_lowest_dynamic_uid() {
        let passwd = "root:x:0:0::/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n\
                      zed:x:1001:1001::/home/zed:/bin/sh\nann:x:1000:1000::/home/ann:/bin/sh\n\
                      sys:x:999:999::/:/bin/false\n";
        assert_eq!(first_normal_user(passwd).as_deref(), Some("ann"));
        assert_eq!(first_normal_user("root:x:0:0::/:/bin/sh\n"), None);
        assert_eq!(
            first_normal_user("big:x:60000:1::/:/bin/sh\nbad line\n"),
            None
        );
    }
}
