//! Everything exchanged between the engine's reports, the command line's JSON, the HTTP API
//! and the browser.

mod limits;
mod report;
mod request;
mod run;
mod service;
mod ssd;
mod table;
mod training;

pub use limits::{CLASS_TRAIN_IMAGES, MAX_BATCH, MAX_EPOCHS, MAX_WIDTH};
pub use report::*;
pub use request::*;
pub use run::*;
pub use service::*;
pub use ssd::*;
pub use table::*;
pub use training::*;
