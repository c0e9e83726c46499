//! ResNet18 with the CIFAR stem (3x3 stride-1 convolution, no max-pool).
//!
//! Field names follow torchvision's state-dict keys, so that weights map one-to-one
//! (see [`super::weights`]).

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::{relu, softmax};
use burn::tensor::module::adaptive_avg_pool2d;

use super::conv::convolve;
use super::norm::{BatchNorm, BatchNormConfig, NormStats};
use crate::cifar::{normalize_into, CHANNELS, IMAGE_BYTES, IMAGE_SIDE, NUM_CLASSES};

/// Trainable parameters of the real model (width 64, 10 classes), as torchvision counts them.
pub const RESNET18_PARAMETERS: usize = 11_173_962;

#[derive(Config, Debug, PartialEq)]
pub struct ResNetConfig {
    /// Channels of the stem and the first stage; the stages double it. 64 is ResNet18;
    /// smaller widths exist for fast tests.
    #[config(default = 64)]
    pub width: usize,
    #[config(default = "NUM_CLASSES")]
    pub num_classes: usize,
}

#[derive(Module, Debug)]
pub struct ResNet<B: Backend> {
    pub conv1: Conv2d<B>,
    pub bn1: BatchNorm<B>,
    pub layer1: Vec<BasicBlock<B>>,
    pub layer2: Vec<BasicBlock<B>>,
    pub layer3: Vec<BasicBlock<B>>,
    pub layer4: Vec<BasicBlock<B>>,
    pub fc: Linear<B>,
}

#[derive(Module, Debug)]
pub struct BasicBlock<B: Backend> {
    pub conv1: Conv2d<B>,
    pub bn1: BatchNorm<B>,
    pub conv2: Conv2d<B>,
    pub bn2: BatchNorm<B>,
    pub downsample: Option<Downsample<B>>,
}

/// The 1x1 projection on the shortcut when a block changes shape.
#[derive(Module, Debug)]
pub struct Downsample<B: Backend> {
    pub conv: Conv2d<B>,
    pub bn: BatchNorm<B>,
}

fn conv3x3<B: Backend>(input: usize, output: usize, stride: usize, device: &B::Device) -> Conv2d<B> {
    Conv2dConfig::new([input, output], [3, 3]).with_stride([stride, stride]).with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1)).with_bias(false).init(device)
}

fn batch_norm<B: Backend>(channels: usize, device: &B::Device) -> BatchNorm<B> {
    BatchNormConfig::new(channels).init(device)
}

impl ResNetConfig {
    pub fn init<B: Backend>(&self, device: &B::Device) -> ResNet<B> {
        let w = self.width;
        let stage =
            |input: usize, output: usize, stride: usize| vec![BasicBlock::new(input, output, stride, device), BasicBlock::new(output, output, 1, device)];
        ResNet {
            conv1: conv3x3(CHANNELS, w, 1, device),
            bn1: batch_norm(w, device),
            layer1: stage(w, w, 1),
            layer2: stage(w, 2 * w, 2),
            layer3: stage(2 * w, 4 * w, 2),
            layer4: stage(4 * w, 8 * w, 2),
            fc: LinearConfig::new(8 * w, self.num_classes).init(device),
        }
    }
}

impl<B: Backend> BasicBlock<B> {
    fn new(input: usize, output: usize, stride: usize, device: &B::Device) -> Self {
        let downsample = (stride != 1 || input != output).then(|| Downsample {
            conv: Conv2dConfig::new([input, output], [1, 1]).with_stride([stride, stride]).with_bias(false).init(device),
            bn: batch_norm(output, device),
        });
        Self {
            conv1: conv3x3(input, output, stride, device),
            bn1: batch_norm(output, device),
            conv2: conv3x3(output, output, 1, device),
            bn2: batch_norm(output, device),
            downsample,
        }
    }

    /// The block's output for `x`, `[batch, output channels, side / stride, side / stride]`.
    pub fn forward(&self, x: Tensor<B, 4>, stats: NormStats) -> Tensor<B, 4> {
        let shortcut = match &self.downsample {
            Some(down) => down.bn.forward(convolve(&down.conv, x.clone()), stats),
            None => x.clone(),
        };
        let y = relu(self.bn1.forward(convolve(&self.conv1, x), stats));
        let y = self.bn2.forward(convolve(&self.conv2, y), stats);
        relu(y + shortcut)
    }
}

impl<B: Backend> ResNet<B> {
    /// Logits `[batch, classes]` for normalised images `[batch, 3, 32, 32]`.
    pub fn forward(&self, images: Tensor<B, 4>, stats: NormStats) -> Tensor<B, 2> {
        self.fc.forward(self.features(images, stats))
    }

    /// The penultimate features `[batch, 8 * width]`: everything before `fc`, whose input
    /// they are.
    pub fn features(&self, images: Tensor<B, 4>, stats: NormStats) -> Tensor<B, 2> {
        self.features_from_last_stage(self.last_stage_input(images, stats), stats)
    }

    /// What the last stage (`layer4`) reads, `[batch, 4 * width, side / 4, side / 4]`: shared
    /// by every model that differs from this one only from `layer4` on.
    pub fn last_stage_input(&self, images: Tensor<B, 4>, stats: NormStats) -> Tensor<B, 4> {
        let x = relu(self.bn1.forward(convolve(&self.conv1, images), stats));
        [&self.layer1, &self.layer2, &self.layer3].into_iter().flatten().fold(x, |x, block| block.forward(x, stats))
    }

    /// The shape of one image's [`last_stage_input`](Self::last_stage_input).
    pub fn last_stage_input_shape(&self) -> [usize; 3] {
        let [_, channels, ..] = self.layer4[0].conv1.weight.dims();
        // `layer2` and `layer3` each halve the side.
        [channels, IMAGE_SIDE / 4, IMAGE_SIDE / 4]
    }

    /// The penultimate features from [`last_stage_input`](Self::last_stage_input)'s output.
    pub fn features_from_last_stage(&self, x: Tensor<B, 4>, stats: NormStats) -> Tensor<B, 2> {
        let x = self.layer4.iter().fold(x, |x, block| block.forward(x, stats));
        adaptive_avg_pool2d(x, [1, 1]).flatten(1, 3)
    }

    /// Class probabilities `[batch, classes]` for channel-planar u8 images, normalised as
    /// in training: what the browser shows for an image.
    pub fn classify(&self, images: &[u8], device: &B::Device) -> Tensor<B, 2> {
        let batch = images.len() / IMAGE_BYTES;
        let mut values = Vec::with_capacity(images.len());
        for image in images.chunks_exact(IMAGE_BYTES) {
            normalize_into(image, &mut values);
        }
        let images = Tensor::<B, 1>::from_floats(values.as_slice(), device).reshape([batch, CHANNELS, IMAGE_SIDE, IMAGE_SIDE]);
        softmax(self.forward(images, NormStats::Running), 1)
    }

    /// The configuration this model was built with, read back from its shapes.
    pub fn config(&self) -> ResNetConfig {
        let [width, ..] = self.conv1.weight.dims();
        let [_, num_classes] = self.fc.weight.dims();
        ResNetConfig { width, num_classes }
    }
}
