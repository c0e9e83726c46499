//! How long jobs report progress and learn they should stop: one interface for the terminal
//! and the server.

use std::time::Instant;

use unlearn_shared::api::{Overall, ProgressEvent};

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
    /// Starts timing `phase` and says so at once (a first batch can take a minute on the
    /// CPU), unless it has nothing to do.
    pub(crate) fn start(phase: impl Into<String>, total: u64, progress: &mut dyn Progress) -> Self {
        let timer = Self { phase: phase.into(), total, started: Instant::now(), loss_sum: 0.0, loss_batches: 0 };
        if total > 0 {
            progress.report(&timer.event(0));
        }
        timer
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

/// Work in forward-pass images: what the plan of a run weighs its phases by.
pub(crate) const FORWARD: f64 = 1.0;
/// An importance or training image: a forward and a backward pass, measured at about 3.3
/// forward passes on the CPU.
pub(crate) const FORWARD_AND_BACKWARD: f64 = 3.0;

/// A phase a run expects to go through, and what it should cost.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Step {
    /// The phase's name; or its start, for a phase reported in parts (each calibration step
    /// is one).
    pub(crate) phase: String,
    /// What the phase's events count (`done`) in all its parts together.
    pub(crate) units: u64,
    /// Work per unit, in forward-pass images.
    pub(crate) cost_per_unit: f64,
}

impl Step {
    pub(crate) fn new(phase: impl Into<String>, units: usize, cost_per_unit: f64) -> Self {
        Self { phase: phase.into(), units: units as u64, cost_per_unit }
    }

    fn cost(&self) -> f64 {
        self.units as f64 * self.cost_per_unit
    }

    fn matches(&self, phase: &str) -> bool {
        phase.starts_with(&self.phase)
    }
}

/// Adds the whole run's progress to every event it passes on: the cost of the steps of the
/// plan behind it and the share of the current one done, over the cost of the whole plan.
/// A step the run skipped (its work was cached) counts as done once a later one starts; a
/// phase the plan does not know leaves the fraction where it was.
pub(crate) struct Planned<'a> {
    inner: &'a mut dyn Progress,
    plan: Vec<Step>,
    started: Instant,
    /// The step under way.
    at: usize,
    /// Units done in the step's earlier parts.
    earlier_parts: u64,
    /// The part under way, and its units done.
    part: Option<(String, u64)>,
}

impl<'a> Planned<'a> {
    pub(crate) fn new(plan: Vec<Step>, inner: &'a mut dyn Progress) -> Self {
        Self { inner, plan, started: Instant::now(), at: 0, earlier_parts: 0, part: None }
    }

    /// Moves to the step `phase` belongs to and records its progress.
    fn advance(&mut self, phase: &str, done: u64) {
        let current = self.plan.get(self.at).is_some_and(|step| step.matches(phase));
        if !current {
            let Some(later) = self.plan.iter().skip(self.at + 1).position(|step| step.matches(phase)) else { return };
            self.at += 1 + later;
            self.earlier_parts = 0;
            self.part = None;
        }
        if let Some((name, part_done)) = &self.part {
            if name != phase {
                self.earlier_parts += part_done;
            }
        }
        self.part = Some((phase.to_owned(), done));
    }

    /// The share of the plan's cost done, 0 to 1.
    fn fraction(&self) -> f64 {
        let total: f64 = self.plan.iter().map(Step::cost).sum();
        let Some(step) = self.plan.get(self.at).filter(|_| total > 0.0) else { return 0.0 };
        let behind: f64 = self.plan[..self.at].iter().map(Step::cost).sum();
        let done = self.earlier_parts + self.part.as_ref().map_or(0, |(_, done)| *done);
        let share = if step.units == 0 { 1.0 } else { (done as f64 / step.units as f64).min(1.0) };
        ((behind + share * step.cost()) / total).clamp(0.0, 1.0)
    }
}

/// Time left at a steady pace: what the elapsed time bought, for the rest.
pub(crate) fn eta_s(elapsed_s: f64, fraction: f64) -> Option<f64> {
    (fraction > 0.0).then(|| elapsed_s * (1.0 - fraction) / fraction)
}

impl Progress for Planned<'_> {
    fn report(&mut self, event: &ProgressEvent) {
        self.advance(&event.phase, event.done);
        let (fraction, elapsed_s) = (self.fraction(), self.started.elapsed().as_secs_f64());
        let overall = Overall { fraction, elapsed_s, eta_s: eta_s(elapsed_s, fraction) };
        self.inner.report(&ProgressEvent { overall: Some(overall), ..event.clone() });
    }

    fn cancelled(&self) -> bool {
        self.inner.cancelled()
    }
}

/// Does `work`, which has no images to count (writing a file, say), as a phase of one unit:
/// reported when it starts and when it is done.
pub(crate) fn one_unit<T>(phase: &str, progress: &mut dyn Progress, work: impl FnOnce() -> T) -> T {
    let timer = PhaseTimer::start(phase, 1, progress);
    let output = work();
    progress.report(&timer.event(1));
    output
}

/// Reports nothing and never cancels: for tests.
#[cfg(test)]
pub(crate) struct Silent;

#[cfg(test)]
impl Progress for Silent {
    fn report(&mut self, _event: &ProgressEvent) {}
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Keeps every event, for tests to look at.
    #[derive(Default)]
    pub(crate) struct Recorder {
        pub(crate) events: Vec<ProgressEvent>,
    }

    impl Progress for Recorder {
        fn report(&mut self, event: &ProgressEvent) {
            self.events.push(event.clone());
        }
    }

    fn event(phase: &str, done: u64, total: u64) -> ProgressEvent {
        ProgressEvent { phase: phase.into(), done, total, images_per_s: 0.0, eta_s: None, loss: None, overall: None }
    }

    /// The fractions `Planned` adds to events of `phases` (name, done), over `plan`.
    fn fractions(plan: Vec<Step>, phases: &[(&str, u64)]) -> Vec<f64> {
        let mut recorder = Recorder::default();
        let mut planned = Planned::new(plan, &mut recorder);
        for &(phase, done) in phases {
            planned.report(&event(phase, done, 100));
        }
        recorder.events.iter().map(|e| e.overall.expect("every event gets the run's progress").fraction).collect()
    }

    #[test]
    fn the_run_fraction_weighs_each_phase_by_its_cost() {
        // Costs: importance 100 x 3 = 300, calibration 400 x 1 = 400, evaluation 300 x 1 = 300.
        let plan = || vec![Step::new("importance", 100, FORWARD_AND_BACKWARD), Step::new("calibrate alpha", 400, FORWARD), Step::new("evaluate", 300, FORWARD)];
        let got = fractions(
            plan(),
            &[
                ("importance", 50),
                ("importance", 100),
                // Calibration in parts: units add up across them.
                ("calibrate alpha: step 1", 100),
                ("calibrate alpha: step 2", 100),
                ("calibrate alpha: step 2", 200),
                ("evaluate", 150),
                ("evaluate", 300),
            ],
        );
        let expected = [0.15, 0.3, 0.4, 0.5, 0.6, 0.85, 1.0];
        assert_eq!(got.len(), expected.len());
        for (got, expected) in got.iter().zip(expected) {
            assert!((got - expected).abs() < 1e-12, "{got} != {expected}");
        }
        // A calibration longer than expected holds at its end until the next phase.
        let got = fractions(plan(), &[("calibrate alpha: step 1", 300), ("calibrate alpha: step 2", 300), ("evaluate", 0)]);
        assert_eq!(got, [0.6, 0.7, 0.7]);
    }

    #[test]
    fn skipped_phases_count_as_done_and_unknown_ones_change_nothing() {
        let plan = vec![Step::new("a", 10, FORWARD), Step::new("b", 10, FORWARD), Step::new("c", 20, FORWARD)];
        // "b" was cached; "x" is not in the plan; an event of "a" after "c" began does not go back.
        assert_eq!(fractions(plan, &[("a", 5), ("c", 10), ("x", 7), ("a", 10)]), [0.125, 0.75, 0.75, 0.75]);
        assert_eq!(fractions(Vec::new(), &[("a", 5)]), [0.0], "no plan, no progress");
    }

    #[test]
    fn the_time_left_is_what_the_time_spent_bought() {
        assert_eq!(eta_s(30.0, 0.25), Some(90.0));
        assert_eq!(eta_s(30.0, 1.0), Some(0.0));
        assert_eq!(eta_s(0.0, 0.0), None, "unknown before any progress");
    }
}
