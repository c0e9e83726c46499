//! The seed's training recipe, with per-epoch checkpoints that resume exactly.

use std::path::Path;

use burn::module::AutodiffModule;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use unlearn_shared::api::{seed_recipe, EpochLog};
use unlearn_shared::model::weights::{self, export};
use unlearn_shared::model::{NormStats, ResNetConfig};

use super::batch::make_batch;
use super::evaluate::evaluate;
use super::optim::{Sgd, SgdConfig};
use super::progress::{Cancelled, PhaseTimer, Progress, Silent};
use super::sample;
use crate::data::Cifar10;
use crate::files::write_atomic;
use crate::models::{ModelFile, ModelFileError, ModelMeta};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch_size: usize,
    pub sgd: SgdConfig,
    /// Seeds initialisation, shuffling and augmentation.
    pub seed: u64,
    pub width: usize,
    /// Train on a seeded random subset of this many images (for quick CPU runs).
    pub train_limit: Option<usize>,
    /// Leave this class out of training: the retrain-from-scratch baseline of unlearning it.
    #[serde(default)]
    pub exclude_class: Option<usize>,
    /// Report test accuracy on a seeded random subset of this many images.
    pub test_limit: Option<usize>,
}

impl Default for TrainConfig {
    /// The seed recipe.
    fn default() -> Self {
        Self {
            epochs: seed_recipe::EPOCHS,
            batch_size: seed_recipe::BATCH_SIZE,
            sgd: SgdConfig { lr: 0.01, momentum: 0.9, dampening: 0.0, nesterov: true, weight_decay: 5e-4 },
            seed: 0,
            width: seed_recipe::WIDTH,
            train_limit: None,
            exclude_class: None,
            test_limit: None,
        }
    }
}

/// Where training stands; saved in every checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    pub config: TrainConfig,
    pub log: Vec<EpochLog>,
}

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    File(#[from] ModelFileError),
    #[error("{0} is not a training checkpoint (it has no training state)")]
    NotACheckpoint(String),
    #[error("checkpoint does not fit the model")]
    Weights(#[from] weights::WeightsError),
    #[error("training stopped by request; the checkpoint holds the last finished epoch")]
    Cancelled,
}

impl From<Cancelled> for TrainError {
    fn from(_: Cancelled) -> Self {
        Self::Cancelled
    }
}

/// Trains from scratch, or from the checkpoint at `out` when `resume` is set, writing the
/// checkpoint after every epoch. Returns the final state.
pub fn train<B: AutodiffBackend>(
    config: TrainConfig,
    data: &Cifar10,
    out: &Path,
    resume: bool,
    device: &B::Device,
    progress: &mut dyn Progress,
) -> Result<TrainState, TrainError> {
    B::seed(device, config.seed);
    let checkpoint = if resume { Some(ModelFile::read(out)?) } else { None };
    // A resumed run keeps the checkpoint's recipe; only the number of epochs can change.
    let mut state = match &checkpoint {
        Some(file) => {
            let saved = file.meta.training.clone().ok_or_else(|| TrainError::NotACheckpoint(out.display().to_string()))?;
            TrainState { config: TrainConfig { epochs: config.epochs, ..saved.config }, log: saved.log }
        }
        None => TrainState { config, log: Vec::new() },
    };
    let config = state.config.clone();
    let mut model = ResNetConfig::new().with_width(config.width).init::<B>(device);
    let mut sgd = Sgd::<B::InnerBackend>::new(config.sgd);
    if let Some(file) = checkpoint {
        model = weights::import(model, file.weights)?;
        sgd.load_state(file.optimizer, device);
    }
    let kept = (0..data.train.len()).filter(|&i| Some(data.train.label(i)) != config.exclude_class).collect();
    let train_indices = sample(kept, config.train_limit, config.seed);
    let test_indices = sample((0..data.test.len()).collect(), config.test_limit, config.seed);
    let loss_fn = CrossEntropyLossConfig::new().init(device);

    for epoch in state.log.len() + 1..=config.epochs {
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        rng.set_stream(epoch as u64);
        let mut order = train_indices.clone();
        order.shuffle(&mut rng);

        let mut timer = PhaseTimer::new(format!("train epoch {epoch}/{}", config.epochs), order.len() as u64);
        let batches = order.len().div_ceil(config.batch_size);
        for (n, chunk) in order.chunks(config.batch_size).enumerate() {
            if progress.cancelled() {
                return Err(Cancelled.into());
            }
            let batch = make_batch::<B>(&data.train, chunk, Some(&mut rng), device);
            let loss = loss_fn.forward(model.forward(batch.images, NormStats::Batch), batch.labels);
            let grads = loss.backward();
            model = sgd.step(model, &grads);
            // Reading the loss waits for the device; do it only as often as the display needs.
            if n % 10 == 0 || n + 1 == batches {
                timer.add_loss(loss.into_scalar().elem::<f64>());
                progress.report(&timer.event(((n + 1) * config.batch_size).min(order.len()) as u64));
            }
        }
        let train_seconds = timer.elapsed_s();

        let inference = model.valid();
        let evaluation = evaluate(&inference, &data.test, &test_indices, device, &mut Silent)?;
        let overall = evaluation.overall();
        state.log.push(EpochLog {
            epoch,
            train_loss: timer.mean_loss().unwrap_or(f64::NAN),
            test_accuracy: overall.accuracy,
            test_loss: overall.loss,
            seconds: timer.elapsed_s(),
            images_per_s: order.len() as f64 / train_seconds,
        });
        ModelFile {
            meta: ModelMeta {
                provenance: format!(
                    "trained by the workbench, seed recipe, {epoch} of {} epochs{}",
                    config.epochs,
                    config.exclude_class.map(|c| format!(", without class {c} ({})", unlearn_shared::cifar::CLASSES[c])).unwrap_or_default()
                ),
                test_accuracy: Some(overall.accuracy),
                training: Some(state.clone()),
            },
            weights: export(&inference),
            optimizer: sgd.state(),
        }
        .write(out)?;
        write_log(out, &state.log)?;
    }
    Ok(state)
}

/// The per-epoch log as JSON lines beside the checkpoint: `<out>.log.jsonl`.
pub fn log_path(out: &Path) -> std::path::PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_owned();
    name.push(".log.jsonl");
    out.with_file_name(name)
}

fn write_log(out: &Path, log: &[EpochLog]) -> Result<(), ModelFileError> {
    let path = log_path(out);
    let lines: String = log.iter().map(|entry| serde_json::to_string(entry).expect("log serialises") + "\n").collect();
    write_atomic(&path, lines.as_bytes()).map_err(|error| ModelFileError::Io { path, error })
}
