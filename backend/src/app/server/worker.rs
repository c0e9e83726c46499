//! The one thread that owns the device: takes runs off the queue, has the executor carry them
//! out, and stores what came of them.

use std::sync::{mpsc, Arc};
use std::time::Instant;

use burn::tensor::backend::AutodiffBackend;
use unlearn_shared::api::{ProgressEvent, RunId, RunRequest, RunResult, RunStatus, Subsample};

use super::catalog::Download;
use super::jobs::{Job, LiveRun, Subsamples, Unrecorded, WorkerInfo};
use super::{AppState, Embedded, RunFiles};
use crate::app::executor::{Executed, Executor, RunError, RunOptions, TrainStart, Workspace};
use crate::engine::device::{Device, Processor, Workload};
use crate::engine::progress::Progress;
use crate::storage::files::write_atomic;
use crate::storage::history::{HistoryError, Outcome};
use crate::storage::model_file::ModelFile;
use crate::storage::retention;

/// The embedded deployment's worker thread.
pub(crate) struct Worker {
    pub(crate) state: Arc<AppState>,
    pub(crate) runs: Arc<Embedded>,
    pub(crate) receiver: mpsc::Receiver<Job>,
}

/// What a CPU worker uses unless told otherwise for runs of the whole model: a request
/// answers in a minute or two, not an hour. Every report records it. Classifier-scope runs
/// read whole sets once their base model's features are cached.
pub(crate) const CPU_SUBSAMPLE: Subsample = Subsample { forget: Some(256), full: Some(1024), test: Some(500) };

/// Reports into the run's live state, and tells the engine when the run was cancelled.
struct RunProgress<'a> {
    live: &'a LiveRun,
}

impl Progress for RunProgress<'_> {
    fn report(&mut self, event: &ProgressEvent) {
        self.live.set_progress(event.clone());
    }

    fn cancelled(&self) -> bool {
        self.live.is_cancelled()
    }
}

impl Workload for Worker {
    type Output = ();

    fn run<B: AutodiffBackend>(self, device: Device<B>) {
        let state = &*self.state;
        let runs = &*self.runs;
        let default = state.config.subsample.unwrap_or(if device.processor == Processor::Cpu { CPU_SUBSAMPLE } else { Subsample::default() });
        let subsamples = Subsamples { default, classifier: state.config.subsample.unwrap_or_default() };
        tracing::info!(device = %device.description, ?subsamples, "worker ready; requests without a subsample use the default");
        runs.jobs.set_worker(WorkerInfo { device: device.description.clone(), subsamples });
        let mut executor = Executor::new(&state.workspace, device);
        let place = RunPlace { files: state.config.run_files(), workspace: &state.workspace, forget_weights: &|id| runs.history.remove_weights(id) };
        for job in self.receiver {
            if !job.live.leave_queue() {
                continue; // Cancelled while queued: the cancel gave its place back and recorded it.
            }
            runs.jobs.release();
            run_job(runs, &place, &mut executor, job);
        }
    }
}

fn run_job<B: AutodiffBackend>(runs: &Embedded, place: &RunPlace<'_>, executor: &mut Executor<B>, job: Job) {
    let started = Instant::now();
    match runs.history.start(job.id) {
        Ok(true) => {}
        Ok(false) => return, // Cancelled between the queue and here; the cancel recorded it.
        Err(error) => tracing::error!(run = job.id, %error, "recording the start failed"),
    }
    job.live.set_status(RunStatus::Running);
    let outcome = carry_out(place, executor, job.id, &job.request, &mut RunProgress { live: &job.live });
    let status = match runs.history.finish(job.id, outcome) {
        Ok(status) => status,
        Err(error) => {
            tracing::error!(run = job.id, %error, "recording the end failed");
            let error = format!("the run ended, but the server could not record how: {error}");
            runs.jobs.remember_unrecorded(job.id, Unrecorded { status: RunStatus::Failed, error });
            RunStatus::Failed
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    tracing::info!(run = job.id, kind = job.request.kind(), status = status.as_str(), seconds, "run ended");
    runs.jobs.finished(job.id, status, Some(seconds));
}

/// What a worker needs besides the device to carry out a run and keep what it made.
pub(crate) struct RunPlace<'a> {
    pub(crate) files: RunFiles,
    pub(crate) workspace: &'a Workspace,
    /// Records that a run's model was deleted to keep within the disk budget.
    pub(crate) forget_weights: &'a dyn Fn(RunId) -> Result<(), HistoryError>,
}

/// Carries out run `id` and keeps what it made; returns the end to record.
pub(crate) fn carry_out<B: AutodiffBackend>(
    place: &RunPlace<'_>,
    executor: &mut Executor<B>,
    id: RunId,
    request: &RunRequest,
    progress: &mut dyn Progress,
) -> Outcome {
    let options = RunOptions { train_out: place.files.run_dir(id).join("model.safetensors"), train_start: TrainStart::Fresh, retrained_dir: None };
    let executed = executor.execute(request, &options, progress);
    let outcome = match executed.and_then(|executed| keep(place, id, request, &options, executed)) {
        Ok((result, weights_etag)) => Outcome { status: RunStatus::Succeeded, result: Some(result), error: None, weights_etag },
        Err(RunError::Cancelled(stopped)) => {
            let error = format!("cancelled by a request while running{stopped}");
            Outcome { status: RunStatus::Cancelled, result: stopped.into_kept(), error: Some(error), weights_etag: None }
        }
        Err(error) => {
            let error = format!("{:#}", anyhow::Error::new(error));
            tracing::warn!(run = id, %error, "run failed");
            Outcome { status: RunStatus::Failed, result: None, error: Some(without_data_dir(&error, &place.files.data_dir)), weights_etag: None }
        }
    };
    // What the run left in its folder (a training checkpoint) was published on success and
    // is of no use otherwise.
    if let Err(error) = std::fs::remove_dir_all(place.files.run_dir(id)).or_else(|e| if e.kind() == std::io::ErrorKind::NotFound { Ok(()) } else { Err(e) }) {
        tracing::warn!(run = id, %error, "could not remove the run's folder");
    }
    outcome
}

/// A failure as clients read it: paths inside the data folder are shown relative to it, so
/// that the answer does not say where the server keeps its files.
fn without_data_dir(error: &str, data_dir: &std::path::Path) -> String {
    let absolute = std::path::absolute(data_dir).ok();
    let canonical = data_dir.canonicalize().ok();
    [canonical, absolute]
        .into_iter()
        .flatten()
        .filter(|dir| dir.parent().is_some())
        .fold(error.to_owned(), |text, dir| text.replace(&format!("{}/", dir.display()), "DATA_DIR/"))
}

/// Keeps what the run made: an unlearned model for the browser, a trained model among the
/// models. Returns the result and the ETag of the run's weights, if it has any.
fn keep(place: &RunPlace<'_>, id: RunId, request: &RunRequest, options: &RunOptions, executed: Executed) -> Result<(RunResult, Option<String>), RunError> {
    if let RunRequest::Train(request) = request {
        place.workspace.models.publish(&request.name, &options.train_out)?;
    }
    let etag = executed.unlearned.map(|model| save_run_weights(place, id, &model)).transpose()?;
    Ok((executed.result, etag))
}

/// The unlearned model in the browser's format, beside the run history; older runs' models
/// are deleted past the disk budget (their records stay).
fn save_run_weights(place: &RunPlace<'_>, id: RunId, model: &ModelFile) -> Result<String, RunError> {
    let download = Download::new(model.browser_weights());
    let path = place.files.run_weights_path(id);
    write_atomic(&path, &download.bytes).map_err(|source| crate::storage::model_file::ModelFileError::Io { path: path.clone(), source })?;
    for file in retention::to_delete_beside(&path, place.files.run_models_budget) {
        let Some(old) = file.path.file_stem().and_then(|s| s.to_str()).and_then(|s| s.parse::<RunId>().ok()) else { continue };
        // The record first: a model it no longer lists is never served half-deleted.
        match (place.forget_weights)(old).map(|()| std::fs::remove_file(&file.path)) {
            Ok(Ok(())) => tracing::info!(run = old, budget_mib = place.files.run_models_budget >> 20, "deleted a run's model to stay within the budget"),
            Ok(Err(error)) => tracing::warn!(run = old, %error, "could not delete a run's model"),
            Err(error) => tracing::warn!(run = old, %error, "could not record the deletion of a run's model"),
        }
    }
    Ok(download.etag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_name_files_relative_to_the_data_folder() {
        let dir = tempfile::tempdir().unwrap();
        let inside = dir.path().join("runs/7/model.safetensors");
        let error = format!("writing {}: No space left on device", inside.display());
        let shown = without_data_dir(&error, dir.path());
        assert_eq!(shown, "writing DATA_DIR/runs/7/model.safetensors: No space left on device");
        assert_eq!(without_data_dir("no path here", dir.path()), "no path here");
    }
}
