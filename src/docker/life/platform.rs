//! Whether the host can run a testbed of `--platform`: natively, or
//! through a binfmt_misc handler (qemu-user-static) that the kernel
//! applies to the container's binaries too.
//!
//! Why: without a handler, the daemon starts the container and its first
//! process dies at once of an exec format error; every command after that
//! fails with a message about a stopped container. Checked before
//! anything starts, the error can name the platform and the fix.

use anyhow::{bail, Result};

use crate::debug;
use std::path::Path;

/// An architecture a testbed can have, as ELF headers say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Machine {
    /// Docker's name (the architecture part of `--platform`).
    docker: &'static str,
    /// qemu's name, in handler and package file names.
    qemu: &'static str,
    /// ELFCLASS64, else 32.
    wide: bool,
    little: bool,
    e_machine: u16,
}

const MACHINES: &[Machine] = &[
    Machine {
        docker: "amd64",
        qemu: "x86_64",
        wide: true,
        little: true,
        e_machine: 62,
    },
    Machine {
        docker: "386",
        qemu: "i386",
        wide: false,
        little: true,
        e_machine: 3,
    },
    Machine {
        docker: "arm64",
        qemu: "aarch64",
        wide: true,
        little: true,
        e_machine: 183,
    },
    Machine {
        docker: "arm",
        qemu: "arm",
        wide: false,
        little: true,
        e_machine: 40,
    },
    Machine {
        docker: "ppc64le",
        qemu: "ppc64le",
        wide: true,
        little: true,
        e_machine: 21,
    },
    Machine {
        docker: "s390x",
        qemu: "s390x",
        wide: true,
        little: false,
        e_machine: 22,
    },
    Machine {
        docker: "riscv64",
        qemu: "riscv64",
        wide: true,
        little: true,
        e_machine: 243,
    },
    Machine {
        docker: "mips64le",
        qemu: "mips64el",
        wide: true,
        little: true,
        e_machine: 8,
    },
];

/// How the host runs a platform.
#[derive(Debug, PartialEq, Eq)]
pub enum Runs {
    Native,
    /// Through the handler of this name, with this interpreter.
    Emulated {
        handler: String,
        interpreter: String,
    },
}

impl std::fmt::Display for Runs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Runs::Native => f.write_str("natively"),
            Runs::Emulated {
                handler,
                interpreter,
            } => write!(f, "through binfmt_misc's {handler} handler ({interpreter})"),
        }
    }
}

/// The machine of `platform` (`linux/arm64`, `linux/arm/v7`, `arm64`).
fn machine(platform: &str) -> Result<Machine> {
    let mut parts = platform.split('/');
    let first = parts.next().unwrap_or("");
    let arch = if first == "linux" {
        parts.next().unwrap_or("")
    } else {
        first
    };
    let arch = match arch {
        "x86_64" => "amd64",
        "aarch64" | "arm64/v8" => "arm64",
        "i386" | "i686" => "386",
        "armhf" | "armel" => "arm",
        a => a,
    };
    MACHINES
        .iter()
        .find(|m| m.docker == arch)
        .copied()
        .ok_or_else(|| {
            anyhow::anyhow!(
                "unknown platform {platform:?}: rdocker knows linux/ with {}",
                MACHINES
                    .iter()
                    .map(|m| m.docker)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
}

/// The machines this host's kernel runs without help.
fn native(host_arch: &str) -> &'static [&'static str] {
    match host_arch {
        "x86_64" => &["amd64", "386"],
        "aarch64" => &["arm64"],
        "arm" => &["arm"],
        "powerpc64" => &["ppc64le"],
        "s390x" => &["s390x"],
        "riscv64" => &["riscv64"],
        _ => &[],
    }
}

/// The first 20 bytes of an executable of `m`: what a handler's magic
/// and mask are matched against.
fn elf_head(m: &Machine) -> [u8; 20] {
    let mut h = [0u8; 20];
    h[..4].copy_from_slice(b"\x7fELF");
    h[4] = if m.wide { 2 } else { 1 };
    h[5] = if m.little { 1 } else { 2 };
    h[6] = 1;
    let (t, em) = if m.little {
        (2u16.to_le_bytes(), m.e_machine.to_le_bytes())
    } else {
        (2u16.to_be_bytes(), m.e_machine.to_be_bytes())
    };
    h[16..18].copy_from_slice(&t);
    h[18..20].copy_from_slice(&em);
    h
}

/// One registered handler, as /proc/sys/fs/binfmt_misc/NAME shows it.
#[derive(Debug, Default)]
struct Handler {
    enabled: bool,
    interpreter: String,
    flags: String,
    offset: usize,
    magic: Vec<u8>,
    mask: Vec<u8>,
}

fn hex(s: &str) -> Option<Vec<u8>> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn parse(text: &str) -> Handler {
    let mut h = Handler::default();
    for line in text.lines() {
        let (k, v) = line.split_once(' ').unwrap_or((line, ""));
        match k {
            "enabled" => h.enabled = true,
            "interpreter" => h.interpreter = v.to_string(),
            "flags:" => h.flags = v.to_string(),
            "offset" => h.offset = v.parse().unwrap_or(0),
            "magic" => h.magic = hex(v).unwrap_or_default(),
            "mask" => h.mask = hex(v).unwrap_or_default(),
            _ => {}
        }
    }
    h
}

impl Handler {
    fn matches(&self, head: &[u8]) -> bool {
        !self.magic.is_empty()
            && self.magic.iter().enumerate().all(|(i, m)| {
                let mask = self.mask.get(i).copied().unwrap_or(0xff);
                head.get(self.offset + i)
                    .is_some_and(|b| b & mask == m & mask)
            })
    }
}

/// What to do when no handler runs `m`.
fn how_to_register(m: &Machine) -> String {
    format!(
        "on Debian or Ubuntu: `apt-get install qemu-user-static binfmt-support` (if \
         /proc/sys/fs/binfmt_misc is not mounted: `mount -t binfmt_misc binfmt_misc \
         /proc/sys/fs/binfmt_misc`, then `update-binfmts --enable qemu-{q}`); elsewhere, \
         `docker run --privileged --rm tonistiigi/binfmt --install {d}`",
        q = m.qemu,
        d = m.docker
    )
}

/// How this host runs `platform`, from the handlers in `binfmt` (the
/// binfmt_misc mount) and the host's architecture. For a local daemon:
/// its kernel is ours.
pub fn check_local(platform: &str, binfmt: &Path, host_arch: &str) -> Result<Runs> {
    let m = machine(platform)?;
    if native(host_arch).contains(&m.docker) {
        return Ok(Runs::Native);
    }
    let status = std::fs::read_to_string(binfmt.join("status")).unwrap_or_default();
    if status.trim() != "enabled" {
        bail!(
            "this host cannot run {platform} testbeds: binfmt_misc is {} at {}, so no \
             emulator runs foreign binaries; {}",
            if status.is_empty() {
                "not mounted"
            } else {
                "disabled"
            },
            binfmt.display(),
            how_to_register(&m)
        );
    }
    let head = elf_head(&m);
    let mut without_f = None;
    let mut names: Vec<_> = std::fs::read_dir(binfmt)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    names.sort();
    for name in names {
        let name = name.to_string_lossy().into_owned();
        if name == "status" || name == "register" {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(binfmt.join(&name)) else {
            continue;
        };
        let h = parse(&text);
        if !h.enabled || !h.matches(&head) {
            continue;
        }
        // Without F the kernel looks the interpreter up at each exec, in
        // the container's filesystem, where it is not.
        if !h.flags.contains('F') {
            without_f = Some((name, h.interpreter));
            continue;
        }
        return Ok(Runs::Emulated {
            handler: name,
            interpreter: h.interpreter,
        });
    }
    if let Some((name, interp)) = without_f {
        bail!(
            "this host cannot run {platform} testbeds: its binfmt_misc handler {name} has no F \
             flag, so the kernel would look for {interp} inside the container; install \
             qemu-user-static (whose handlers carry F) or register {name} again with F"
        );
    }
    bail!(
        "this host cannot run {platform} testbeds: no enabled binfmt_misc handler in {} runs \
         {} binaries; {}",
        binfmt.display(),
        m.qemu,
        how_to_register(&m)
    )
}

/// Whether the host can run `--platform`, before anything starts. Beside
/// a local daemon its kernel is ours, and /proc says; a remote daemon's
/// cannot be read from here, and a testbed that cannot run is reported
/// when its first process dies.
pub fn check(p: &str, local: bool) -> Result<()> {
    if !local {
        debug!("--platform {p}: the daemon is remote, so its binfmt handlers are not checked here");
        return Ok(());
    }
    let runs = check_local(
        p,
        Path::new("/proc/sys/fs/binfmt_misc"),
        std::env::consts::ARCH,
    )?;
    debug!("--platform {p}: this host runs it {runs}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As qemu-user-static registers it (Debian's /usr/lib/binfmt.d).
    const AARCH64: &str = "enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\n\
        flags: POCF\noffset 0\nmagic 7f454c460201010000000000000000000200b700\n\
        mask ffffffffffffff00fffffffffffffffffeffffff\n";

    fn fake(handlers: &[(&str, &str)], status: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!(
            "rdocker-binfmt-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        if !status.is_empty() {
            std::fs::write(d.join("status"), status).unwrap();
        }
        std::fs::write(d.join("register"), "").unwrap();
        for (n, t) in handlers {
            std::fs::write(d.join(n), t).unwrap();
        }
        d
    }

    #[test]
    fn native_platforms_need_no_handler() {
        let d = fake(&[], "");
        assert_eq!(
            check_local("linux/amd64", &d, "x86_64").unwrap(),
            Runs::Native
        );
        assert_eq!(
            check_local("linux/386", &d, "x86_64").unwrap(),
            Runs::Native
        );
        assert_eq!(
            check_local("linux/arm64", &d, "aarch64").unwrap(),
            Runs::Native
        );
    }

    #[test]
    fn a_registered_handler_with_f_runs_the_platform() {
        let d = fake(&[("qemu-aarch64", AARCH64)], "enabled\n");
        match check_local("linux/arm64", &d, "x86_64").unwrap() {
            Runs::Emulated { handler, .. } => assert_eq!(handler, "qemu-aarch64"),
            r => panic!("{r:?}"),
        }
        // The same handler does not run armhf or riscv64.
        let e = check_local("linux/arm/v7", &d, "x86_64").unwrap_err();
        let e = format!("{e:#}");
        assert!(
            e.contains("linux/arm/v7") && e.contains("qemu-user-static"),
            "{e}"
        );
        assert!(check_local("linux/riscv64", &d, "x86_64").is_err());
    }

    #[test]
    fn missing_disabled_or_unfixed_handlers_are_named() {
        let d = fake(&[("qemu-aarch64", AARCH64)], "");
        let e = format!(
            "{:#}",
            check_local("linux/arm64", &d, "x86_64").unwrap_err()
        );
        assert!(
            e.contains("not mounted") && e.contains("mount -t binfmt_misc"),
            "{e}"
        );
        let off = AARCH64.replacen("enabled", "disabled", 1);
        let d = fake(&[("qemu-aarch64", &off)], "enabled");
        let e = format!(
            "{:#}",
            check_local("linux/arm64", &d, "x86_64").unwrap_err()
        );
        assert!(
            e.contains("no enabled binfmt_misc handler") && e.contains("aarch64"),
            "{e}"
        );
        let nof = AARCH64.replace("flags: POCF", "flags: OC");
        let d = fake(&[("qemu-aarch64", &nof)], "enabled");
        let e = format!(
            "{:#}",
            check_local("linux/arm64", &d, "x86_64").unwrap_err()
        );
        assert!(e.contains("no F"), "{e}");
        let e = format!(
            "{:#}",
            check_local("linux/sparc", &d, "x86_64").unwrap_err()
        );
        assert!(e.contains("unknown platform"), "{e}");
    }
}
