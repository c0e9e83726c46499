//! The work itself, generic over Burn backends: batching, training, SSD and evaluation. It
//! reads the dataset it is given and writes nothing itself: checkpoints go to a callback,
//! cached importances to the cache it is handed.

pub(crate) mod batch;
pub(crate) mod calibrate;
pub(crate) mod device;
pub(crate) mod evaluate;
pub(crate) mod evaluation;
pub(crate) mod features;
mod flat;
pub(crate) mod membership;
pub(crate) mod optim;
pub(crate) mod probe;
pub(crate) mod progress;
pub(crate) mod relearn;
pub(crate) mod scope;
pub(crate) mod ssd;
pub(crate) mod train;
pub(crate) mod unlearn;
#[cfg(all(test, feature = "wgpu"))]
mod wgpu_agreement;

use burn::prelude::*;
use rand::seq::index;
use rand::SeedableRng;
use unlearn_shared::model::{NormStats, ResNet};

use crate::storage::dataset::Split;

/// Some images of one split, in the order given.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Images<'a> {
    pub(crate) split: &'a Split,
    pub(crate) indices: &'a [usize],
}

/// What a model is run on: images, or the activations a model computed at a boundary (its
/// penultimate features, what its `layer4` reads) where only the layers past it can differ
/// ([`features::Featured`]).
pub(crate) trait Inputs: Copy {
    fn images(&self) -> Images<'_>;

    /// `model`'s penultimate features, BatchNorm in inference mode, for the images at
    /// `chunk` (split indices, all among [`images`](Self::images)).
    fn features<B: Backend>(&self, model: &ResNet<B>, chunk: &[usize], device: &B::Device) -> Tensor<B, 2>;

    /// `model`'s logits for the images at `chunk`: what `fc` makes of their features.
    fn logits<B: Backend>(&self, model: &ResNet<B>, chunk: &[usize], device: &B::Device) -> Tensor<B, 2> {
        model.fc.forward(self.features(model, chunk, device))
    }
}

impl Inputs for Images<'_> {
    fn images(&self) -> Images<'_> {
        *self
    }

    fn features<B: Backend>(&self, model: &ResNet<B>, chunk: &[usize], device: &B::Device) -> Tensor<B, 2> {
        model.features(batch::batch::<B>(self.split, chunk, device).images, NormStats::Running)
    }
}

/// A seeded random subset of at most `limit` of `indices`, kept in their original order.
pub(crate) fn sample(indices: Vec<usize>, limit: Option<usize>, seed: u64) -> Vec<usize> {
    match limit {
        Some(limit) if limit < indices.len() => {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let mut picked = index::sample(&mut rng, indices.len(), limit).into_vec();
            picked.sort_unstable();
            picked.into_iter().map(|i| indices[i]).collect()
        }
        _ => indices,
    }
}
