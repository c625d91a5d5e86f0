//! The Engine API routes: commands through the exec API (with their
//! wrapper and the kill of a timed-out one) or the stream agent kept in
//! the testbed (agent.rs, reached through the server's hub.rs), `shell`
//! on a TTY exec, and files through the archive endpoints or tar over an
//! exec. Everything here goes through
//! the daemon; nothing here touches the testbed's files from the host,
//! and nothing imports the host wing.

pub mod agent;
pub mod copy;
pub mod exec;
pub mod hub;
pub mod tty;
