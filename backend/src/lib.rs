//! The workbench's engine: CIFAR-10 on disk, Burn ResNet18 training, SSD unlearning and
//! evaluation, on whichever device is chosen at run time.

pub mod data;
pub mod device;
pub mod engine;
pub mod files;
pub mod models;
pub mod server;
