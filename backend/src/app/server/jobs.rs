//! The queue in front of the one worker that owns the device, and what is known about runs
//! while they are queued or running.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::watch;
use unlearn_shared::api::{Layers, ProgressEvent, RunId, RunRequest, RunStatus, SsdSettings, Subsample};

/// What the worker settled on when it started.
#[derive(Debug, Clone)]
pub(crate) struct WorkerInfo {
    pub(crate) device: String,
    pub(crate) subsamples: Subsamples,
}

/// What requests that leave `subsample` (or `test_limit`) out read.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Subsamples {
    /// For runs of the whole model on every image: evaluations, and unlearning past the
    /// classifier.
    pub(crate) default: Subsample,
    /// For classifier-scope runs: they read the base model's cached features, so whole sets
    /// take seconds once those are computed.
    pub(crate) classifier: Subsample,
}

/// Whether the base model's penultimate features are on disk: a classifier-scope run on whole
/// sets takes seconds then, and before, a pass of the whole model over 60,000 images (about
/// 14 minutes on a 2-core CPU).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BaseFeatures {
    Cached,
    Missing,
}

impl Subsamples {
    /// What an unlearning request with `ssd` on a base model with `features` reads when it
    /// leaves `subsample` out; in public mode, also the most it may ask for without the token.
    pub(crate) fn subsample_for(&self, ssd: &SsdSettings, features: BaseFeatures) -> Subsample {
        match (ssd.layers, features) {
            (Layers::Classifier, BaseFeatures::Cached) => self.classifier,
            (Layers::Classifier, BaseFeatures::Missing) | (Layers::LastStage | Layers::All, _) => self.default,
        }
    }
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
    /// Holds its place in the queue; whoever takes it (the worker starting the run, or a
    /// cancel ending it while queued) gives the place back.
    queued: AtomicBool,
    state: watch::Sender<LiveState>,
    /// Who submitted it, when it counts towards their quota.
    client: Option<String>,
}

impl LiveRun {
    fn new(client: Option<String>) -> Self {
        Self {
            cancel: AtomicBool::new(false),
            queued: AtomicBool::new(true),
            state: watch::Sender::new(LiveState { status: RunStatus::Queued, progress: None }),
            client,
        }
    }

    pub(crate) fn is_cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    /// Takes the run out of the queue; false if someone else already did. Exactly one of
    /// the worker and a cancel gets true.
    pub(crate) fn leave_queue(&self) -> bool {
        self.queued.swap(false, Ordering::SeqCst)
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
    /// Places each client with a quota holds: reserved, queued or running.
    clients: Mutex<HashMap<String, usize>>,
    worker: OnceLock<WorkerInfo>,
    /// Ends the history could not store, kept until the process stops (the next start marks
    /// such runs interrupted).
    unrecorded: Mutex<HashMap<RunId, Unrecorded>>,
    /// A moving average of how long runs take: what a Retry-After is based on.
    mean_run_s: Mutex<f64>,
}

/// A run's end that the history failed to store.
#[derive(Debug, Clone)]
pub(crate) struct Unrecorded {
    pub(crate) status: RunStatus,
    pub(crate) error: String,
}

/// How many places in the queue one client may hold at once.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ClientQuota {
    Unlimited,
    AtMost(usize),
}

/// Why a run was not given a place.
pub(crate) enum Refusal {
    /// The queue holds `capacity` runs already.
    QueueFull { retry_after: Duration },
    /// The client holds its quota of places.
    ClientBusy { limit: usize, retry_after: Duration },
}

/// A place in the queue, held until the run is handed over with
/// [`enqueue`](Reservation::enqueue); dropped unused, it is given back.
pub(crate) struct Reservation<'a> {
    jobs: &'a Jobs,
    /// The client whose quota the place counts towards, if any.
    client: Option<String>,
    handed_over: bool,
}

impl Reservation<'_> {
    /// Hands the run `id` to the worker.
    pub(crate) fn enqueue(mut self, id: RunId, request: RunRequest) {
        let live = Arc::new(LiveRun::new(self.client.take()));
        self.jobs.live.lock().expect("live lock").insert(id, live.clone());
        self.handed_over = true;
        // The worker holds the receiver for as long as the server runs.
        let _ = self.jobs.sender.send(Job { id, request, live });
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.handed_over {
            self.jobs.release();
            self.jobs.release_client(self.client.as_deref());
        }
    }
}

impl Jobs {
    /// The queue, and the receiving end for the worker.
    pub(crate) fn new(capacity: usize) -> (Self, mpsc::Receiver<Job>) {
        let (sender, receiver) = mpsc::channel();
        let jobs = Self {
            sender,
            capacity,
            waiting: AtomicUsize::new(0),
            live: Mutex::default(),
            clients: Mutex::default(),
            worker: OnceLock::new(),
            unrecorded: Mutex::default(),
            mean_run_s: Mutex::new(10.0),
        };
        (jobs, receiver)
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

    /// Takes a place in the queue for `client`, or says when one may be free.
    pub(crate) fn reserve(&self, client: &str, quota: ClientQuota) -> Result<Reservation<'_>, Refusal> {
        let mut clients = self.clients.lock().expect("clients lock");
        let held = clients.get(client).copied().unwrap_or(0);
        if let ClientQuota::AtMost(limit) = quota {
            if held >= limit {
                return Err(Refusal::ClientBusy { limit, retry_after: self.wait_for(held) });
            }
        }
        self.waiting
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < self.capacity).then_some(n + 1))
            .map_err(|waiting| Refusal::QueueFull { retry_after: self.wait_for(waiting) })?;
        let counted = match quota {
            ClientQuota::Unlimited => None,
            ClientQuota::AtMost(_) => {
                clients.insert(client.to_owned(), held + 1);
                Some(client.to_owned())
            }
        };
        Ok(Reservation { jobs: self, client: counted, handed_over: false })
    }

    /// Roughly when `ahead` runs, and the one running, will have finished.
    fn wait_for(&self, ahead: usize) -> Duration {
        retry_after(ahead, *self.mean_run_s.lock().expect("timing lock"))
    }

    /// Gives back a queue place: the worker took the run off the queue, or it was never
    /// enqueued.
    pub(crate) fn release(&self) {
        self.waiting.fetch_sub(1, Ordering::SeqCst);
    }

    fn release_client(&self, client: Option<&str>) {
        let Some(client) = client else { return };
        let mut clients = self.clients.lock().expect("clients lock");
        if let Some(held) = clients.get_mut(client) {
            *held -= 1;
            if *held == 0 {
                clients.remove(client);
            }
        }
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

    /// The history could not store how run `id` ended; remember it instead.
    pub(crate) fn remember_unrecorded(&self, id: RunId, end: Unrecorded) {
        self.unrecorded.lock().expect("unrecorded lock").insert(id, end);
    }

    pub(crate) fn unrecorded(&self, id: RunId) -> Option<Unrecorded> {
        self.unrecorded.lock().expect("unrecorded lock").get(&id).cloned()
    }

    /// The run's end is stored: announce it and forget the live state.
    pub(crate) fn finished(&self, id: RunId, status: RunStatus, seconds: Option<f64>) {
        let removed = self.live.lock().expect("live lock").remove(&id);
        if let Some(live) = removed {
            live.set_status(status);
            self.release_client(live.client.as_deref());
        }
        if let Some(seconds) = seconds {
            let mut mean = self.mean_run_s.lock().expect("timing lock");
            *mean = 0.7 * *mean + 0.3 * seconds;
        }
    }
}

/// Roughly when `ahead` runs, and the one running, will have finished, if each takes
/// `per_run_s`.
pub(crate) fn retry_after(ahead: usize, per_run_s: f64) -> Duration {
    Duration::from_secs_f64(((ahead + 1) as f64 * per_run_s).clamp(1.0, 3600.0))
}
