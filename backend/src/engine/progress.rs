//! How long jobs report progress and learn they should stop: one interface for the terminal
//! and the server.

use std::time::Instant;

use unlearn_shared::api::ProgressEvent;

pub(crate) trait Progress {
    fn report(&mut self, event: &ProgressEvent);
    /// Checked between batches; a job that sees `true` stops at the next safe point.
    fn cancelled(&self) -> bool {
        false
    }
}

/// A job was stopped through [`Progress::cancelled`].
#[derive(Debug, thiserror::Error)]
#[error("cancelled")]
pub(crate) struct Cancelled;

/// Times one phase and turns counts into [`ProgressEvent`]s.
pub(crate) struct PhaseTimer {
    phase: String,
    total: u64,
    started: Instant,
    loss_sum: f64,
    loss_batches: u64,
}

impl PhaseTimer {
    pub(crate) fn new(phase: impl Into<String>, total: u64) -> Self {
        Self { phase: phase.into(), total, started: Instant::now(), loss_sum: 0.0, loss_batches: 0 }
    }

    pub(crate) fn add_loss(&mut self, loss: f64) {
        self.loss_sum += loss;
        self.loss_batches += 1;
    }

    pub(crate) fn mean_loss(&self) -> Option<f64> {
        (self.loss_batches > 0).then(|| self.loss_sum / self.loss_batches as f64)
    }

    pub(crate) fn elapsed_s(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    pub(crate) fn event(&self, done: u64) -> ProgressEvent {
        let elapsed = self.elapsed_s();
        let rate = if elapsed > 0.0 { done as f64 / elapsed } else { 0.0 };
        let eta_s = (rate > 0.0).then(|| self.total.saturating_sub(done) as f64 / rate);
        ProgressEvent { phase: self.phase.clone(), done, total: self.total, images_per_s: rate, eta_s, loss: self.mean_loss(), overall: None }
    }
}

/// Reports nothing and never cancels: for tests and nested work.
pub(crate) struct Silent;

impl Progress for Silent {
    fn report(&mut self, _event: &ProgressEvent) {}
}
