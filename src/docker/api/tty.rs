//! An interactive command on a terminal through the exec API: an exec
//! with a TTY (one raw stream, not multiplexed), as root, whose input,
//! output and window size follow the caller's terminal, as
//! `docker exec -it` does.

use anyhow::{anyhow, bail, Context, Result};
use bollard::exec::{CreateExecOptions, ResizeExecOptions, StartExecResults};
use futures_util::{Stream, StreamExt};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::exec::gone;
use crate::docker::daemon::client::{status_of, Client};

/// Run `argv` in `container` as root on a TTY of `size` (rows, columns)
/// that `resizes` then changes; keystrokes come from `input`, and the
/// TTY's output goes to `output`. Returns the exit status once the
/// command's TTY closes. `input` at EOF is a terminal that hung up: an
/// error, and the command is left to the caller to stop.
///
/// bollard tells a raw stream from a multiplexed one by its first byte:
/// a read of the TTY's output that begins with a byte 0, 1 or 2 (rare on
/// a terminal: `printf '\001'`) is taken for a frame header, its first
/// eight bytes are lost, and the output then waits for as many bytes as
/// that "header" says. Only a hijack of our own, under every transport
/// of daemon/client.rs, would avoid it.
pub async fn run(
    client: &Client,
    container: &str,
    argv: Vec<String>,
    size: (u16, u16),
    input: &mut (dyn AsyncRead + Unpin),
    output: &mut (dyn AsyncWrite + Unpin),
    resizes: &mut (dyn Stream<Item = (u16, u16)> + Unpin),
) -> Result<i64> {
    let docker = &client.docker;
    let created = docker
        .create_exec(
            container,
            CreateExecOptions {
                attach_stdin: Some(true),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                tty: Some(true),
                cmd: Some(argv),
                user: Some("0".to_string()),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| match status_of(&e) {
            Some(404) | Some(409) => gone(container, &e),
            _ => anyhow::Error::new(e).context("cannot create an exec in the testbed"),
        })?;
    let id = created.id.as_str();
    let started = super::exec::start_attached(docker, container, id, true).await?;
    let StartExecResults::Attached {
        output: mut from_tty,
        input: mut to_tty,
    } = started
    else {
        bail!("the daemon started the exec detached");
    };

    let resize = |(rows, cols): (u16, u16)| async move {
        // The daemon waits for the exec to have started before resizing.
        let r = docker
            .resize_exec(
                id,
                ResizeExecOptions {
                    height: rows,
                    width: cols,
                },
            )
            .await;
        if let Err(e) = r {
            crate::debug!("cannot resize the shell's terminal to {rows}x{cols}: {e}");
        }
    };
    let sizes = async {
        resize(size).await;
        while let Some(s) = resizes.next().await {
            resize(s).await;
        }
        std::future::pending::<()>().await
    };
    // Each way on its own, so that a command that does not read its input
    // never stops its output (or the other way round).
    let keys = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = input
                .read(&mut buf)
                .await
                .context("cannot read the terminal")?;
            if n == 0 {
                bail!("the terminal hung up");
            }
            to_tty
                .write_all(&buf[..n])
                .await
                .context("lost the shell's input stream")?;
        }
    };
    let screen = async {
        while let Some(frame) = from_tty.next().await {
            let data = frame
                .context("lost the shell's output stream")?
                .into_bytes();
            output
                .write_all(&data)
                .await
                .context("cannot write to the terminal")?;
            output.flush().await?;
        }
        anyhow::Ok(())
    };
    tokio::select! {
        r = screen => r?,
        r = keys => r?,
        () = sizes => {}
    }

    // The output ends when the TTY closes; the status can lag a moment.
    let mut delay = Duration::from_millis(1);
    for _ in 0..100 {
        let inspect = docker
            .inspect_exec(id)
            .await
            .map_err(|e| gone(container, &e))?;
        if inspect.running != Some(true) {
            return inspect
                .exit_code
                .ok_or_else(|| anyhow!("the shell ended without an exit status"));
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(50));
    }
    bail!("the shell did not finish after its terminal closed")
}
