use leptos::prelude::*;
use unlearn_shared::api::{Run, RunRequest};
use unlearn_shared::cifar::CLASSES;

use super::results::run_view;
use crate::api;
use crate::app::Workbench;

fn describe(run: &Run) -> String {
    match &run.request {
        RunRequest::Unlearn(r) => format!("forget {} · α {} λ {}", r.class.map_or("?", |c| CLASSES[c.index()]), r.alpha, r.lambda),
        RunRequest::Sweep(r) => format!("all classes · α {} λ {}", r.alpha, r.lambda),
        RunRequest::Eval(r) => format!("evaluate {}", r.model),
        RunRequest::Train(r) => format!("train {}", r.name),
    }
}

/// Past runs from the server: open one, or tick two to compare.
#[component]
pub fn History() -> impl IntoView {
    let workbench = expect_context::<Workbench>();
    let runs = LocalResource::new(move || {
        workbench.history_version.track();
        api::runs()
    });
    let open = move |id| {
        leptos::task::spawn_local(async move {
            match api::run(id).await {
                Ok(run) => workbench.shown.set(Some(run)),
                Err(error) => workbench.fail(error),
            }
        });
    };
    let toggle = move |id| {
        workbench.compared.update(|picked| {
            if let Some(at) = picked.iter().position(|&p| p == id) {
                picked.remove(at);
            } else {
                picked.push(id);
                if picked.len() > 2 {
                    picked.remove(0);
                }
            }
        })
    };
    let rows = move || match runs.get() {
        Some(Ok(page)) if page.runs.is_empty() => view! { <p class="hint">"No runs yet."</p> }.into_any(),
        Some(Ok(page)) => view! {
            <ul class="history">
                {page.runs.into_iter().map(|run| {
                    let id = run.id;
                    view! {
                        <li data-run=id>
                            <input type="checkbox" title="compare" prop:checked=move || workbench.compared.get().contains(&id) on:change=move |_| toggle(id) />
                            <button class="link" on:click=move |_| open(id)>{format!("#{id} {}", describe(&run))}</button>
                            <span class=format!("status {}", run.status.as_str())>{run.status.as_str()}</span>
                        </li>
                    }
                }).collect_view()}
            </ul>
        }.into_any(),
        Some(Err(error)) => view! { <p class="invalid">{error}</p> }.into_any(),
        None => view! { <p class="hint">"loading…"</p> }.into_any(),
    };
    view! { <h2>"History"</h2> {rows} }
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
    move || match picked.get() {
        Some(Ok(runs)) if runs.len() == 2 => Some(view! {
            <section class="panel wide" id="comparison">
                <h2>"Comparison"</h2>
                <div class="compare">{runs.into_iter().map(run_view).collect_view()}</div>
            </section>
        }.into_any()),
        Some(Err(error)) => {
            workbench.fail(error);
            None
        }
        _ => None,
    }
}
