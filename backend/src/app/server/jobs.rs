//! The queue in front of the one worker that owns the device, and what is known about runs
//! while they are queued or running.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::watch;
use unlearn_shared::api::{ProgressEvent, RunId, RunRequest, RunStatus, Subsample};

/// What the worker settled on when it started.
#[derive(Debug, Clone)]
pub(crate) struct WorkerInfo {
    pub(crate) device: String,
    /// Applied to requests that leave `subsample` (or `test_limit`) out.
    pub(crate) default_subsample: Subsample,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LiveState {
    pub(crate) status: RunStatus,
    pub(crate) progress: Option<ProgressEvent>,
}

/// A run between submission and its end: its latest state, for event streams, and its
/// cancellation flag, for the engine.
pub(crate) struct LiveRun {
    cancel: AtomicBool,
    state: watch::Sender<LiveState>,
}

impl LiveRun {
    fn new() -> Self {
        Self { cancel: AtomicBool::new(false), state: watch::Sender::new(LiveState { status: RunStatus::Queued, progress: None }) }
    }

    pub(crate) fn is_cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<LiveState> {
        self.state.subscribe()
    }

    pub(crate) fn status(&self) -> RunStatus {
        self.state.borrow().status
    }

    pub(crate) fn snapshot(&self) -> LiveState {
        self.state.borrow().clone()
    }

    pub(crate) fn set_status(&self, status: RunStatus) {
        self.state.send_modify(|state| state.status = status);
    }

    pub(crate) fn set_progress(&self, event: ProgressEvent) {
        self.state.send_modify(|state| state.progress = Some(event));
    }
}

pub(crate) struct Job {
    pub(crate) id: RunId,
    pub(crate) request: RunRequest,
    pub(crate) live: Arc<LiveRun>,
}

pub(crate) struct Jobs {
    sender: mpsc::Sender<Job>,
    capacity: usize,
    waiting: AtomicUsize,
    live: Mutex<HashMap<RunId, Arc<LiveRun>>>,
    worker: OnceLock<WorkerInfo>,
    /// Seconds the last finished run took: what a full queue's Retry-After is based on.
    last_run_s: Mutex<f64>,
}

/// The queue holds `capacity` runs already.
pub(crate) struct QueueFull {
    pub(crate) retry_after: Duration,
}

impl Jobs {
    /// The queue, and the receiving end for the worker.
    pub(crate) fn new(capacity: usize) -> (Self, mpsc::Receiver<Job>) {
        let (sender, receiver) = mpsc::channel();
        let jobs = Self { sender, capacity, waiting: AtomicUsize::new(0), live: Mutex::default(), worker: OnceLock::new(), last_run_s: Mutex::new(10.0) };
        (jobs, receiver)
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    pub(crate) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    pub(crate) fn worker(&self) -> Option<&WorkerInfo> {
        self.worker.get()
    }

    pub(crate) fn set_worker(&self, info: WorkerInfo) {
        let _ = self.worker.set(info);
    }

    /// Takes a place in the queue, or says when one may be free.
    pub(crate) fn reserve(&self) -> Result<(), QueueFull> {
        self.waiting.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < self.capacity).then_some(n + 1)).map(drop).map_err(|waiting| {
            let per_run = *self.last_run_s.lock().expect("timing lock");
            QueueFull { retry_after: Duration::from_secs_f64((waiting as f64 * per_run).clamp(1.0, 3600.0)) }
        })
    }

    /// Gives back a place taken by [`reserve`](Self::reserve): the worker took the run off
    /// the queue, or it was never enqueued.
    pub(crate) fn release(&self) {
        self.waiting.fetch_sub(1, Ordering::SeqCst);
    }

    /// Hands a run, whose place is reserved, to the worker.
    pub(crate) fn enqueue(&self, id: RunId, request: RunRequest) {
        let live = Arc::new(LiveRun::new());
        self.live.lock().expect("live lock").insert(id, live.clone());
        // The worker holds the receiver for as long as the server runs.
        let _ = self.sender.send(Job { id, request, live });
    }

    pub(crate) fn live(&self, id: RunId) -> Option<Arc<LiveRun>> {
        self.live.lock().expect("live lock").get(&id).cloned()
    }

    /// Asks a run to stop; the worker (or, for a queued run, the caller) records the end.
    pub(crate) fn cancel(&self, id: RunId) -> Option<Arc<LiveRun>> {
        let live = self.live(id)?;
        live.cancel.store(true, Ordering::Relaxed);
        Some(live)
    }

    /// The run's end is stored: announce it and forget the live state.
    pub(crate) fn finished(&self, id: RunId, status: RunStatus, seconds: Option<f64>) {
        if let Some(live) = self.live.lock().expect("live lock").remove(&id) {
            live.set_status(status);
        }
        if let Some(seconds) = seconds {
            *self.last_run_s.lock().expect("timing lock") = seconds;
        }
    }
}
