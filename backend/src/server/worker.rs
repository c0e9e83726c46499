//! The one thread that owns the device: takes runs off the queue, runs them on the engine,
//! stores what came of them.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{mpsc, Arc};
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use unlearn_shared::api::{
    EvalSummary, ProgressEvent, RunRequest, RunResult, RunStatus, Subsample, TrainRequest, TrainSummary, UnlearnRequest,
};
use unlearn_shared::cifar::NUM_CLASSES;
use unlearn_shared::model::weights::{self, export, Metadata, Precision};

use super::catalog::Download;
use super::jobs::{Job, LiveRun, WorkerInfo};
use super::store::Outcome;
use super::AppState;
use crate::device::Workload;
use crate::engine::evaluate::evaluate;
use crate::engine::progress::{Cancelled, Progress};
use crate::engine::sample;
use crate::engine::train::{self, TrainConfig, TrainError};
use crate::engine::unlearn::{UnlearnError, Unlearner};
use crate::files::write_atomic;
use crate::models::ModelFile;

/// Unlearners kept ready (each holds a model and its importances on the device).
const KEEP_UNLEARNERS: usize = 2;

pub struct Worker {
    pub state: Arc<AppState>,
    pub receiver: mpsc::Receiver<Job>,
    /// What requests that leave out their subsample get; `None` picks by device.
    pub subsample: Option<Subsample>,
}

/// What a CPU worker uses unless told otherwise: a request answers in a minute or two,
/// not an hour. Every report records it.
pub const CPU_SUBSAMPLE: Subsample = Subsample { forget: Some(256), full: Some(1024), test: Some(500) };

enum Failure {
    Cancelled,
    Failed(String),
}

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(error: E) -> Self {
        Self::Failed(error.to_string())
    }
}

fn from_unlearn(error: UnlearnError) -> Failure {
    match error {
        UnlearnError::Cancelled(_) => Failure::Cancelled,
        other => Failure::Failed(other.to_string()),
    }
}

/// Reports into the run's live state, and tells the engine when the run was cancelled.
struct RunProgress<'a> {
    live: &'a LiveRun,
    /// Names the class within a sweep.
    prefix: String,
}

impl Progress for RunProgress<'_> {
    fn report(&mut self, event: &ProgressEvent) {
        let mut event = event.clone();
        event.phase.insert_str(0, &self.prefix);
        self.live.set_progress(event);
    }

    fn cancelled(&self) -> bool {
        self.live.is_cancelled()
    }
}

impl Workload for Worker {
    type Output = ();

    fn run<B: AutodiffBackend>(self, device: B::Device, device_name: &str) {
        let default_subsample = self.subsample.unwrap_or(if device_name == "cpu" { CPU_SUBSAMPLE } else { Subsample::default() });
        eprintln!("worker on {device_name}; requests without a subsample use {default_subsample:?}");
        self.state.jobs.set_worker(WorkerInfo { device: device_name.to_owned(), default_subsample });
        let mut executor = Executor::<B> { state: &self.state, device, device_name, unlearners: HashMap::new() };
        for job in self.receiver {
            self.state.jobs.release();
            if job.live.is_cancelled() {
                continue; // Cancelled while queued; the cancelling request stored that.
            }
            executor.run(job);
        }
    }
}

struct Executor<'a, B: AutodiffBackend> {
    state: &'a AppState,
    device: B::Device,
    device_name: &'a str,
    unlearners: HashMap<(String, Subsample), Unlearner<'a, B>>,
}

impl<'a, B: AutodiffBackend> Executor<'a, B> {
    fn run(&mut self, job: Job) {
        let started = Instant::now();
        if let Err(error) = self.state.store.start(job.id) {
            eprintln!("run {}: {error}", job.id);
        }
        job.live.set_status(RunStatus::Running);
        // A panic in the engine fails this run, not the server.
        let result = catch_unwind(AssertUnwindSafe(|| self.execute(&job)))
            .unwrap_or_else(|panic| Err(Failure::Failed(format!("the engine panicked: {}", panic_message(&panic)))));
        let outcome = match result {
            Ok((result, weights_etag)) => Outcome { status: RunStatus::Succeeded, result: Some(result), error: None, weights_etag },
            Err(Failure::Cancelled) => Outcome { status: RunStatus::Cancelled, result: None, error: None, weights_etag: None },
            Err(Failure::Failed(error)) => Outcome { status: RunStatus::Failed, result: None, error: Some(error), weights_etag: None },
        };
        if let Err(error) = self.state.store.finish(job.id, &outcome) {
            eprintln!("run {}: {error}", job.id);
        }
        let seconds = (outcome.status == RunStatus::Succeeded).then(|| started.elapsed().as_secs_f64());
        self.state.jobs.finished(job.id, outcome.status, seconds);
    }

    fn execute(&mut self, job: &Job) -> Result<(RunResult, Option<String>), Failure> {
        let mut progress = RunProgress { live: &job.live, prefix: String::new() };
        match &job.request {
            RunRequest::Unlearn(request) => {
                let class = request.class.expect("validated on submission").index();
                let unlearner = self.unlearner(request)?;
                let (report, model) = unlearner.forget(class, &request.settings(), &mut progress).map_err(from_unlearn)?;
                let etag = self.save_run_weights(job.id, &export(&model))?;
                Ok((RunResult::Unlearn(Box::new(report)), Some(etag)))
            }
            RunRequest::Sweep(request) => {
                let settings = request.settings();
                let unlearner = self.unlearner(request)?;
                let mut reports = Vec::with_capacity(NUM_CLASSES);
                for class in 0..NUM_CLASSES {
                    progress.prefix = format!("class {}/{NUM_CLASSES}: ", class + 1);
                    reports.push(unlearner.forget(class, &settings, &mut progress).map_err(from_unlearn)?.0);
                }
                Ok((RunResult::Sweep { reports }, None))
            }
            RunRequest::Eval(request) => {
                let file = self.model_file(&request.model)?;
                let model = weights::model_from_state_dict::<B>(file.weights, &self.device)?.valid();
                let test = &self.state.data.test;
                let indices = sample((0..test.len()).collect(), request.test_limit, 0);
                let evaluation = evaluate(&model, test, &indices, &self.device, &mut progress).map_err(|Cancelled| Failure::Cancelled)?;
                let summary = EvalSummary {
                    model: request.model.clone(),
                    device: self.device_name.to_owned(),
                    overall: evaluation.overall(),
                    per_class_accuracy: evaluation.per_class_accuracy(),
                    confusion: evaluation.confusion,
                };
                Ok((RunResult::Eval(summary), None))
            }
            RunRequest::Train(request) => self.train(request, &mut progress).map(|summary| (RunResult::Train(summary), None)),
        }
    }

    fn model_file(&self, id: &str) -> Result<ModelFile, Failure> {
        let entry = self.state.catalog.get(id).ok_or_else(|| Failure::Failed(format!("model '{id}' is gone")))?;
        Ok(ModelFile::read(&entry.path)?)
    }

    /// The unlearner for the request's model and subsample, kept between runs.
    fn unlearner(&mut self, request: &UnlearnRequest) -> Result<&mut Unlearner<'a, B>, Failure> {
        let subsample = request.subsample.expect("resolved on submission");
        let key = (request.model.clone(), subsample);
        let digest_matches = |unlearner: &Unlearner<'a, B>| self.state.catalog.get(&request.model).is_some_and(|e| e.info.digest == unlearner.digest());
        if self.unlearners.get(&key).is_some_and(|u| !digest_matches(u)) {
            self.unlearners.remove(&key);
        }
        if !self.unlearners.contains_key(&key) {
            if self.unlearners.len() >= KEEP_UNLEARNERS {
                self.unlearners.clear();
            }
            let file = self.model_file(&request.model)?;
            let state: &'a AppState = self.state;
            let unlearner = Unlearner::new(&file, &request.model, &state.data, subsample, &state.config.cache_dir(), self.device.clone(), self.device_name)?;
            self.unlearners.insert(key.clone(), unlearner);
        }
        Ok(self.unlearners.get_mut(&key).expect("just inserted"))
    }

    /// The unlearned model in the browser's format, beside the run history.
    fn save_run_weights(&self, id: i64, weights: &weights::StateDict) -> Result<String, Failure> {
        let download = Download::new(weights::encode(weights, Metadata::new(), Precision::F16));
        let path = self.state.config.run_weights_path(id);
        std::fs::create_dir_all(path.parent().expect("runs folder"))?;
        write_atomic(&path, &download.bytes)?;
        Ok(download.etag)
    }

    fn train(&mut self, request: &TrainRequest, progress: &mut RunProgress<'_>) -> Result<TrainSummary, Failure> {
        let out = self.state.catalog.path_for(&request.name);
        if out.exists() {
            return Err(Failure::Failed(format!("a model named '{}' already exists", request.name)));
        }
        let config = TrainConfig {
            epochs: request.epochs,
            batch_size: request.batch_size,
            seed: request.seed,
            width: request.width,
            train_limit: request.train_limit,
            exclude_class: request.exclude_class.map(|c| c.index()),
            test_limit: request.test_limit,
            ..TrainConfig::default()
        };
        let state = train::train::<B>(config, &self.state.data, &out, false, &self.device, progress).map_err(|error| match error {
            TrainError::Cancelled => Failure::Cancelled,
            other => Failure::Failed(other.to_string()),
        })?;
        self.state.catalog.refresh(&request.name).map_err(Failure::Failed)?;
        Ok(TrainSummary { model: request.name.clone(), device: self.device_name.to_owned(), epochs: state.log })
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic.downcast_ref::<String>().cloned().or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_else(|| "no message".into())
}
