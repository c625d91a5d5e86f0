//! The testbed container's lifecycle: create, start, remove, and a guard
//! that removes it on every path, panics included.

use anyhow::{Context, Result};
use bollard::models::{ContainerCreateBody, HostConfig, HostConfigCgroupnsModeEnum};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, RemoveContainerOptionsBuilder,
};
use futures_util::StreamExt;
use std::collections::HashMap;

use super::labels::{
    hostname, Owner, LABEL_OWNER_HOST, LABEL_OWNER_PID, LABEL_OWNER_PIDNS, LABEL_OWNER_START,
};
use super::runopts::RunOptions;
use crate::docker::daemon::client::{status_of, Client};
use crate::docker::names::random_hex;

/// How long removal waits for an unreachable daemon to come back.
const REMOVE_RETRY: std::time::Duration = std::time::Duration::from_secs(30);

/// How long revert waits for a SIGKILLed testbed to stop.
const KILL_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// PID 1 with --init, as the reference runs it.
pub const INIT: &str = "/sbin/init";

/// PID 1: idles, and exits at once on SIGTERM (a bare `sleep infinity` as
/// PID 1 ignores it, which is what makes `docker stop` wait 10 s).
const IDLE: &str = "trap 'exit 0' TERM INT HUP; while :; do sleep 2147483647 & wait $!; done";

/// The prefix of the labels autopkgtest-build-docker (5.40 and later)
/// puts on its images: .init, .dpkg_architecture, .release, .vendor.
pub const LABEL_AUTOPKGTEST: &str = "org.debian.autopkgtest.";
/// The image's init system, if it has one.
pub const LABEL_INIT: &str = "org.debian.autopkgtest.init";

/// Whether a value of LABEL_INIT names an init to boot: anything but an
/// empty value or a "no".
pub fn label_wants_init(v: &str) -> bool {
    // autopkgtest-build-docker writes the init's name; "none" or nothing
    // for an image without one.
    !matches!(
        v.trim().to_ascii_lowercase().as_str(),
        "" | "none" | "no" | "false" | "0"
    )
}

/// The labels of `image` as the daemon has it.
pub async fn image_labels(client: &Client, image: &str) -> Result<HashMap<String, String>> {
    let i = client
        .docker
        .inspect_image(image)
        .await
        .with_context(|| format!("cannot inspect image {image} on the daemon"))?;
    Ok(i.config.and_then(|c| c.labels).unwrap_or_default())
}

/// Whether the daemon has `image`.
pub async fn image_exists(client: &Client, image: &str) -> Result<bool> {
    match client.docker.inspect_image(image).await {
        Ok(_) => Ok(true),
        Err(e) if status_of(&e) == Some(404) => Ok(false),
        Err(e) => Err(anyhow::Error::new(e).context(format!(
            "cannot ask the daemon at {} for image {image}",
            client.endpoint.host
        ))),
    }
}

/// Pull `image` through the daemon, with the docker CLI's credentials for
/// its registry (auth.rs) from `config_dir`.
/// `platform` (--platform) picks the variant, as `docker run --platform`.
pub async fn pull(
    client: &Client,
    image: &str,
    platform: Option<&str>,
    config_dir: &std::path::Path,
) -> Result<()> {
    // A credential helper is a process of its own: off the runtime.
    let (dir, img) = (config_dir.to_path_buf(), image.to_string());
    let credentials =
        tokio::task::spawn_blocking(move || crate::docker::daemon::auth::for_image(&dir, &img))
            .await
            .context("the credential lookup panicked")??;
    let logged_in = credentials.is_some();
    let mut opts = CreateImageOptionsBuilder::new().from_image(image);
    if let Some(p) = platform {
        opts = opts.platform(p);
    }
    let opts = opts.build();
    let mut stream = client.docker.create_image(Some(opts), None, credentials);
    while let Some(item) = stream.next().await {
        item.with_context(|| {
            let registry = crate::docker::daemon::auth::registry_of(image);
            let cmd = crate::docker::daemon::auth::login_command(&registry);
            let config = config_dir.join("config.json");
            let login = if logged_in {
                format!(
                    "the credentials for {registry} in {} were sent; if the registry refuses \
                     them, run `{cmd}` again",
                    config.display()
                )
            } else {
                format!(
                    "no credentials for {registry} in {}: for a private image, run `{cmd}` \
                     first",
                    config.display()
                )
            };
            format!(
                "cannot pull {image} through the daemon at {}; check the image name and that \
                 the daemon can reach its registry ({login})",
                client.endpoint.host
            )
        })?;
    }
    Ok(())
}

/// All containers, running or not, that carry every one of these labels.
pub async fn labelled(
    client: &Client,
    labels: Vec<String>,
) -> Result<Vec<bollard::models::ContainerSummary>> {
    let filters = HashMap::from([("label".to_string(), labels)]);
    let opts = bollard::query_parameters::ListContainersOptionsBuilder::new()
        .all(true)
        .filters(&filters)
        .build();
    Ok(client.docker.list_containers(Some(opts)).await?)
}

/// Remove every container this process owns, by label: whatever an
/// aborted request may have created without our knowing its id.
pub async fn sweep_own(client: &Client) -> Result<()> {
    let list = labelled(
        client,
        vec![
            format!("{LABEL_OWNER_PID}={}", std::process::id()),
            format!("{LABEL_OWNER_HOST}={}", hostname()),
        ],
    )
    .await
    .context("cannot list this process's containers")?;
    let me = Owner::current();
    for c in list {
        let (Some(id), labels) = (c.id, c.labels.unwrap_or_default()) else {
            continue;
        };
        // Same pid on this host, but in another namespace or earlier
        // process: not ours.
        if labels.get(LABEL_OWNER_PIDNS) != me.pidns.as_ref()
            || labels.get(LABEL_OWNER_START) != me.start.map(|s| s.to_string()).as_ref()
        {
            continue;
        }
        let mut stray = Container {
            id,
            name: c
                .names
                .and_then(|n| n.into_iter().next())
                .unwrap_or_default(),
            client: client.clone(),
            removed: false,
        };
        stray.remove().await?;
    }
    Ok(())
}

/// Podman reports the moment between a container's first process exiting
/// and its clean-up as `stopped` (and a container never started as
/// `configured`): states the Engine API does not have, which bollard
/// cannot read, and which are not running either.
pub fn not_running_on_podman(e: &bollard::errors::Error) -> bool {
    matches!(e, bollard::errors::Error::JsonDataError { message, .. }
        if message.starts_with("unknown variant `stopped`")
            || message.starts_with("unknown variant `configured`"))
}

/// A running testbed container. Remove it with `remove`; dropping it
/// leaves the removal to the reaper (reaper.rs).
pub struct Container {
    pub id: String,
    pub name: String,
    client: Client,
    removed: bool,
}

impl Container {
    /// With `init`, PID 1 is the image's /sbin/init (`--init`) instead of
    /// rdocker's idle shell.
    pub async fn create(
        client: &Client,
        image: &str,
        run: &RunOptions,
        binds: Vec<String>,
        init: bool,
    ) -> Result<Container> {
        let name = format!("rdocker-{}-{}", std::process::id(), random_hex(4));
        let labels = Owner::current().labels();
        let mut all_binds = run.binds.clone();
        all_binds.extend(binds);
        let host_config = HostConfig {
            binds: Some(all_binds),
            tmpfs: (!run.tmpfs.is_empty()).then(|| run.tmpfs.clone()),
            cap_add: (!run.cap_add.is_empty()).then(|| run.cap_add.clone()),
            privileged: Some(run.privileged),
            memory: run.memory,
            nano_cpus: run.nano_cpus,
            shm_size: run.shm_size,
            extra_hosts: (!run.extra_hosts.is_empty()).then(|| run.extra_hosts.clone()),
            network_mode: run.network.clone(),
            cgroupns_mode: run.cgroupns.as_deref().map(|m| match m {
                "host" => HostConfigCgroupnsModeEnum::HOST,
                _ => HostConfigCgroupnsModeEnum::PRIVATE,
            }),
            ..Default::default()
        };
        let body = ContainerCreateBody {
            image: Some(image.to_string()),
            // The name as PID 1's last argument: how root.rs knows this
            // container's PID 1 from another pid namespace's process. An
            // init ignores it (systemd in a container reads its arguments
            // as a kernel command line, and skips words it does not know).
            entrypoint: Some(if init {
                vec![INIT.into()]
            } else {
                vec!["/bin/sh".into(), "-c".into(), IDLE.into()]
            }),
            cmd: Some(if init {
                vec![name.clone()]
            } else {
                vec!["rdocker-idle".into(), name.clone()]
            }),
            env: (!run.env.is_empty()).then(|| run.env.clone()),
            labels: Some(labels),
            host_config: Some(host_config),
            ..Default::default()
        };
        let mut opts = CreateContainerOptionsBuilder::new().name(&name);
        if let Some(p) = &run.platform {
            opts = opts.platform(p);
        }
        let created = client
            .docker
            .create_container(Some(opts.build()), body)
            .await
            .map_err(|e| {
                let hint = if status_of(&e) == Some(404) {
                    format!(
                        "; the image is not on the daemon at {} (was it removed meanwhile?): \
                         build, load or pull it there",
                        client.endpoint.host
                    )
                } else {
                    String::new()
                };
                anyhow::Error::new(e).context(format!(
                    "cannot create a container from image {image}{hint}"
                ))
            })?;
        let mut c = Container {
            id: created.id,
            name,
            client: client.clone(),
            removed: false,
        };
        if let Err(e) = client.docker.start_container(&c.id, None).await {
            c.remove().await.ok();
            let hint = if init {
                format!(
                    "; --init runs the image's {INIT}, which needs an init system in the image \
                     (systemd-sysv or sysvinit-core)"
                )
            } else {
                String::new()
            };
            return Err(anyhow::Error::new(e).context(format!(
                "cannot start the testbed container from image {image}{hint}"
            )));
        }
        Ok(c)
    }

    /// End the testbed without a grace period; the container stays until
    /// `remove`. SIGKILL, and return once the daemon reports it not
    /// running: every process dead (its pid namespace went with PID 1),
    /// their ports and files closed.
    pub async fn kill(&self) -> Result<()> {
        let opts = bollard::query_parameters::KillContainerOptionsBuilder::new()
            .signal("SIGKILL")
            .build();
        match self
            .client
            .docker
            .kill_container(&self.id, Some(opts))
            .await
        {
            Ok(()) => {}
            // Gone, or not running: nothing runs in it either way.
            Err(e) if matches!(status_of(&e), Some(404 | 409)) => return Ok(()),
            Err(e) => {
                return Err(anyhow::Error::new(e)
                    .context(format!("cannot kill testbed container {}", self.name)))
            }
        }
        self.wait_stopped().await
    }

    /// Until the daemon reports the container not running. Docker's kill
    /// with SIGKILL already waits for that; Podman's does not.
    async fn wait_stopped(&self) -> Result<()> {
        let deadline = std::time::Instant::now() + KILL_WAIT;
        loop {
            match self.client.docker.inspect_container(&self.id, None).await {
                Ok(c) if c.state.as_ref().and_then(|s| s.running) != Some(true) => return Ok(()),
                Err(e) if status_of(&e) == Some(404) || not_running_on_podman(&e) => return Ok(()),
                Ok(_) => {}
                Err(e) => {
                    return Err(anyhow::Error::new(e).context(format!(
                        "cannot ask the daemon whether testbed container {} has stopped",
                        self.name
                    )))
                }
            }
            if std::time::Instant::now() > deadline {
                anyhow::bail!(
                    "testbed container {} still runs {} s after SIGKILL, so the next testbed, \
                     which it could interfere with, is not handed out; see `docker inspect {}` \
                     and the daemon's log (a process stuck in the kernel?)",
                    self.name,
                    KILL_WAIT.as_secs(),
                    self.name
                );
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// Remove a container known by id, and never hand it to the reaper
    /// again: for the reaper itself.
    pub async fn remove_once(client: Client, id: String, name: String) -> Result<()> {
        let mut c = Container {
            id,
            name,
            client,
            removed: false,
        };
        let r = c.remove().await;
        c.removed = true;
        r
    }

    /// Kill and remove at once: nothing in a testbed is worth a grace period.
    pub async fn remove(&mut self) -> Result<()> {
        if self.removed {
            return Ok(());
        }
        let opts = RemoveContainerOptionsBuilder::new()
            .force(true)
            .v(true)
            .build();
        // A daemon that is restarting answers nothing for a while; wait
        // for it rather than leave the container behind.
        let deadline = std::time::Instant::now() + REMOVE_RETRY;
        let busy_until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut delay = std::time::Duration::from_millis(100);
        loop {
            match self
                .client
                .docker
                .remove_container(&self.id, Some(opts.clone()))
                .await
            {
                Ok(()) => break,
                Err(e) if status_of(&e) == Some(404) => break,
                // "removal already in progress"
                Err(e) if status_of(&e) == Some(409) => break,
                // A container that is just stopping (after revert's
                // SIGTERM) can fail a forced removal: podman says "could
                // not be stopped: container state improper". Once stopped,
                // it goes.
                Err(e) if status_of(&e) == Some(500) && std::time::Instant::now() < busy_until => {
                    crate::debug!("cannot remove {} yet ({e}); retrying", self.name);
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(e) if status_of(&e).is_none() && std::time::Instant::now() < deadline => {
                    crate::debug!(
                        "cannot reach the daemon to remove {} ({e}); retrying",
                        self.name
                    );
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(std::time::Duration::from_secs(2));
                }
                Err(e) => {
                    return Err(anyhow::Error::new(e).context(format!(
                        "cannot remove testbed container {}; once the daemon answers, remove \
                         it with `autopkgtest-virt-rdocker --reap` or `docker rm -f {}`",
                        self.name, self.name
                    )))
                }
            }
        }
        self.removed = true;
        Ok(())
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        // Off this thread: it may be an async worker.
        let (endpoint, version) = (self.client.endpoint.clone(), self.client.api_version());
        let via = self.client.via.clone();
        let (id, name) = (self.id.clone(), self.name.clone());
        super::reaper::remove(super::reaper::Job {
            name: self.name.clone(),
            work: Box::new(move || {
                Box::pin(async move {
                    let client = Client::connect_with_version(&endpoint, &version, via.as_deref())?;
                    Container::remove_once(client, id, name).await
                })
            }),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_labels_that_name_an_init() {
        for v in ["systemd", "sysvinit", "openrc", "yes"] {
            assert!(label_wants_init(v), "{v}");
        }
        for v in ["", "none", "None", " no ", "false", "0"] {
            assert!(!label_wants_init(v), "{v:?}");
        }
    }
}
