//! The host routes, beside a local daemon: the testbed's root through
//! /proc/PID/root, the direct file and tree copies, the exec fifos, the
//! agent, and `--shared-dir`'s directory. This is the only code that acts as root on the host over files
//! a testbed controls, and within it only confined.rs opens them, by one
//! rule (see there). It may use the daemon (to start the agent) and the
//! API wing's tar bridges; neither imports it.

pub mod agent;
pub mod confined;
pub mod pipes;
pub mod root;
pub mod shared;
pub mod tree;
