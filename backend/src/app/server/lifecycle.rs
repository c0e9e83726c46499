//! What the API does with runs, between the handlers and the queue, history and worker.

use unlearn_shared::api::{Run, RunAccepted, RunId, RunRequest, RunStatus};

use super::error::ApiError;
use super::guard::Caller;
use tokio::sync::watch;

use super::jobs::{retry_after, BaseFeatures, ClientQuota, LiveState, Refusal, Subsamples, Unrecorded};
use super::shared::{Shared, WORKER_ALIVE};
use super::{policy, AppState, Embedded, Runs};
use crate::engine::unlearn::features_cached;
use crate::storage::files::{free_space, sha256_hex};
use crate::storage::history::{Admission, HistoryError, RunWeights};
use crate::storage::shared_history::{CancelAsked, Crowded};

/// Where the news of a run under way comes from.
pub(crate) enum Updates {
    /// This process's worker.
    Watch(watch::Receiver<LiveState>),
    /// The shared database, read every heartbeat.
    Poll,
    /// Nowhere: the run has ended (or ended as this was asked).
    Finished,
}

impl From<HistoryError> for ApiError {
    fn from(error: HistoryError) -> Self {
        match error.is_unreachable() {
            true => ApiError::DatabaseUnavailable(error.to_string()),
            false => ApiError::internal(error),
        }
    }
}

impl AppState {
    /// Validates and queues a run, or answers with an identical one that finished or is
    /// under way.
    pub(crate) fn submit(&self, mut request: RunRequest, caller: &Caller) -> Result<RunAccepted, ApiError> {
        request.validate().map_err(ApiError::Invalid)?;
        let subsamples = self.subsamples()?;
        let digest = match request.model() {
            Some(id) => self.workspace.models.get(id).ok_or_else(|| ApiError::UnknownModel(id.to_owned()))?.info.digest.clone(),
            None => String::new(),
        };
        let ceiling = match &request {
            RunRequest::Unlearn(r) | RunRequest::Sweep(r) => {
                let features = if features_cached(&self.workspace.cache, &digest) { BaseFeatures::Cached } else { BaseFeatures::Missing };
                subsamples.subsample_for(&r.ssd, features)
            }
            RunRequest::Eval(_) | RunRequest::Train(_) => subsamples.default,
        };
        // Defaults are filled in before the key is taken, so "left out" and "given the
        // default" are the same request.
        match &mut request {
            RunRequest::Unlearn(r) | RunRequest::Sweep(r) => {
                r.subsample.get_or_insert(ceiling);
            }
            RunRequest::Eval(r) => {
                r.test_limit = r.test_limit.or(ceiling.test);
            }
            RunRequest::Train(r) => {
                caller.require("training")?;
                if self.workspace.models.is_taken(&r.name) {
                    return Err(ApiError::Conflict(format!("a model named '{}' already exists", r.name)));
                }
            }
        }
        policy::check(&request, caller, ceiling)?;
        let key = sha256_hex(format!("{}\n{digest}", serde_json::to_string(&request).expect("requests serialise")).as_bytes());
        let quota = if caller.authorized { ClientQuota::Unlimited } else { ClientQuota::AtMost(policy::ANONYMOUS_LIVE_RUNS) };
        match &self.runs {
            Runs::Embedded(runs) => self.submit_embedded(runs, request, &key, caller, quota),
            Runs::Shared(shared) => self.submit_shared(shared, request, &key, caller, quota),
        }
    }

    /// What requests without a subsample read.
    pub(crate) fn subsamples(&self) -> Result<Subsamples, ApiError> {
        match &self.runs {
            Runs::Embedded(runs) => Ok(runs.jobs.worker().ok_or(ApiError::Starting)?.subsamples),
            Runs::Shared(shared) => Ok(shared.subsamples),
        }
    }

    fn submit_embedded(&self, runs: &Embedded, request: RunRequest, key: &str, caller: &Caller, quota: ClientQuota) -> Result<RunAccepted, ApiError> {
        // An identical run answers even when the queue is full, unless it is one whose end
        // could not be recorded: that one is retired, so the request can run again.
        if let Some((id, status)) = runs.history.reusable(key)? {
            if runs.jobs.unrecorded(id).is_none() {
                return Ok(RunAccepted { id, status, reused: true });
            }
            runs.history.interrupt(id)?;
        }
        self.check_free_disk()?;
        let reservation = runs.jobs.reserve(&caller.client, quota).map_err(|refusal| match refusal {
            Refusal::QueueFull { retry_after } => ApiError::QueueFull { retry_after },
            Refusal::ClientBusy { limit, retry_after } => ApiError::ClientBusy { limit, retry_after },
        })?;
        match runs.history.admit(&request, key, &caller.client)? {
            Admission::Reused(id, status) => Ok(RunAccepted { id, status, reused: true }),
            Admission::Inserted(id) => {
                reservation.enqueue(id, request);
                Ok(RunAccepted { id, status: RunStatus::Queued, reused: false })
            }
        }
    }

    fn submit_shared(&self, shared: &Shared, request: RunRequest, key: &str, caller: &Caller, quota: ClientQuota) -> Result<RunAccepted, ApiError> {
        if let Some((id, status)) = shared.history.reusable(key)? {
            return Ok(RunAccepted { id, status, reused: true });
        }
        self.check_free_disk()?;
        let limit = match quota {
            ClientQuota::Unlimited => None,
            ClientQuota::AtMost(limit) => Some(limit),
        };
        let wait = |ahead: usize| -> Result<std::time::Duration, ApiError> { Ok(retry_after(ahead, shared.history.mean_run_seconds()?.unwrap_or(10.0))) };
        match shared.history.admit(&request, key, &caller.client, self.config.queue_capacity, limit)? {
            Ok(Admission::Reused(id, status)) => Ok(RunAccepted { id, status, reused: true }),
            Ok(Admission::Inserted(id)) => Ok(RunAccepted { id, status: RunStatus::Queued, reused: false }),
            Err(Crowded::Queue { queued }) => Err(ApiError::QueueFull { retry_after: wait(queued)? }),
            Err(Crowded::Client { live, limit }) => Err(ApiError::ClientBusy { limit, retry_after: wait(live)? }),
        }
    }

    /// New runs are refused while the data folder is short of space.
    fn check_free_disk(&self) -> Result<(), ApiError> {
        let free = free_space(&self.config.data_dir).map_err(|e| ApiError::internal(format!("{}: {e}", self.config.data_dir.display())))?;
        if free < self.config.min_free_disk {
            return Err(ApiError::DiskFull { free, reserve: self.config.min_free_disk });
        }
        Ok(())
    }

    /// The stored run, with its live progress while it is under way.
    pub(crate) fn run(&self, id: RunId) -> Result<Run, ApiError> {
        let runs = match &self.runs {
            Runs::Embedded(runs) => runs,
            Runs::Shared(shared) => return shared.history.get(id)?.ok_or(ApiError::UnknownRun(id)),
        };
        let mut run = runs.history.get(id)?.ok_or(ApiError::UnknownRun(id))?;
        if let Some(unrecorded) = runs.jobs.unrecorded(id).filter(|_| !run.status.is_finished()) {
            // The history could not store the end (a full disk, say); memory says it.
            run.status = unrecorded.status;
            run.error = Some(unrecorded.error);
        }
        if let Some(live) = runs.jobs.live(id) {
            let state = live.snapshot();
            if !run.status.is_finished() {
                run.status = state.status;
            }
            run.progress = state.progress;
        }
        Ok(run)
    }

    /// Newest first, without results, with live statuses.
    pub(crate) fn page(&self, before: Option<RunId>, limit: usize) -> Result<Vec<Run>, ApiError> {
        match &self.runs {
            Runs::Embedded(runs) => {
                let mut page = runs.history.page(before, limit)?;
                for run in &mut page {
                    if let Some(live) = runs.jobs.live(run.id) {
                        run.status = live.status();
                    }
                }
                Ok(page)
            }
            Runs::Shared(shared) => Ok(shared.history.page(before, limit)?),
        }
    }

    /// What became of the model run `id` made.
    pub(crate) fn weights(&self, id: RunId) -> Result<RunWeights, ApiError> {
        Ok(match &self.runs {
            Runs::Embedded(runs) => runs.history.weights(id)?,
            Runs::Shared(shared) => shared.history.weights(id)?,
        })
    }

    /// The devices that carry out runs, once there is one.
    pub(crate) fn devices(&self) -> Result<Option<String>, ApiError> {
        match &self.runs {
            Runs::Embedded(runs) => Ok(runs.jobs.worker().map(|w| w.device.clone())),
            Runs::Shared(shared) => {
                let workers = shared.history.workers(WORKER_ALIVE)?;
                Ok((!workers.is_empty()).then(|| workers.iter().map(|(device, n)| format!("{n} × {device}")).collect::<Vec<_>>().join(", ")))
            }
        }
    }

    /// Where the news of a run under way comes from.
    pub(crate) fn updates(&self, run: &Run) -> Updates {
        if run.status.is_finished() {
            return Updates::Finished;
        }
        match &self.runs {
            Runs::Embedded(runs) => runs.jobs.live(run.id).map_or(Updates::Finished, |live| Updates::Watch(live.subscribe())),
            Runs::Shared(_) => Updates::Poll,
        }
    }

    /// Runs waiting for a worker.
    pub(crate) fn queue_length(&self) -> Result<usize, ApiError> {
        match &self.runs {
            Runs::Embedded(runs) => Ok(runs.jobs.waiting()),
            Runs::Shared(shared) => Ok(shared.history.queued()?),
        }
    }

    /// Stops a queued or running run. In public mode only its submitter or a token holder
    /// may.
    pub(crate) fn cancel(&self, id: RunId, caller: &Caller) -> Result<Run, ApiError> {
        let owner = match &self.runs {
            Runs::Embedded(runs) => runs.history.client(id)?,
            Runs::Shared(shared) => shared.history.client(id)?,
        };
        if owner.ok_or(ApiError::UnknownRun(id))? != caller.client {
            caller.require("cancelling another client's run")?;
        }
        let runs = match &self.runs {
            Runs::Embedded(runs) => runs,
            Runs::Shared(shared) => {
                return match shared.history.cancel(id)? {
                    CancelAsked::Ended | CancelAsked::Signalled => self.run(id),
                    CancelAsked::Finished => Err(ApiError::Conflict(format!("run {id} has already {}", self.run(id)?.status.as_str()))),
                };
            }
        };
        // The worker records a run's end before it lets go of the run's live state, so the
        // record decides: a run recorded as ended is not cancelled again.
        let ended = |run: Run| ApiError::Conflict(format!("run {id} has already {}", run.status.as_str()));
        let run = self.run(id)?;
        if run.status.is_finished() {
            return Err(ended(run));
        }
        let Some(live) = runs.jobs.cancel(id) else {
            let run = self.run(id)?;
            return Err(match run.status.is_finished() {
                true => ended(run),
                false => ApiError::Conflict(format!("run {id} is not under way yet; try again in a moment")),
            });
        };
        // A queued run ends here, and its place and its client's slot are given back at once
        // (the worker skips it); one the worker has started stops at its next check, and the
        // worker records that.
        if live.leave_queue() {
            runs.jobs.release();
            let recorded = runs.history.cancel_queued(id);
            runs.jobs.finished(id, RunStatus::Cancelled, None);
            if let Err(error) = recorded {
                let error = format!("the run was cancelled, but the server could not record it: {error}");
                runs.jobs.remember_unrecorded(id, Unrecorded { status: RunStatus::Cancelled, error });
            }
        }
        self.run(id)
    }
}
