//! The work itself, generic over Burn backends: batching, training, SSD and evaluation.

pub mod batch;
pub mod calibrate;
pub mod evaluate;
mod flat;
pub mod optim;
pub mod progress;
pub mod ssd;
pub mod train;
pub mod unlearn;

use rand::seq::index;
use rand::SeedableRng;

/// A seeded random subset of at most `limit` of `indices`, kept in their original order.
pub fn sample(indices: Vec<usize>, limit: Option<usize>, seed: u64) -> Vec<usize> {
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
