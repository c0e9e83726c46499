//! Accuracy, loss and confusion of a model on a set of images.

use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use unlearn_shared::metrics::Evaluation;
use unlearn_shared::model::{NormStats, ResNet};

use super::batch::make_batch;
use super::progress::{Cancelled, PhaseTimer, Progress};
use crate::data::Split;

/// Images per forward pass when evaluating.
pub const EVAL_BATCH: usize = 500;

/// Runs the model in inference mode over `indices` of `split`.
pub fn evaluate<B: Backend>(
    model: &ResNet<B>,
    split: &Split,
    indices: &[usize],
    device: &B::Device,
    progress: &mut dyn Progress,
) -> Result<Evaluation, Cancelled> {
    let mut evaluation = Evaluation::default();
    let timer = PhaseTimer::new("evaluate", indices.len() as u64);
    for (n, chunk) in indices.chunks(EVAL_BATCH).enumerate() {
        if progress.cancelled() {
            return Err(Cancelled);
        }
        let batch = make_batch::<B>(split, chunk, None::<&mut rand_chacha::ChaCha8Rng>, device);
        let log_probs = log_softmax(model.forward(batch.images, NormStats::Running), 1);
        let predicted = log_probs.clone().argmax(1).into_data().convert::<i64>().to_vec::<i64>().expect("int data");
        let entropy = (log_probs.clone().exp() * log_probs.clone()).sum_dim(1).neg().into_data().convert::<f32>().to_vec::<f32>().expect("float data");
        let nll = log_probs
            .gather(1, batch.labels.unsqueeze_dim(1))
            .neg()
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .expect("float data");
        for (((&index, predicted), loss), entropy) in chunk.iter().zip(predicted).zip(nll).zip(entropy) {
            evaluation.record(split.label(index), predicted as usize, loss as f64, entropy as f64);
        }
        let done = (n * EVAL_BATCH + chunk.len()) as u64;
        progress.report(&timer.event(done));
    }
    Ok(evaluation)
}
