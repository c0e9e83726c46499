//! The crate both sides of the workbench compile: the server trains and unlearns with this
//! model, and the browser runs the very same network on the weights the server hands out.

pub mod api;
pub mod cifar;
pub mod model;
