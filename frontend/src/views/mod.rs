//! The page's parts, each a small component reading the shared `Workbench`.

mod charts;
mod classify;
mod controls;
mod history;
mod results;
mod status;

pub use classify::Classify;
pub use controls::Controls;
pub use history::{Compare, History};
pub use results::Results;
pub use status::{ErrorBanner, RunProgress};
