//! Progress on the terminal, and Ctrl-C as a request to stop at the next safe point.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use unlearn_shared::api::ProgressEvent;

use crate::engine::progress::Progress;

pub(crate) struct TerminalProgress {
    bar: Option<(String, ProgressBar)>,
    interrupted: Arc<AtomicBool>,
}

impl TerminalProgress {
    /// The first Ctrl-C asks the job to stop cleanly; a second one exits at once.
    pub(crate) fn new() -> Self {
        let interrupted = Arc::new(AtomicBool::new(false));
        let flag = interrupted.clone();
        let _ = ctrlc::set_handler(move || {
            if flag.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
            eprintln!("\nstopping after the current batch (Ctrl-C again to quit now)");
        });
        Self { bar: None, interrupted }
    }

    fn bar_for(&mut self, event: &ProgressEvent) -> &ProgressBar {
        let stale = self.bar.as_ref().is_none_or(|(phase, _)| *phase != event.phase);
        if stale {
            if let Some((_, old)) = self.bar.take() {
                old.finish();
            }
            // Bars are hidden off a terminal; a log still says where the run is.
            if !std::io::stderr().is_terminal() {
                eprintln!("{}", event.phase);
            }
            let bar = ProgressBar::new(event.total);
            bar.set_style(ProgressStyle::with_template("{prefix:>28} [{bar:30}] {pos}/{len} {msg}").expect("valid template").progress_chars("=> "));
            bar.set_prefix(event.phase.clone());
            bar.enable_steady_tick(Duration::from_millis(500));
            self.bar = Some((event.phase.clone(), bar));
        }
        &self.bar.as_ref().expect("set above").1
    }
}

impl Progress for TerminalProgress {
    fn report(&mut self, event: &ProgressEvent) {
        let bar = self.bar_for(event);
        bar.set_position(event.done);
        let loss = event.loss.map(|l| format!(" loss {l:.4}")).unwrap_or_default();
        let eta = event.eta_s.map(|eta| format!(" ETA {eta:.0}s")).unwrap_or_default();
        let run = event.overall.map(|o| format!(" · run {:.0} %{}", 100.0 * o.fraction, o.eta_s.map(|eta| format!(", {eta:.0}s left")).unwrap_or_default()));
        bar.set_message(format!("{:.1} img/s{eta}{loss}{}", event.images_per_s, run.unwrap_or_default()));
        if event.done >= event.total {
            bar.finish();
        }
    }

    fn cancelled(&self) -> bool {
        self.interrupted.load(Ordering::SeqCst)
    }
}

impl Drop for TerminalProgress {
    fn drop(&mut self) {
        if let Some((_, bar)) = self.bar.take() {
            bar.finish();
        }
    }
}
