//! Past runs, kept current for every viewer, and the comparison of two of them.

use leptos::prelude::*;
use unlearn_shared::api::{Headline, Preset, Run, RunId, RunRequest, RunResult, SsdSettings, UnlearnReport, COLLAPSE_POINTS};
use unlearn_shared::cifar::CLASSES;

use super::charts::{ClassBars, Series};
use super::results::{clock, run_view};
use super::status::{duration, Failed};
use crate::api;
use crate::app::Workbench;

/// The preset `ssd` is, or its settings.
fn preset(ssd: &SsdSettings) -> String {
    match Preset::ALL.into_iter().find(|p| p.settings() == *ssd) {
        Some(preset) => preset.describe().to_owned(),
        None => format!("α {} λ {} on {}", ssd.alpha, ssd.lambda, ssd.layers.describe()),
    }
}

fn describe(run: &Run) -> String {
    match &run.request {
        RunRequest::Unlearn(r) => format!("forget {} · {}", r.class.map_or("?", |c| c.name()), preset(&r.ssd)),
        RunRequest::Sweep(r) => format!("all classes · {}", preset(&r.ssd)),
        RunRequest::Eval(r) => format!("evaluate {}", r.model),
        RunRequest::Train(r) => format!("train {}", r.name),
    }
}

/// A finished run's figures in a few words.
fn headline_text(headline: &Headline) -> String {
    let mut parts = Vec::new();
    if let Some(forget) = headline.forget_accuracy {
        parts.push(format!("forget {forget:.1} %"));
    }
    match (headline.accuracy, headline.classes) {
        (Some(accuracy), 0) => parts.push(format!("test {accuracy:.1} %")),
        (Some(accuracy), _) => parts.push(format!("retain {accuracy:.1} %")),
        (None, _) => {}
    }
    if headline.classes > 1 {
        parts.push(format!("{} classes", headline.classes));
    }
    parts.join(" · ")
}

/// When it was submitted and how long it ran.
fn when(run: &Run) -> String {
    let ran = run.started_ms.zip(run.finished_ms).map(|(start, end)| format!(" · {}", duration((end - start) as f64 / 1000.0)));
    format!("{}{}", clock(run.created_ms), ran.unwrap_or_default())
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

/// Past runs from the server, asked again every few seconds and as the followed run starts
/// and ends, so that every viewer sees runs come and go: open one, or tick two to compare.
#[component]
pub fn History() -> impl IntoView {
    let workbench = expect_context::<Workbench>();
    let asking = LocalResource::new(move || {
        workbench.followed.track();
        workbench.tick.track();
        api::runs()
    });
    // The last list stays shown while the next is on its way, and when one fails.
    let listed = RwSignal::new(None::<Vec<Run>>);
    let failure = RwSignal::new(None::<String>);
    Effect::new(move |_| match asking.get() {
        Some(Ok(page)) => {
            listed.set(Some(page.runs));
            failure.set(None);
        }
        Some(Err(error)) => failure.set(Some(error)),
        None => {}
    });
    let runs = move || listed.get().unwrap_or_default();
    let note = move || match (listed.with(|l| l.as_ref().map(Vec::is_empty)), failure.get()) {
        (_, Some(error)) => Some(view! { <p class="invalid">{format!("the list could not be refreshed: {error}")}</p> }.into_any()),
        (None, None) => Some(view! { <p class="hint">"loading…"</p> }.into_any()),
        (Some(true), None) => Some(view! { <p class="hint">"No runs yet."</p> }.into_any()),
        (Some(false), None) => None,
    };
    view! {
        <h2>"History"</h2>
        {note}
        <ul class="history" aria-label="Runs, newest first">
            // A row shows its run's status and figures, so a change makes a new row.
            <For each=runs key=|run| (run.id, run.status.as_str(), run.headline.map(|h| h.classes)) let(run)>
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
                Ok(run) => workbench.show(run),
                Err(error) => workbench.fail(error),
            }
        });
    };
    let shown = move || workbench.shown.with(|shown| shown.as_ref().is_some_and(|s| s.id == id));
    let collapsed = run.headline.and_then(|h| h.retain_drop).is_some_and(|drop| drop > COLLAPSE_POINTS);
    let figures = run.headline.as_ref().map(headline_text).unwrap_or_default();
    view! {
        <li data-run=id class:shown=shown aria-current=move || shown().then_some("true")>
            <input type="checkbox" aria-label=format!("compare run {id}") prop:checked=move || workbench.compared.with(|picked| picked.contains(&id))
                   on:change=move |_| workbench.compared.update(|picked| toggle(picked, id)) />
            <div class="history-text">
                <button class="link" on:click=open>{format!("#{id} {}", describe(&run))}</button>
                <span class="time">{when(&run)}</span>
                <span class="figures">{figures}</span>
                {collapsed.then(|| view! { <span class="flag">"collapsed"</span> })}
            </div>
            <span class=format!("status {}", run.status.as_str())>{run.status.as_str()}</span>
        </li>
    }
}

/// A figure of two runs and its change.
fn difference_cells(a: Option<f64>, b: Option<f64>, digits: usize) -> impl IntoView {
    let shown = |v: Option<f64>| v.map_or("–".to_owned(), |v| format!("{v:.digits$}"));
    let change = a.zip(b).map_or("–".to_owned(), |(a, b)| format!("{:+.digits$}", b - a));
    view! { <td>{shown(a)}</td><td>{shown(b)}</td><td class="change">{change}</td> }
}

/// Per-class accuracy across the two runs: the whole test set's for two single-class runs;
/// otherwise forget- and retain-class accuracy by the class forgotten, as a sweep's grid reads.
fn comparison_bars(first: &Run, second: &Run, a: &[UnlearnReport], b: &[UnlearnReport]) -> impl IntoView {
    let label = |run: &Run| format!("run {}", run.id);
    if let ([one], [other]) = (a, b) {
        let series = [
            Series { label: label(first), values: one.after.test.per_class_accuracy.clone() },
            Series { label: label(second), values: other.after.test.per_class_accuracy.clone() },
        ];
        return view! { <ClassBars title="Test accuracy per class after unlearning".into() series forget=None /> }.into_any();
    }
    let by_forgotten = |reports: &[UnlearnReport], value: fn(&UnlearnReport) -> f64| {
        (0..CLASSES.len()).map(|class| reports.iter().find(|r| r.forget_class == class).map_or(f64::NAN, value)).collect::<Vec<_>>()
    };
    let chart = |title: &str, value: fn(&UnlearnReport) -> f64| {
        let series = [Series { label: label(first), values: by_forgotten(a, value) }, Series { label: label(second), values: by_forgotten(b, value) }];
        view! { <ClassBars title=title.to_owned() series forget=None /> }
    };
    view! {
        <div class="charts">
            {chart("Forget-class accuracy, by the class forgotten", |r| r.after.test.split.forget.accuracy)}
            {chart("Retain-class accuracy, by the class forgotten", |r| r.after.test.split.retain.accuracy)}
        </div>
    }
    .into_any()
}

/// The two runs' reports by class, in one table with the changes from the first to the second.
#[component]
fn ComparisonTable(first: Run, second: Run) -> impl IntoView {
    let reports = |run: &Run| run.result.as_ref().map(RunResult::reports).unwrap_or_default().to_vec();
    let (a, b) = (reports(&first), reports(&second));
    let by_class = |reports: &[UnlearnReport], class: usize| reports.iter().find(|r| r.forget_class == class).cloned();
    let classes: Vec<usize> = (0..CLASSES.len()).filter(|&c| by_class(&a, c).is_some() || by_class(&b, c).is_some()).collect();
    let rows = classes
        .iter()
        .map(|&class| {
            let (ra, rb) = (by_class(&a, class), by_class(&b, class));
            let figure = |value: fn(&UnlearnReport) -> f64| (ra.as_ref().map(value), rb.as_ref().map(value));
            let (forget_a, forget_b) = figure(|r| r.after.test.split.forget.accuracy);
            let (retain_a, retain_b) = figure(|r| r.after.test.split.retain.accuracy);
            let (mia_a, mia_b) = figure(|r| r.membership.after);
            let (alpha_a, alpha_b) = figure(|r| r.alpha);
            let (time_a, time_b) = figure(|r| r.timings.unlearn_s());
            let collapsed = ra.iter().chain(&rb).any(UnlearnReport::collapsed);
            view! {
                <tr class:collapsed=collapsed>
                    <th scope="row">{CLASSES[class]}</th>
                    {difference_cells(forget_a, forget_b, 2)}
                    {difference_cells(retain_a, retain_b, 2)}
                    {difference_cells(mia_a, mia_b, 1)}
                    {difference_cells(alpha_a, alpha_b, 3)}
                    {difference_cells(time_a, time_b, 1)}
                </tr>
            }
        })
        .collect_view();
    let bars = comparison_bars(&first, &second, &a, &b);
    let settings = |run: &Run| format!("Run {}: {} · {}", run.id, describe(run), when(run));
    let group = |name: &str| view! { <th scope="colgroup" colspan="3">{name.to_owned()}</th> };
    let pair = || view! { <th scope="col">{format!("#{}", first.id)}</th><th scope="col">{format!("#{}", second.id)}</th><th scope="col">"change"</th> };
    if classes.is_empty() {
        return view! { <p class="hint">"Only unlearning runs and sweeps can be compared; pick two of them."</p> }.into_any();
    }
    view! {
        <ul class="compared-runs"><li>{settings(&first)}</li><li>{settings(&second)}</li></ul>
        <div class="table-scroll">
            <table class="comparison">
                <caption>{format!("Run {} against run {} on the test set after unlearning (percent; change = second − first)", first.id, second.id)}</caption>
                <thead>
                    <tr><th scope="col" rowspan="2">"Class"</th>{group("Forget acc")}{group("Retain acc")}{group("MIA (% members)")}{group("α")}{group("Unlearning time (s)")}</tr>
                    <tr>{pair()}{pair()}{pair()}{pair()}{pair()}</tr>
                </thead>
                <tbody>{rows}</tbody>
            </table>
        </div>
        {bars}
        <details class="both-runs">
            <summary>"Both runs in full"</summary>
            <div class="compare">{run_view(first)}{run_view(second)}</div>
        </details>
    }
    .into_any()
}

/// The two runs ticked in the history, compared across the page's width.
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
    let table = move || {
        picked.get().map(|runs| {
            runs.map(|mut runs| {
                (runs.len() == 2).then(|| {
                    let second = runs.pop().expect("two");
                    let first = runs.pop().expect("two");
                    view! { <ComparisonTable first second /> }
                })
            })
        })
    };
    // Brought into view once both runs are there.
    let section = NodeRef::<leptos::html::Section>::new();
    Effect::new(move |_| {
        if picked.with(|runs| matches!(runs, Some(Ok(runs)) if runs.len() == 2)) {
            if let Some(section) = section.get() {
                section.scroll_into_view();
            }
        }
    });
    move || {
        pair().then(|| {
            view! {
                <section class="panel full" id="comparison" node_ref=section>
                    <h2>"Comparison"</h2>
                    <ErrorBoundary fallback=|errors| view! { <Failed errors /> }>{table}</ErrorBoundary>
                </section>
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasm_bindgen_test::wasm_bindgen_test;

    #[wasm_bindgen_test]
    fn a_third_tick_drops_the_oldest() {
        let mut picked = vec![];
        for id in [1, 2, 3] {
            toggle(&mut picked, id);
        }
        assert_eq!(picked, [2, 3]);
        toggle(&mut picked, 2);
        assert_eq!(picked, [3]);
    }

    #[wasm_bindgen_test]
    fn presets_are_named_and_other_settings_spelled_out() {
        assert_eq!(preset(&Preset::Seed.settings()), "Seed (α 10, λ 1)");
        let custom = SsdSettings { lambda: 0.5, ..Preset::Seed.settings() };
        assert_eq!(preset(&custom), "α 10 λ 0.5 on all layers");
    }

    #[wasm_bindgen_test]
    fn headlines_read_as_words() {
        let sweep = Headline { forget_accuracy: Some(1.24), accuracy: Some(90.0), retain_drop: Some(2.0), classes: 10 };
        assert_eq!(headline_text(&sweep), "forget 1.2 % · retain 90.0 % · 10 classes");
        let eval = Headline { forget_accuracy: None, accuracy: Some(84.9), retain_drop: None, classes: 0 };
        assert_eq!(headline_text(&eval), "test 84.9 %");
    }
}
