//! Everything exchanged between the engine, the CLI's JSON output, the HTTP API and the
//! browser.

mod report;
mod runs;
mod service;

pub use report::*;
pub use runs::*;
pub use service::*;
