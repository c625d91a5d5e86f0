//! The container's life: its docker-run options, create and start, the
//! boot of an init and its reboot, the labels that name its owner, removal
//! on every path (the reaper for dropped containers, `--reap` for
//! orphans), and whether the host runs its platform. It talks to the
//! daemon (daemon/) and runs its boot check and reboot scripts through
//! api/exec.rs; it never opens a testbed's files.

pub mod boot;
pub mod container;
pub mod labels;
pub mod network;
pub mod platform;
pub mod reap;
pub mod reaper;
pub mod reboot;
pub mod runopts;
