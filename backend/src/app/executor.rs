//! The one way each kind of run is carried out, for the command line and the server alike:
//! a `RunRequest` in, a `RunResult` out.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::Arc;

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use unlearn_shared::api::{
    ClassId, EvalRequest, EvalSummary, ProgressEvent, RunRequest, RunResult, TrainRecipe, TrainRequest, TrainSummary, UnlearnReport, UnlearnRequest,
};
use unlearn_shared::cifar::NUM_CLASSES;
use unlearn_shared::model::weights::{self, export, WeightsError};

use super::heap;
use crate::engine::device::Device;
use crate::engine::evaluate::{evaluate, Kept};
use crate::engine::progress::{Cancelled, Planned, Progress, Step, FORWARD};
use crate::engine::train::{self, Checkpoint, CheckpointError, Resumed, Start, TrainError};
use crate::engine::unlearn::{BaseModel, UnlearnError, Unlearner};
use crate::engine::{sample, Images};
use crate::storage::dataset::Cifar10;
use crate::storage::model_file::{write_training_log, Layout, ModelFile, ModelFileError, ModelMeta, TrainingRecord};
use crate::storage::model_store::{ModelStore, ModelStoreError};
use crate::storage::tensor_cache::TensorCache;

/// Unlearners kept ready between runs (each holds a model and its importances on the device).
const KEEP_UNLEARNERS: usize = 2;
/// Seed of the test subset an evaluation draws.
const EVAL_SEED: u64 = 0;
/// The one phase of an evaluation run.
const EVAL_PHASE: &str = "evaluate: test set";

/// What runs read and keep: the dataset, the models, and the cache of derived results.
pub(crate) struct Workspace {
    pub(crate) data: Arc<Cifar10>,
    pub(crate) models: ModelStore,
    pub(crate) cache: TensorCache,
}

/// Options that are not part of a request: where its outputs go, and what to compare with.
pub(crate) struct RunOptions {
    /// Where training writes its checkpoint after every epoch, and finally its model.
    pub(crate) train_out: PathBuf,
    pub(crate) train_start: TrainStart,
    /// Models trained without a class, as `without-<class>.safetensors`, that unlearning is
    /// compared with.
    pub(crate) retrained_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TrainStart {
    Fresh,
    /// From the checkpoint at `train_out`, with its recipe; only the number of epochs can change.
    Resume,
}

/// What a run produced.
pub(crate) struct Executed {
    pub(crate) result: RunResult,
    /// The unlearned model of an `unlearn` run.
    pub(crate) unlearned: Option<ModelFile>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum RunError {
    /// Through `Progress::cancelled`: Ctrl-C on the command line, DELETE on the server.
    #[error("stopped by request{0} (a training run keeps its last checkpoint)")]
    Cancelled(Stopped),
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error(transparent)]
    Model(#[from] ModelStoreError),
    #[error(transparent)]
    File(#[from] ModelFileError),
    #[error("model '{model}' does not load")]
    Weights { model: String, source: WeightsError },
    #[error("{0} is not a training checkpoint (it has no training record)")]
    NotACheckpoint(PathBuf),
    #[error("training failed")]
    Train(#[source] TrainError),
    #[error("unlearning failed")]
    Unlearn(#[source] UnlearnError),
    #[error("the engine panicked: {0}")]
    Panic(String),
}

/// How far a cancelled run had come, and what of it is worth keeping.
#[derive(Debug)]
pub(crate) enum Stopped {
    /// A run that keeps nothing of its work (a training run's checkpoint aside).
    Midway,
    /// A sweep keeps the reports of the classes it finished.
    Sweep { reports: Vec<UnlearnReport> },
}

impl Stopped {
    /// What the run finished, as a result to record: a sweep's finished classes, if any.
    pub(crate) fn into_kept(self) -> Option<RunResult> {
        match self {
            Self::Sweep { reports } if !reports.is_empty() => Some(RunResult::Sweep { reports }),
            Self::Midway | Self::Sweep { .. } => None,
        }
    }
}

/// How far it came, to follow "stopped" or "cancelled": nothing, or ", after 3 of 10 classes".
impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Midway => Ok(()),
            Self::Sweep { reports } => write!(f, ", after {} of {NUM_CLASSES} classes", reports.len()),
        }
    }
}

impl From<Cancelled> for RunError {
    fn from(_: Cancelled) -> Self {
        Self::Cancelled(Stopped::Midway)
    }
}

impl From<TrainError> for RunError {
    fn from(error: TrainError) -> Self {
        match error {
            TrainError::Cancelled(_) => Self::Cancelled(Stopped::Midway),
            other => Self::Train(other),
        }
    }
}

impl From<UnlearnError> for RunError {
    fn from(error: UnlearnError) -> Self {
        match error {
            UnlearnError::Cancelled(_) => Self::Cancelled(Stopped::Midway),
            other => Self::Unlearn(other),
        }
    }
}

/// Runs requests on one device, keeping what later runs of the same model can reuse.
pub(crate) struct Executor<'w, B: AutodiffBackend> {
    workspace: &'w Workspace,
    device: Device<B>,
    /// Most recently used last.
    unlearners: Vec<(UnlearnerKey, Unlearner<'w, B>)>,
}

#[derive(PartialEq)]
struct UnlearnerKey {
    model: String,
    digest: String,
    subsample: unlearn_shared::api::Subsample,
}

impl<'w, B: AutodiffBackend> Executor<'w, B> {
    pub(crate) fn new(workspace: &'w Workspace, device: Device<B>) -> Self {
        Self { workspace, device, unlearners: Vec::new() }
    }

    /// Carries out `request`. A panic in the engine fails the run, not the caller.
    pub(crate) fn execute(&mut self, request: &RunRequest, options: &RunOptions, progress: &mut dyn Progress) -> Result<Executed, RunError> {
        request.validate().map_err(RunError::Invalid)?;
        let executed = catch_unwind(AssertUnwindSafe(|| match request {
            RunRequest::Unlearn(request) => self.unlearn(request, options, progress),
            RunRequest::Sweep(request) => self.sweep(request, options, progress),
            RunRequest::Eval(request) => self.eval(request, progress),
            RunRequest::Train(request) => self.train(request, options, progress),
        }))
        .unwrap_or_else(|panic| Err(RunError::Panic(panic_message(&panic))));
        // The run's activations are freed by now.
        heap::release_free_memory();
        executed
    }

    fn unlearn(&mut self, request: &UnlearnRequest, options: &RunOptions, progress: &mut dyn Progress) -> Result<Executed, RunError> {
        let class = request.class.expect("validated: an unlearn run has a class");
        let unlearner = self.unlearner(request)?;
        add_retrained(unlearner, class, options)?;
        let mut progress = Planned::new(unlearner.plan(&[class], &request.ssd, |_, phase| phase.to_owned()), progress);
        let (report, model) = unlearner.forget(class, &request.ssd, &mut progress)?;
        let meta = ModelMeta {
            provenance: format!("{} with class {class} forgotten by SSD {:?}", request.model, request.ssd),
            test_accuracy: Some(report.after.test.overall.accuracy),
            training: None,
        };
        let unlearned = ModelFile { meta, weights: export(&model), optimizer: Default::default() };
        Ok(Executed { result: RunResult::Unlearn(Box::new(report)), unlearned: Some(unlearned) })
    }

    fn sweep(&mut self, request: &UnlearnRequest, options: &RunOptions, progress: &mut dyn Progress) -> Result<Executed, RunError> {
        let unlearner = self.unlearner(request)?;
        let classes: Vec<ClassId> = ClassId::all().collect();
        // Models retrained without a class are added as their class comes, so the plan
        // leaves their evaluation out.
        let mut planned = Planned::new(unlearner.plan(&classes, &request.ssd, |class, phase| format!("{}{phase}", sweep_prefix(class))), progress);
        let mut reports = Vec::new();
        for class in classes {
            add_retrained(unlearner, class, options)?;
            let mut progress = Prefixed { inner: &mut planned, prefix: sweep_prefix(class) };
            match unlearner.forget(class, &request.ssd, &mut progress) {
                Ok((report, _)) => reports.push(report),
                // The classes already forgotten are worth showing.
                Err(UnlearnError::Cancelled(_)) => return Err(RunError::Cancelled(Stopped::Sweep { reports })),
                Err(other) => return Err(other.into()),
            }
        }
        Ok(Executed { result: RunResult::Sweep { reports }, unlearned: None })
    }

    fn eval(&mut self, request: &EvalRequest, progress: &mut dyn Progress) -> Result<Executed, RunError> {
        let file = self.workspace.models.read(&request.model)?;
        let model = weights::model_from_state_dict::<B>(file.weights, &self.device.handle)
            .map_err(|source| RunError::Weights { model: request.model.clone(), source })?
            .valid();
        let test = &self.workspace.data.test;
        let indices = sample((0..test.len()).collect(), request.test_limit, EVAL_SEED);
        let mut progress = Planned::new(vec![Step::new(EVAL_PHASE, indices.len(), FORWARD)], progress);
        let evaluation = evaluate(&model, Images { split: test, indices: &indices }, Kept::Logits, EVAL_PHASE, &self.device.handle, &mut progress)?;
        let summary = EvalSummary {
            model: request.model.clone(),
            device: self.device.description.clone(),
            overall: evaluation.overall(),
            per_class_accuracy: evaluation.per_class_accuracy(),
            confusion: evaluation.confusion,
        };
        Ok(Executed { result: RunResult::Eval(summary), unlearned: None })
    }

    fn train(&mut self, request: &TrainRequest, options: &RunOptions, progress: &mut dyn Progress) -> Result<Executed, RunError> {
        let out = &options.train_out;
        let (recipe, start, first_epoch) = match options.train_start {
            TrainStart::Fresh => (request.recipe.clone(), Start::Fresh, 1),
            TrainStart::Resume => {
                let file = ModelFile::read(out)?;
                let record = file.meta.training.ok_or_else(|| RunError::NotACheckpoint(out.clone()))?;
                let recipe = TrainRecipe { epochs: request.recipe.epochs, ..record.recipe };
                let first_epoch = record.log.len() + 1;
                (recipe, Start::Resume(Resumed { log: record.log, weights: file.weights, momentum: file.optimizer }), first_epoch)
            }
        };
        let without = recipe.exclude_class.map(|c| format!(", without class {c}")).unwrap_or_default();
        let mut keep = |checkpoint: Checkpoint| -> Result<(), CheckpointError> {
            let last = checkpoint.log.last().expect("a checkpoint follows an epoch");
            let meta = ModelMeta {
                provenance: format!("trained by the workbench as '{}', {} of {} epochs{without}", request.name, last.epoch, recipe.epochs),
                test_accuracy: Some(last.test_accuracy),
                training: Some(TrainingRecord { recipe: recipe.clone(), log: checkpoint.log.to_vec() }),
            };
            ModelFile { meta, weights: checkpoint.weights, optimizer: checkpoint.momentum }.write(out, Layout::File)?;
            write_training_log(out, checkpoint.log)?;
            Ok(())
        };
        let mut progress = Planned::new(train::plan(&recipe, &self.workspace.data, first_epoch), progress);
        let log = train::train::<B>(&recipe, &self.workspace.data, start, &self.device.handle, &mut progress, &mut keep)?;
        let summary = TrainSummary { model: request.name.clone(), device: self.device.description.clone(), epochs: log };
        Ok(Executed { result: RunResult::Train(summary), unlearned: None })
    }

    /// The unlearner for the request's model and subsample, kept between runs.
    fn unlearner(&mut self, request: &UnlearnRequest) -> Result<&mut Unlearner<'w, B>, RunError> {
        let stored = self.workspace.models.get(&request.model).ok_or_else(|| ModelStoreError::Unknown(request.model.clone()))?;
        let key = UnlearnerKey { model: request.model.clone(), digest: stored.info.digest.clone(), subsample: request.subsample.unwrap_or_default() };
        let at = match self.unlearners.iter().position(|(k, _)| *k == key) {
            Some(at) => at,
            None => {
                if self.unlearners.len() >= KEEP_UNLEARNERS {
                    self.unlearners.remove(0);
                }
                let file = ModelFile::read(&stored.path)?;
                let base = BaseModel { name: request.model.clone(), digest: key.digest.clone(), weights: file.weights };
                let workspace = self.workspace;
                let unlearner = Unlearner::new(base, &workspace.data, key.subsample, &workspace.cache, self.device.clone())
                    .map_err(|source| RunError::Weights { model: request.model.clone(), source })?;
                self.unlearners.push((key, unlearner));
                self.unlearners.len() - 1
            }
        };
        let entry = self.unlearners.remove(at);
        self.unlearners.push(entry);
        Ok(&mut self.unlearners.last_mut().expect("just pushed").1)
    }
}

/// Lets `unlearner` compare forgetting `class` with a model trained without it, where the
/// options name a folder that has one.
fn add_retrained<B: AutodiffBackend>(unlearner: &mut Unlearner<B>, class: ClassId, options: &RunOptions) -> Result<(), RunError> {
    let Some(dir) = &options.retrained_dir else { return Ok(()) };
    let path = dir.join(format!("without-{}.safetensors", class.name()));
    if !path.exists() {
        return Ok(());
    }
    let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let file = ModelFile::read(&path)?;
    unlearner.add_retrained(class, name.clone(), file.weights).map_err(|source| RunError::Weights { model: name, source })
}

/// What a sweep's phases for `class` start with.
fn sweep_prefix(class: ClassId) -> String {
    format!("class {}/{NUM_CLASSES}: ", class.index() + 1)
}

/// Names the class within a sweep in every phase it reports.
struct Prefixed<'a> {
    inner: &'a mut dyn Progress,
    prefix: String,
}

impl Progress for Prefixed<'_> {
    fn report(&mut self, event: &ProgressEvent) {
        let mut event = event.clone();
        event.phase.insert_str(0, &self.prefix);
        self.inner.report(&event);
    }

    fn cancelled(&self) -> bool {
        self.inner.cancelled()
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic.downcast_ref::<String>().cloned().or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_else(|| "no message".into())
}
