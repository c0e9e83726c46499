//! The deployment on PostgreSQL: API servers record runs there, and `backend worker`
//! processes, on any machine that reaches the database and the shared data folder, claim
//! and carry them out.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use burn::tensor::backend::AutodiffBackend;
use unlearn_shared::api::{ProgressEvent, RunStatus};

use super::jobs::Subsamples;
use super::worker::{carry_out, RunPlace};
use super::RunFiles;
use crate::app::executor::{Executor, Workspace};
use crate::engine::device::{self, Device, DeviceChoice, Workload};
use crate::engine::progress::Progress;
use crate::storage::history::Outcome;
use crate::storage::shared_history::{Claim, Held, Lease, SharedHistory};

/// Claims a run gets: a run whose worker stopped answering this many times fails.
pub(crate) const MAX_TRIES: u32 = 3;
/// How often a worker stores its run's progress, extends its lease and reads whether the run
/// was cancelled: the latency of progress and cancels through the database.
pub(crate) const HEARTBEAT: Duration = Duration::from_millis(250);
/// How often an idle worker looks for a queued run.
const POLL: Duration = Duration::from_millis(250);
/// How often the API servers look for leases that ran out.
const REAP_EVERY: Duration = Duration::from_secs(2);
/// A worker heard from within this long counts as alive.
pub(crate) const WORKER_ALIVE: Duration = Duration::from_secs(10);

/// An API server's view of the shared deployment.
pub(crate) struct Shared {
    pub(crate) history: SharedHistory,
    /// What requests without a subsample read: the server's `--forget-limit` and the like,
    /// else whole sets (its workers' devices are not known when a request arrives).
    pub(crate) subsamples: Subsamples,
}

/// Ends runs whose worker died, every few seconds, for as long as the server runs. Workers do
/// it too; this is for when none is left.
pub(crate) fn reap_in_background(shared: Arc<Shared>) {
    std::thread::Builder::new()
        .name("reaper".into())
        .spawn(move || loop {
            reap(&shared.history);
            std::thread::sleep(REAP_EVERY);
        })
        .expect("the reaper thread starts");
}

fn reap(history: &SharedHistory) {
    match history.reap(MAX_TRIES) {
        Ok(reaped) => {
            for run in reaped {
                tracing::warn!(run = run.id, status = run.status.as_str(), "a run's worker stopped answering");
            }
        }
        Err(error) => tracing::warn!(%error, "could not look for runs whose worker died"),
    }
}

/// How a `backend worker` process is set up.
pub(crate) struct WorkerConfig {
    pub(crate) database: String,
    /// Unique among the deployment's workers.
    pub(crate) name: String,
    /// How long a run stays this worker's without a heartbeat.
    pub(crate) lease: Duration,
    pub(crate) files: RunFiles,
}

/// Claims and carries out runs on `device` until Ctrl-C or SIGTERM, which hand the run under
/// way back to the queue; a second one ends the process at once.
pub(crate) fn work(config: WorkerConfig, workspace: Workspace, device: DeviceChoice) -> anyhow::Result<()> {
    let history = SharedHistory::open(&config.database)?;
    config.files.prepare()?;
    let stopping = Arc::new(AtomicBool::new(false));
    let flag = stopping.clone();
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
    })?;
    device::run(device, SharedWorker { history, config, workspace, stopping })?
}

struct SharedWorker {
    history: SharedHistory,
    config: WorkerConfig,
    workspace: Workspace,
    stopping: Arc<AtomicBool>,
}

impl Workload for SharedWorker {
    type Output = anyhow::Result<()>;

    fn run<B: AutodiffBackend>(self, device: Device<B>) -> Self::Output {
        let name = &self.config.name;
        let description = device.description.clone();
        self.history.announce_worker(name, &description)?;
        println!("worker {name} on {description} waiting for runs");
        tracing::info!(worker = %name, device = %description, "worker ready");
        let mut executor = Executor::new(&self.workspace, device);
        let place = RunPlace { files: self.config.files.clone(), workspace: &self.workspace, forget_weights: &|id| self.history.remove_weights(id) };
        let mut announced: Option<Instant> = None;
        while !self.stopping.load(Ordering::SeqCst) {
            if announced.is_none_or(|at| at.elapsed() > WORKER_ALIVE / 4) {
                match self.history.announce_worker(name, &description) {
                    Ok(()) => announced = Some(Instant::now()),
                    Err(error) => tracing::warn!(%error, "could not reach the database"),
                }
                reap(&self.history);
            }
            match self.history.claim(name, self.config.lease) {
                Ok(Some(claim)) => self.carry(&place, &mut executor, claim),
                Ok(None) => std::thread::sleep(POLL),
                Err(error) => {
                    tracing::warn!(%error, "could not claim a run; trying again");
                    std::thread::sleep(POLL * 4);
                }
            }
        }
        println!("worker {name} stopped");
        Ok(())
    }
}

impl SharedWorker {
    fn carry<B: AutodiffBackend>(&self, place: &RunPlace<'_>, executor: &mut Executor<B>, claim: Claim) {
        let started = Instant::now();
        let held = &claim.held;
        let id = held.id;
        tracing::info!(run = id, attempt = held.attempt, kind = claim.request.kind(), "claimed a run");
        let beat = Heartbeat::default();
        let outcome = std::thread::scope(|scope| {
            let beating = scope.spawn(|| beat.keep_lease(&self.history, held, self.config.lease));
            // Ends the heartbeats however the run ends, a panic included: a lease that
            // outlived its run would hold it forever.
            let stop_beating = StopOnDrop(&beat.done);
            let outcome = carry_out(place, executor, id, &claim.request, &mut SharedProgress { beat: &beat, stopping: &self.stopping });
            drop(stop_beating);
            beating.join().expect("the heartbeat thread");
            outcome
        });
        if beat.lost.load(Ordering::SeqCst) {
            tracing::warn!(run = id, "the run's lease ran out and passed to another worker; what this one made is not recorded");
            return;
        }
        // Stopped by Ctrl-C rather than finished or cancelled by a request: hand it back.
        let interrupted = outcome.status == RunStatus::Cancelled && !beat.cancel_requested.load(Ordering::SeqCst);
        if interrupted && self.stopping.load(Ordering::SeqCst) {
            match self.history.release(held) {
                Ok(()) => tracing::info!(run = id, "stopping: the run goes back to the queue"),
                Err(error) => tracing::warn!(run = id, %error, "stopping: could not hand the run back; it returns to the queue when its lease runs out"),
            }
            return;
        }
        let status = self.record(held, outcome);
        let status = status.map_or("not recorded", |s| s.as_str());
        tracing::info!(run = id, kind = claim.request.kind(), status, seconds = started.elapsed().as_secs_f64(), "run ended");
    }

    /// Records the end, trying again while the database is unreachable, for as long as the
    /// lease would have lasted.
    fn record(&self, held: &Held, outcome: Outcome) -> Option<RunStatus> {
        let id = held.id;
        let deadline = Instant::now() + self.config.lease;
        loop {
            match self.history.finish(held, outcome.clone()) {
                Ok(Some(status)) => return Some(status),
                Ok(None) => {
                    tracing::warn!(run = id, "the run passed to another worker before its end was recorded");
                    return None;
                }
                Err(error) if Instant::now() < deadline => {
                    tracing::warn!(run = id, %error, "could not record the run's end; trying again");
                    std::thread::sleep(POLL * 4);
                }
                Err(error) => {
                    tracing::error!(run = id, %error, "could not record the run's end; it returns to the queue when its lease runs out");
                    return None;
                }
            }
        }
    }
}

/// Sets its flag when dropped.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// What the heartbeat thread and the run share.
#[derive(Default)]
struct Heartbeat {
    latest: Mutex<Option<ProgressEvent>>,
    cancel_requested: AtomicBool,
    lost: AtomicBool,
    done: AtomicBool,
}

impl Heartbeat {
    /// Every [`HEARTBEAT`] until the run is done: extends the lease, stores news of progress,
    /// and learns of a cancel or a lost lease.
    fn keep_lease(&self, history: &SharedHistory, held: &Held, lease: Duration) {
        let id = held.id;
        while !self.done.load(Ordering::SeqCst) {
            let news = self.latest.lock().unwrap_or_else(|p| p.into_inner()).take();
            match history.heartbeat(held, lease, news.as_ref()) {
                Ok(Lease::Held { cancel_requested }) => {
                    if cancel_requested {
                        self.cancel_requested.store(true, Ordering::SeqCst);
                    }
                }
                Ok(Lease::Lost) => {
                    self.lost.store(true, Ordering::SeqCst);
                    return;
                }
                Err(error) => {
                    tracing::warn!(run = id, %error, "heartbeat failed; the run goes on");
                    // Not stored: sent again with the next news.
                    let mut latest = self.latest.lock().unwrap_or_else(|p| p.into_inner());
                    if latest.is_none() {
                        *latest = news;
                    }
                }
            }
            std::thread::sleep(HEARTBEAT);
        }
    }
}

/// Progress goes to the heartbeat; the run stops on a cancel, a lost lease or Ctrl-C.
struct SharedProgress<'a> {
    beat: &'a Heartbeat,
    stopping: &'a AtomicBool,
}

impl Progress for SharedProgress<'_> {
    fn report(&mut self, event: &ProgressEvent) {
        *self.beat.latest.lock().expect("progress lock") = Some(event.clone());
    }

    fn cancelled(&self) -> bool {
        self.beat.cancel_requested.load(Ordering::Relaxed) || self.beat.lost.load(Ordering::Relaxed) || self.stopping.load(Ordering::Relaxed)
    }
}
