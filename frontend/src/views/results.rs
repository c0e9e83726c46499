use leptos::prelude::*;
use unlearn_shared::api::{seed_table_csv, seed_table_markdown, table_rows, Run, RunResult, UnlearnReport, TABLE_HEADER};

use super::charts::{ClassBars, Heatmap};
use crate::app::Workbench;

/// The seed card's table, with copy as Markdown and download as CSV.
#[component]
pub fn SeedTable(reports: Vec<UnlearnReport>) -> impl IntoView {
    let workbench = expect_context::<Workbench>();
    let markdown = seed_table_markdown(&reports);
    let csv = format!("data:text/csv;charset=utf-8,{}", js_sys::encode_uri_component(&seed_table_csv(&reports)));
    let copy = move |_| {
        let Some(window) = web_sys::window() else {
            return;
        };
        let promise = window.navigator().clipboard().write_text(&markdown);
        leptos::task::spawn_local(async move {
            if wasm_bindgen_futures::JsFuture::from(promise).await.is_err() {
                workbench.fail("the browser did not allow copying to the clipboard");
            }
        });
    };
    let rows = table_rows(&reports)
        .map(|row| {
            let cells = row.cells().map(|cell| view! { <td>{cell}</td> });
            view! { <tr class=row.label>{cells.collect_view()}</tr> }
        })
        .collect_view();
    view! {
        <table class="seed-table">
            <thead><tr>{TABLE_HEADER.map(|name| view! { <th>{name}</th> }).collect_view()}</tr></thead>
            <tbody>{rows}</tbody>
        </table>
        <div class="table-actions">
            <button class="secondary" on:click=copy>"Copy as Markdown"</button>
            <a class="button secondary" href=csv download="unlearning.csv">"Download CSV"</a>
        </div>
    }
}

/// One unlearning report in full: settings, table, heatmaps, bars, timings.
#[component]
pub fn ReportView(report: UnlearnReport) -> impl IntoView {
    let forget = report.forget_class;
    let timing = report.timings.to_string();
    let alpha = match &report.calibration {
        Some(c) => format!(
            "α {:.3} on {} (calibrated: ≤ {} % of {} forget-set images{})",
            report.alpha,
            report.layers.describe(),
            c.target_forget_accuracy,
            c.images,
            if c.reached { "" } else { ", not reached" }
        ),
        None => format!("α {} on {}", report.alpha, report.layers.describe()),
    };
    let membership = format!(
        "membership attack: {:.1} % of {} forget-set training images called members before, {:.1} % after",
        report.membership.before, report.membership.images, report.membership.after
    );
    let settings = format!(
        "model {} · {alpha} · λ {} · {} of {} parameters dampened · {} · {} test images",
        report.model, report.settings.lambda, report.dampened.selected, report.dampened.total, report.device, report.before.test.overall.images
    );
    view! {
        <p class="meta">{settings}</p>
        <SeedTable reports=vec![report.clone()] />
        <div class="charts">
            <Heatmap title="Test confusion before".into() confusion=report.before.test.confusion.clone() forget=forget />
            <Heatmap title="Test confusion after".into() confusion=report.after.test.confusion.clone() forget=forget />
            <ClassBars before=report.before.test.per_class_accuracy.clone() after=report.after.test.per_class_accuracy.clone() forget=forget />
        </div>
        <p class="meta">{membership}</p>
        <p class="meta">{timing}</p>
    }
}

/// Any finished run's results.
pub fn run_view(run: Run) -> AnyView {
    let title = format!("Run {}", run.id);
    let body = match run.result {
        Some(RunResult::Unlearn(report)) => view! { <ReportView report=*report /> }.into_any(),
        Some(RunResult::Sweep { reports }) => view! { <SeedTable reports=reports /> }.into_any(),
        Some(RunResult::Eval(summary)) => view! {
            <p class="meta">{format!("{}: test accuracy {:.2} %, loss {:.4} on {} images", summary.model, summary.overall.accuracy, summary.overall.loss, summary.overall.images)}</p>
            <Heatmap title="Test confusion".into() confusion=summary.confusion forget=0 />
        }.into_any(),
        Some(RunResult::Train(summary)) => view! {
            <p class="meta">{format!("trained model '{}' for {} epochs", summary.model, summary.epochs.len())}</p>
        }.into_any(),
        None => view! { <p class="meta">{format!("{}: {}", run.status.as_str(), run.error.unwrap_or_default())}</p> }.into_any(),
    };
    view! { <div class="run" data-run=run.id><h3>{title}</h3>{body}</div> }.into_any()
}

#[component]
pub fn Results() -> impl IntoView {
    let workbench = expect_context::<Workbench>();
    view! {
        <h2>"Results"</h2>
        <div id="results">
            {move || match workbench.shown.get() {
                Some(run) => run_view(run),
                None => view! { <p class="hint">"Pick a class and press Forget; the results appear here."</p> }.into_any(),
            }}
        </div>
    }
}
