//! The work itself, generic over Burn backends: batching, training, SSD and evaluation. It
//! reads the dataset it is given and writes nothing itself: checkpoints go to a callback,
//! cached importances to the cache it is handed.

pub(crate) mod batch;
pub(crate) mod calibrate;
pub(crate) mod device;
pub(crate) mod evaluate;
pub(crate) mod evaluation;
mod flat;
pub(crate) mod membership;
pub(crate) mod optim;
pub(crate) mod progress;
pub(crate) mod scope;
pub(crate) mod ssd;
pub(crate) mod train;
pub(crate) mod unlearn;
#[cfg(all(test, feature = "wgpu"))]
mod wgpu_agreement;

use rand::seq::index;
use rand::SeedableRng;

use crate::storage::dataset::Split;

/// Some images of one split, in the order given.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Images<'a> {
    pub(crate) split: &'a Split,
    pub(crate) indices: &'a [usize],
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
