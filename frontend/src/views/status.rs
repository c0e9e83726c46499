use leptos::prelude::*;

use crate::api;
use crate::app::Workbench;

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

/// The followed run's phase, a progress bar, speed and time left, and a cancel button.
#[component]
pub fn RunProgress() -> impl IntoView {
    let workbench = expect_context::<Workbench>();
    move || {
        workbench.active.get().map(|active| {
            let id = active.id;
            let (phase, fraction, detail) = match &active.progress {
                Some(p) => {
                    let eta = p.eta_s.map(|s| format!(" · {s:.0} s left")).unwrap_or_default();
                    (p.phase.clone(), p.done as f64 / p.total.max(1) as f64, format!("{}/{} images · {:.0} img/s{eta}", p.done, p.total, p.images_per_s))
                }
                None => ("waiting".into(), 0.0, String::new()),
            };
            let cancel = move |_| {
                leptos::task::spawn_local(async move {
                    if let Err(error) = api::cancel(id).await {
                        workbench.fail(error);
                    }
                });
            };
            view! {
                <div class="progress" id="progress">
                    <div class="progress-head">
                        <strong>{format!("Run {id}: {}", active.status.as_str())}</strong>
                        <button class="secondary" on:click=cancel>"Cancel"</button>
                    </div>
                    <div class="phase">{phase}</div>
                    <progress max="1" value=fraction></progress>
                    <div class="detail">{detail}</div>
                </div>
            }
        })
    }
}
