//! Training with a recipe, epoch by epoch; after each epoch the caller gets a checkpoint to
//! keep, from which a later run resumes exactly.

use burn::module::AutodiffModule;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use unlearn_shared::api::{EpochLog, TrainRecipe};
use unlearn_shared::model::weights::{self, export, StateDict};
use unlearn_shared::model::{NormStats, ResNetConfig};

use super::batch::augmented_batch;
use super::evaluate::{evaluate, Kept};
use super::optim::Sgd;
use super::progress::{Cancelled, PhaseTimer, Progress, Step, FORWARD, FORWARD_AND_BACKWARD};
use super::{sample, Images};
use crate::storage::dataset::Cifar10;

/// Where training starts.
pub(crate) enum Start {
    Fresh,
    /// From a checkpoint of the same recipe.
    Resume(Resumed),
}

/// A checkpoint's contents, to continue from.
pub(crate) struct Resumed {
    pub(crate) log: Vec<EpochLog>,
    pub(crate) weights: StateDict,
    pub(crate) momentum: StateDict,
}

/// The state after an epoch, handed to the caller to keep.
pub(crate) struct Checkpoint<'a> {
    /// Every epoch so far, the last one included.
    pub(crate) log: &'a [EpochLog],
    pub(crate) weights: StateDict,
    pub(crate) momentum: StateDict,
}

/// What keeping a checkpoint can fail with, in the caller's words.
pub(crate) type CheckpointError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub(crate) enum TrainError {
    #[error("the checkpoint does not fit the recipe's model")]
    Weights(#[from] weights::WeightsError),
    #[error("keeping the checkpoint")]
    Checkpoint(#[source] CheckpointError),
    #[error(transparent)]
    Cancelled(#[from] Cancelled),
}

/// The sets a recipe trains and tests on: seeded subsets, the excluded class left out.
fn sets(recipe: &TrainRecipe, data: &Cifar10) -> (Vec<usize>, Vec<usize>) {
    let excluded = recipe.exclude_class.map(|c| c.index());
    let kept = (0..data.train.len()).filter(|&i| Some(data.train.label(i)) != excluded).collect();
    (sample(kept, recipe.train_limit, recipe.seed), sample((0..data.test.len()).collect(), recipe.test_limit, recipe.seed))
}

fn epoch_phase(epoch: usize, recipe: &TrainRecipe) -> String {
    format!("train epoch {epoch}/{}", recipe.epochs)
}

fn epoch_test_phase(epoch: usize, recipe: &TrainRecipe) -> String {
    format!("test after epoch {epoch}/{}", recipe.epochs)
}

/// The phases of training with `recipe` from epoch `first`: each epoch, and its test.
pub(crate) fn plan(recipe: &TrainRecipe, data: &Cifar10, first: usize) -> Vec<Step> {
    let (train, test) = sets(recipe, data);
    (first..=recipe.epochs)
        .flat_map(|epoch| {
            [Step::new(epoch_phase(epoch, recipe), train.len(), FORWARD_AND_BACKWARD), Step::new(epoch_test_phase(epoch, recipe), test.len(), FORWARD)]
        })
        .collect()
}

/// Trains a model with `recipe` on `data` from `start` to the recipe's last epoch, handing
/// each epoch's checkpoint to `keep`. Returns the log of every epoch.
pub(crate) fn train<B: AutodiffBackend>(
    recipe: &TrainRecipe,
    data: &Cifar10,
    start: Start,
    device: &B::Device,
    progress: &mut dyn Progress,
    keep: &mut dyn FnMut(Checkpoint) -> Result<(), CheckpointError>,
) -> Result<Vec<EpochLog>, TrainError> {
    B::seed(device, recipe.seed);
    let mut model = ResNetConfig::new().with_width(recipe.width).init::<B>(device);
    let mut sgd = Sgd::<B::InnerBackend>::new(recipe.sgd);
    let mut log = Vec::new();
    if let Start::Resume(resumed) = start {
        model = weights::import(model, resumed.weights)?;
        sgd.load_state(resumed.momentum, device);
        log = resumed.log;
    }
    let (train_indices, test_indices) = sets(recipe, data);
    let loss_fn = CrossEntropyLossConfig::new().init(device);

    for epoch in log.len() + 1..=recipe.epochs {
        let mut rng = ChaCha8Rng::seed_from_u64(recipe.seed);
        rng.set_stream(epoch as u64);
        let mut order = train_indices.clone();
        order.shuffle(&mut rng);

        let mut timer = PhaseTimer::start(epoch_phase(epoch, recipe), order.len() as u64, progress);
        let batches = order.len().div_ceil(recipe.batch_size);
        for (n, chunk) in order.chunks(recipe.batch_size).enumerate() {
            if progress.cancelled() {
                return Err(Cancelled.into());
            }
            let batch = augmented_batch::<B>(&data.train, chunk, &mut rng, device);
            let loss = loss_fn.forward(model.forward(batch.images, NormStats::Batch), batch.labels);
            let grads = loss.backward();
            model = sgd.step(model, &grads);
            // Reading the loss waits for the device; do it only as often as the display needs.
            if n % 10 == 0 || n + 1 == batches {
                timer.add_loss(loss.into_scalar().elem::<f64>());
                progress.report(&timer.event(((n + 1) * recipe.batch_size).min(order.len()) as u64));
            }
        }
        let train_seconds = timer.elapsed_s();

        let inference = model.valid();
        let evaluation =
            evaluate(&inference, Images { split: &data.test, indices: &test_indices }, Kept::Logits, &epoch_test_phase(epoch, recipe), device, progress)?;
        let overall = evaluation.overall();
        log.push(EpochLog {
            epoch,
            train_loss: timer.mean_loss().unwrap_or(f64::NAN),
            test_accuracy: overall.accuracy,
            test_loss: overall.loss,
            seconds: timer.elapsed_s(),
            images_per_s: order.len() as f64 / train_seconds,
        });
        keep(Checkpoint { log: &log, weights: export(&inference), momentum: sgd.state() }).map_err(TrainError::Checkpoint)?;
    }
    Ok(log)
}
