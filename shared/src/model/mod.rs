//! The network: ResNet18 for CIFAR-10, its BatchNorm, and its weight format.

mod conv;
#[cfg(feature = "flex-kernels")]
mod flex;
mod norm;
mod resnet;
pub mod weights;
#[cfg(feature = "flex-kernels")]
mod wide;

pub use norm::{BatchNorm, BatchNormConfig, NormStats};
pub use resnet::{BasicBlock, Downsample, ResNet, ResNetConfig, RESNET18_PARAMETERS};
