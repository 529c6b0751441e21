//! The control plane: `stopguard <command>` talks to the running agent over
//! a Unix socket, one JSON request and one JSON answer per connection.
//! `protocol` holds every request and its typed reply, shared by both ends:
//! the agent (`server`) writes them, the command line (`client`) reads and
//! prints them.

pub mod client;
pub mod protocol;
pub mod server;

pub use protocol::*;
