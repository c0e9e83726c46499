//! What the API does with runs, between the handlers and the queue, history and worker.

use unlearn_shared::api::{Run, RunAccepted, RunId, RunRequest, RunStatus};

use super::error::ApiError;
use super::guard::Caller;
use super::jobs::{BaseFeatures, ClientQuota, Refusal, Unrecorded};
use super::{policy, AppState};
use crate::engine::unlearn::features_cached;
use crate::storage::files::{free_space, sha256_hex};
use crate::storage::history::{Admission, HistoryError};

impl From<HistoryError> for ApiError {
    fn from(error: HistoryError) -> Self {
        ApiError::internal(error)
    }
}

impl AppState {
    /// Validates and queues a run, or answers with an identical one that finished or is
    /// under way.
    pub(crate) fn submit(&self, mut request: RunRequest, caller: &Caller) -> Result<RunAccepted, ApiError> {
        request.validate().map_err(ApiError::Invalid)?;
        let worker = self.jobs.worker().ok_or(ApiError::Starting)?;
        let digest = match request.model() {
            Some(id) => self.workspace.models.get(id).ok_or_else(|| ApiError::UnknownModel(id.to_owned()))?.info.digest.clone(),
            None => String::new(),
        };
        let ceiling = match &request {
            RunRequest::Unlearn(r) | RunRequest::Sweep(r) => {
                let features = if features_cached(&self.workspace.cache, &digest) { BaseFeatures::Cached } else { BaseFeatures::Missing };
                worker.subsample_for(&r.ssd, features)
            }
            RunRequest::Eval(_) | RunRequest::Train(_) => worker.default_subsample,
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
        // An identical run answers even when the queue is full, unless it is one whose end
        // could not be recorded: that one is retired, so the request can run again.
        if let Some((id, status)) = self.history.reusable(&key)? {
            if self.jobs.unrecorded(id).is_none() {
                return Ok(RunAccepted { id, status, reused: true });
            }
            self.history.interrupt(id)?;
        }
        let free = free_space(&self.config.data_dir).map_err(|e| ApiError::internal(format!("{}: {e}", self.config.data_dir.display())))?;
        if free < self.config.min_free_disk {
            return Err(ApiError::DiskFull { free, reserve: self.config.min_free_disk });
        }
        let quota = if caller.authorized { ClientQuota::Unlimited } else { ClientQuota::AtMost(policy::ANONYMOUS_LIVE_RUNS) };
        let reservation = self.jobs.reserve(&caller.client, quota).map_err(|refusal| match refusal {
            Refusal::QueueFull { retry_after } => ApiError::QueueFull { retry_after },
            Refusal::ClientBusy { limit, retry_after } => ApiError::ClientBusy { limit, retry_after },
        })?;
        match self.history.admit(&request, &key, &caller.client)? {
            Admission::Reused(id, status) => Ok(RunAccepted { id, status, reused: true }),
            Admission::Inserted(id) => {
                reservation.enqueue(id, request);
                Ok(RunAccepted { id, status: RunStatus::Queued, reused: false })
            }
        }
    }

    /// The stored run, with its live progress while it is under way.
    pub(crate) fn run(&self, id: RunId) -> Result<Run, ApiError> {
        let mut run = self.history.get(id)?.ok_or(ApiError::UnknownRun(id))?;
        if let Some(unrecorded) = self.jobs.unrecorded(id).filter(|_| !run.status.is_finished()) {
            // The history could not store the end (a full disk, say); memory says it.
            run.status = unrecorded.status;
            run.error = Some(unrecorded.error);
        }
        if let Some(live) = self.jobs.live(id) {
            let state = live.snapshot();
            if !run.status.is_finished() {
                run.status = state.status;
            }
            run.progress = state.progress;
        }
        Ok(run)
    }

    /// Stops a queued or running run. In public mode only its submitter or a token holder
    /// may.
    pub(crate) fn cancel(&self, id: RunId, caller: &Caller) -> Result<Run, ApiError> {
        let owner = self.history.client(id)?.ok_or(ApiError::UnknownRun(id))?;
        if owner != caller.client {
            caller.require("cancelling another client's run")?;
        }
        let Some(live) = self.jobs.cancel(id) else {
            let run = self.run(id)?;
            return Err(ApiError::Conflict(match run.status.is_finished() {
                true => format!("run {id} has already {}", run.status.as_str()),
                false => format!("run {id} is not under way yet; try again in a moment"),
            }));
        };
        // A queued run ends here, and its place and its client's slot are given back at once
        // (the worker skips it); one the worker has started stops at its next check, and the
        // worker records that.
        if live.leave_queue() {
            self.jobs.release();
            let recorded = self.history.cancel_queued(id);
            self.jobs.finished(id, RunStatus::Cancelled, None);
            if let Err(error) = recorded {
                let error = format!("the run was cancelled, but the server could not record it: {error}");
                self.jobs.remember_unrecorded(id, Unrecorded { status: RunStatus::Cancelled, error });
            }
        }
        self.run(id)
    }
}
