//! What users run: the command line and the server, both over one executor.

pub(crate) mod cli;
pub(crate) mod executor;
pub(crate) mod heap;
pub(crate) mod server;
