use leptos::prelude::*;

use unlearn_shared::api::{ProgressEvent, RunStatus};

use crate::api;
use crate::app::{Connection, Workbench, RECONNECT_EVERY};

/// The last error, in words, until dismissed.
#[component]
pub fn ErrorBanner() -> impl IntoView {
    let workbench = expect_context::<Workbench>();
    move || {
        workbench.error.get().map(|error| {
            view! {
                <div class="error" role="alert">
                    <span>{error}</span>
                    <button on:click=move |_| workbench.error.set(None)>"Dismiss"</button>
                </div>
            }
        })
    }
}

/// What went wrong, where its result would have been: an `ErrorBoundary`'s fallback.
#[component]
pub fn Failed(errors: ArcRwSignal<Errors>) -> impl IntoView {
    let reasons = move || errors.get().into_iter().map(|(_, error)| error.to_string()).collect::<Vec<_>>().join("; ");
    view! { <p class="invalid">{reasons}</p> }
}

/// Seconds as people read them: "45 s", "3 min 20 s", "1 h 5 min".
pub fn duration(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, s % 3600 / 60),
    }
}

/// The phase's own line: what it counts and how fast, without counts it does not have.
fn phase_detail(p: &ProgressEvent) -> String {
    let mut parts = Vec::new();
    if p.total > 0 {
        parts.push(format!("{}/{} images", p.done.min(p.total), p.total));
    }
    if p.images_per_s > 0.0 {
        parts.push(format!("{:.0} img/s", p.images_per_s));
    }
    if let Some(eta) = p.eta_s.filter(|_| p.done < p.total) {
        parts.push(format!("phase: {} left", duration(eta)));
    }
    parts.join(" · ")
}

/// The whole run's line: how long it has run and how long it has to go.
fn overall_detail(p: &ProgressEvent) -> Option<String> {
    let overall = p.overall?;
    let left = overall.eta_s.map(|eta| format!(", about {} left", duration(eta))).unwrap_or_default();
    Some(format!("whole run: {:.0} % after {}{left}", overall.fraction * 100.0, duration(overall.elapsed_s)))
}

/// The followed run's phase, a progress bar for the whole run, speed and time left, the
/// state of the connection, and a cancel button.
#[component]
pub fn RunProgress() -> impl IntoView {
    let workbench = expect_context::<Workbench>();
    move || {
        workbench.active.get().map(|active| {
            let id = active.id;
            let lost = match &active.connection {
                Connection::Live => None,
                Connection::Lost(error) => Some(format!(
                    "Connection lost ({error}). Asking the server about run {id} every {} s; the figures below are the last it sent.",
                    RECONNECT_EVERY.as_secs()
                )),
            };
            let (phase, fraction, detail, overall) = match &active.progress {
                Some(p) => {
                    let fraction = p.overall.map_or(p.done as f64 / p.total.max(1) as f64, |o| o.fraction);
                    (p.phase.clone(), fraction, phase_detail(p), overall_detail(p))
                }
                None => (if active.status == RunStatus::Queued { "waiting in the queue" } else { "starting" }.into(), 0.0, String::new(), None),
            };
            let cancel = move |_| {
                leptos::task::spawn_local(async move {
                    if let Err(error) = api::cancel(id).await {
                        workbench.fail(error);
                    }
                });
            };
            let is_lost = lost.is_some();
            view! {
                <div class="progress" class:lost=is_lost id="progress">
                    <div class="progress-head">
                        <strong>{format!("Run {id}: {}", active.status.as_str())}</strong>
                        <button class="secondary" on:click=cancel>"Cancel"</button>
                    </div>
                    {lost.map(|text| view! { <p class="lost" role="alert">{text}</p> })}
                    <div class="phase">{phase}</div>
                    <progress max="1" value=fraction aria-label=format!("run {id} progress")></progress>
                    <div class="detail">{detail}</div>
                    {overall.map(|text| view! { <div class="detail overall">{text}</div> })}
                </div>
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use unlearn_shared::api::Overall;
    use wasm_bindgen_test::wasm_bindgen_test;

    fn event(done: u64, total: u64) -> ProgressEvent {
        ProgressEvent { phase: "evaluate".into(), done, total, images_per_s: 40.0, eta_s: Some(12.0), loss: None, overall: None }
    }

    #[wasm_bindgen_test]
    fn a_phase_without_a_count_shows_none() {
        assert_eq!(phase_detail(&event(2, 0)), "40 img/s");
        assert_eq!(phase_detail(&event(2, 10)), "2/10 images · 40 img/s · phase: 12 s left");
        assert_eq!(phase_detail(&event(10, 10)), "10/10 images · 40 img/s", "no time left at the end");
    }

    #[wasm_bindgen_test]
    fn the_whole_run_has_its_own_time() {
        assert_eq!(overall_detail(&event(1, 2)), None);
        let p = ProgressEvent { overall: Some(Overall { fraction: 0.25, elapsed_s: 30.0, eta_s: Some(95.0) }), ..event(1, 2) };
        assert_eq!(overall_detail(&p).as_deref(), Some("whole run: 25 % after 30 s, about 1 min 35 s left"));
        assert_eq!(duration(3725.0), "1 h 2 min");
    }
}
