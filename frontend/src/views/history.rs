use leptos::prelude::*;
use unlearn_shared::api::{Run, RunId, RunRequest};

use super::results::run_view;
use super::status::Failed;
use crate::api;
use crate::app::Workbench;

fn describe(run: &Run) -> String {
    match &run.request {
        RunRequest::Unlearn(r) => format!("forget {} · α {} λ {}", r.class.map_or("?", |c| c.name()), r.ssd.alpha, r.ssd.lambda),
        RunRequest::Sweep(r) => format!("all classes · α {} λ {}", r.ssd.alpha, r.ssd.lambda),
        RunRequest::Eval(r) => format!("evaluate {}", r.model),
        RunRequest::Train(r) => format!("train {}", r.name),
    }
}

/// Ticks or unticks `id` for comparison; a third tick drops the oldest.
fn toggle(picked: &mut Vec<RunId>, id: RunId) {
    if let Some(at) = picked.iter().position(|&p| p == id) {
        picked.remove(at);
    } else {
        picked.push(id);
        if picked.len() > 2 {
            picked.remove(0);
        }
    }
}

/// Past runs from the server, refetched as the followed run starts and ends: open one, or
/// tick two to compare.
#[component]
pub fn History() -> impl IntoView {
    let workbench = expect_context::<Workbench>();
    let runs = LocalResource::new(move || {
        workbench.followed.track();
        api::runs()
    });
    let listed = move || runs.get().and_then(Result::ok).map(|page| page.runs).unwrap_or_default();
    let note = move || match runs.get() {
        None => Some(view! { <p class="hint">"loading…"</p> }.into_any()),
        Some(Ok(page)) if page.runs.is_empty() => Some(view! { <p class="hint">"No runs yet."</p> }.into_any()),
        Some(Ok(_)) => None,
        Some(Err(error)) => Some(view! { <p class="invalid">{error}</p> }.into_any()),
    };
    view! {
        <h2>"History"</h2>
        {note}
        <ul class="history">
            // A row shows its run's status, so a new status makes a new row.
            <For each=listed key=|run| (run.id, run.status.as_str()) let(run)>
                <HistoryRow run />
            </For>
        </ul>
    }
}

#[component]
fn HistoryRow(run: Run) -> impl IntoView {
    let workbench = expect_context::<Workbench>();
    let id = run.id;
    let open = move |_| {
        leptos::task::spawn_local(async move {
            match api::run(id).await {
                Ok(run) => workbench.shown.set(Some(run)),
                Err(error) => workbench.fail(error),
            }
        });
    };
    view! {
        <li data-run=id>
            <input type="checkbox" title="compare" prop:checked=move || workbench.compared.with(|picked| picked.contains(&id))
                   on:change=move |_| workbench.compared.update(|picked| toggle(picked, id)) />
            <button class="link" on:click=open>{format!("#{id} {}", describe(&run))}</button>
            <span class=format!("status {}", run.status.as_str())>{run.status.as_str()}</span>
        </li>
    }
}

/// The two runs ticked in the history, side by side.
#[component]
pub fn Compare() -> impl IntoView {
    let workbench = expect_context::<Workbench>();
    let picked = LocalResource::new(move || {
        let ids = workbench.compared.get();
        async move {
            let mut runs = Vec::new();
            for id in ids {
                runs.push(api::run(id).await?);
            }
            Ok::<_, String>(runs)
        }
    });
    let pair = move || workbench.compared.with(Vec::len) == 2;
    // Until both are loaded, the runs of a former pick may be all there is.
    let runs = move || picked.get().map(|runs| runs.map(|runs| (runs.len() == 2).then(|| runs.into_iter().map(run_view).collect_view())));
    move || {
        pair().then(|| {
            view! {
                <section class="panel wide" id="comparison">
                    <h2>"Comparison"</h2>
                    <ErrorBoundary fallback=|errors| view! { <Failed errors /> }>
                        <div class="compare">{runs}</div>
                    </ErrorBoundary>
                </section>
            }
        })
    }
}
