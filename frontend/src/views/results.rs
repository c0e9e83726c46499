//! A run's results: the seed card's table with what each figure rests on, its exports, the
//! heatmaps and bars, the membership picture and the forget-class images still recognised.

use leptos::prelude::*;
use unlearn_shared::api::{
    relearning_protocol, run_csv, run_markdown, settings_line, table_rows, AccLoss, RelearnCheckpoint, Run, RunId, RunResult, RunStatus, UnlearnReport,
    LINEAR_PROBE, LOGIT_MASK, PROBE_COLUMN, RELEARNING, RELEARN_COLUMN, TABLE_HEADER, UNLEARNING_TIME,
};
use unlearn_shared::cifar::CLASSES;

use super::charts::{ClassBars, EntropyChart, Heatmap, Series};
use super::status::duration;
use crate::app::Workbench;

/// The seed card's table, with copy as Markdown and downloads as CSV and JSON.
#[component]
pub fn SeedTable(run: RunId, reports: Vec<UnlearnReport>) -> impl IntoView {
    let rows = table_rows(&reports)
        .map(|row| {
            let cells = row.cells().into_iter().enumerate().map(|(at, cell)| {
                let detail = cell.detail.map(|detail| view! { <span class="cell-detail">{detail}</span> });
                let text = cell.text;
                if at == 0 {
                    view! { <th scope="row">{text}{detail}</th> }.into_any()
                } else {
                    view! { <td>{text}{detail}</td> }.into_any()
                }
            });
            view! { <tr class=row.css_class() class:collapsed=row.collapsed()>{cells.collect_view()}</tr> }
        })
        .collect_view();
    let header = TABLE_HEADER.map(|name| {
        let title = match name {
            "Unlearning time (s)" => Some(UNLEARNING_TIME),
            PROBE_COLUMN => Some(LINEAR_PROBE),
            RELEARN_COLUMN => Some(RELEARNING),
            _ => None,
        };
        view! { <th scope="col" title=title>{name}</th> }
    });
    view! {
        <div class="table-scroll">
            <table class="seed-table">
                <caption>{format!("Run {run} on the test set: accuracy in percent (mean loss), with a 95 % Wilson interval")}</caption>
                <thead><tr>{header.collect_view()}</tr></thead>
                <tbody>{rows}</tbody>
            </table>
        </div>
        <Exports run reports />
    }
}

/// Copy as Markdown, and the CSV and per-class JSON as files named by the run.
#[component]
fn Exports(run: RunId, reports: Vec<UnlearnReport>) -> impl IntoView {
    let workbench = expect_context::<Workbench>();
    let markdown = run_markdown(run, &reports);
    let data_url = |kind: &str, text: &str| format!("data:{kind};charset=utf-8,{}", js_sys::encode_uri_component(text));
    let csv = data_url("text/csv", &run_csv(run, &reports));
    let json = data_url("application/json", &class_json(run, &reports));
    let copied = RwSignal::new(false);
    let copy = move |_| {
        let Some(window) = web_sys::window() else { return };
        let promise = window.navigator().clipboard().write_text(&markdown);
        leptos::task::spawn_local(async move {
            match wasm_bindgen_futures::JsFuture::from(promise).await {
                Ok(_) => {
                    copied.set(true);
                    crate::api::sleep_ms(3000).await;
                    copied.set(false);
                }
                Err(_) => workbench.fail("the browser did not allow copying to the clipboard"),
            }
        });
    };
    view! {
        <div class="table-actions">
            <button class="secondary" on:click=copy>"Copy as Markdown"</button>
            <a class="button secondary" href=csv download=format!("run-{run}.csv")>"Download CSV"</a>
            <a class="button secondary" href=json download=format!("run-{run}-classes.json")>"Per-class JSON"</a>
            <span class="copied" role="status">{move || copied.get().then_some("Copied to the clipboard")}</span>
        </div>
    }
}

/// Per-class accuracy and both confusion matrices of every report, as JSON.
fn class_json(run: RunId, reports: &[UnlearnReport]) -> String {
    let reports: Vec<_> = reports
        .iter()
        .map(|r| {
            serde_json::json!({
                "model": r.model,
                "forget_class": CLASSES[r.forget_class],
                "classes": CLASSES,
                "test_images": r.before.test.overall.images,
                "per_class_accuracy": { "before": r.before.test.per_class_accuracy, "after": r.after.test.per_class_accuracy },
                "confusion_true_by_predicted": { "before": r.before.test.confusion, "after": r.after.test.confusion },
            })
        })
        .collect();
    serde_json::to_string_pretty(&serde_json::json!({ "run": run, "reports": reports })).unwrap_or_default()
}

/// A warning for a report that lost more than its class.
fn collapse_warning(report: &UnlearnReport) -> Option<impl IntoView> {
    report.collapsed().then(|| {
        let (before, after) = (report.before.test.split.retain.accuracy, report.after.test.split.retain.accuracy);
        view! {
            <p class="warning collapse" role="note">
                {format!(
                    "Collapsed: retain accuracy fell from {before:.1} % to {after:.1} % ({:.1} points). The model lost more than {}; \
                     try a narrower scope (the default preset) or a larger α.",
                    report.retain_drop(),
                    CLASSES[report.forget_class]
                )}
            </p>
        }
    })
}

/// One unlearning report in full: settings, table, heatmaps, bars, membership, images.
#[component]
pub fn ReportView(run: RunId, report: UnlearnReport) -> impl IntoView {
    let forget = report.forget_class;
    let calibration = report.calibration.as_ref().map(|c| {
        format!(
            "α calibrated: the largest α whose model recognises at most {} % of {} forget-class training images{}",
            c.target_forget_accuracy,
            c.images,
            if c.reached { "" } else { " (not reached; the closest was used)" }
        )
    });
    let timing = format!("Unlearning {:.1} s ({UNLEARNING_TIME}). Phases: {}", report.timings.unlearn_s(), report.timings);
    let dampened = format!(
        "Dampened {} of {} parameters ({:.4} %).",
        report.dampened.selected,
        report.dampened.total,
        100.0 * report.dampened.selected as f64 / report.dampened.total.max(1) as f64
    );
    let before = &report.before.test;
    let after = &report.after.test;
    let bars = [
        Series { label: "before".into(), values: before.per_class_accuracy.clone() },
        Series { label: "after".into(), values: after.per_class_accuracy.clone() },
    ];
    view! {
        {collapse_warning(&report)}
        <p class="meta">{settings_line(&report)}</p>
        {calibration.map(|text| view! { <p class="meta">{text}</p> })}
        <p class="meta">{dampened}</p>
        <SeedTable run reports=vec![report.clone()] />
        <div class="charts">
            <Heatmap title="Test confusion before".into() confusion=before.confusion.clone() forget=Some(forget) />
            <Heatmap title="Test confusion after".into() confusion=after.confusion.clone() forget=Some(forget) />
            <ClassBars title="Test accuracy per class".into() series=bars forget=Some(forget) />
        </div>
        <Membership report=report.clone() />
        <ForgettingOrHiding report=report.clone() />
        <StillRecognised report=report.clone() />
        <p class="meta">{timing}</p>
    }
}

/// The membership attack's verdicts and the entropies it read.
#[component]
fn Membership(report: UnlearnReport) -> impl IntoView {
    let m = &report.membership;
    let text = format!(
        "Membership attack: of {} training images of {}, {:.1} % were called members (seen in training) before and {:.1} % after. \
         It is a logistic regression on the softmax entropy, fitted on the retained classes' training images (members) against test \
         images (non-members); a model that truly forgot the class makes its training images look unseen, like a retrained model's.",
        m.images, CLASSES[report.forget_class], m.before, m.after
    );
    view! {
        <div class="membership">
            <p class="meta">{text}</p>
            {m.entropy.clone().map(|histograms| view! { <EntropyChart histograms /> })}
        </div>
    }
}

/// Whether the run forgot the class or hid it: the logit mask's row, the linear probe and the
/// relearning attack, read for the user.
#[component]
fn ForgettingOrHiding(report: UnlearnReport) -> impl IntoView {
    let class = CLASSES[report.forget_class];
    let mask = report.logit_mask.as_ref().map(|_| format!("The logit mask row is {LOGIT_MASK}: what hiding {class} at the output achieves."));
    let probe = report.probe.map(|p| {
        let (before, after) = (p.before.forget, p.after.forget);
        let own = report.after.test.split.forget;
        let verdict = if clearly_below(&after, &before) {
            format!("The probe finds less of {class} in the unlearned model's features: the unlearning reached past the output layer.")
        } else if clearly_below(&own, &report.before.test.split.forget) {
            let like_the_mask = if report.logit_mask.is_some() { ", as the logit mask does," } else { "" };
            format!(
                "The probe finds {class} in the unlearned model's features as well as in the original's: this unlearning hides the class at the \
                 output{like_the_mask} and the features still carry it."
            )
        } else {
            format!(
                "The unlearned model itself still recognises {:.1} % of them, and the probe finds {class} in its features as well as in the \
                 original's: little of the class was removed.",
                own.accuracy
            )
        };
        format!(
            "Linear probe ({} training images): {LINEAR_PROBE}. It recognises {:.1} % of {} {class} test images from the original's features \
             and {:.1} % from the unlearned model's. {verdict}",
            p.train_images, before.accuracy, before.images, after.accuracy
        )
    });
    let relearning = report.relearning.as_ref().and_then(|r| {
        let forget = |points: &[RelearnCheckpoint], at: usize| points.get(at).map(|p| p.split.forget);
        let (start, end) = ((forget(&r.after, 0)?, forget(&r.before, 0)?), (forget(&r.after, r.after.len() - 1)?, forget(&r.before, r.before.len() - 1)?));
        let curve = |points: &[RelearnCheckpoint]| points.iter().map(|p| format!("{:.1}", p.split.forget.accuracy)).collect::<Vec<_>>().join(" → ");
        let steps = r.after.iter().map(|p| p.steps.to_string()).collect::<Vec<_>>().join(", ");
        let verdict = if !clearly_below(&start.0, &start.1) {
            format!("The unlearned model recognised {class} about as well as the original before any step: there was little to relearn.")
        } else if clearly_below(&end.0, &end.1) {
            format!("{class} stays below the original's level: fine-tuning the output layer does not bring it all back.")
        } else {
            format!("{class} comes back to the original's level: the knowledge was hidden, not removed.")
        };
        let retrained =
            report.retrained.as_ref().and_then(|retrained| retrained.relearning.as_deref()).map(|points| format!("; retrained model {} %", curve(points)));
        Some(format!(
            "Relearning attack: {RELEARNING}. Protocol: {}. Forget-class test accuracy after {steps} steps: unlearned model {} %; original {} %{}. {verdict}",
            relearning_protocol(r),
            curve(&r.after),
            curve(&r.before),
            retrained.unwrap_or_default()
        ))
    });
    (mask.is_some() || probe.is_some() || relearning.is_some()).then(|| {
        view! {
            <div class="depth">
                {mask.map(|text| view! { <p class="meta">{text}</p> })}
                {probe.map(|text| view! { <p class="meta probe-verdict">{text}</p> })}
                {relearning.map(|text| view! { <p class="meta relearning-verdict">{text}</p> })}
            </div>
        }
    })
}

/// Whether `a`'s accuracy is below `b`'s beyond chance: their 95 % intervals do not overlap.
fn clearly_below(a: &AccLoss, b: &AccLoss) -> bool {
    matches!((a.interval95(), b.interval95()), (Some((_, high)), Some((low, _))) if high < low)
}

/// Test images of the forget class the unlearned model still calls by their class.
#[component]
fn StillRecognised(report: UnlearnReport) -> impl IntoView {
    const SHOWN_AT_FIRST: usize = 24;
    let class = CLASSES[report.forget_class];
    let all = report.still_recognised.clone();
    let recognised = (report.after.test.split.forget.accuracy / 100.0 * report.after.test.split.forget.images as f64).round() as u64;
    let more = RwSignal::new(false);
    let capped = if (all.len() as u64) < recognised { format!(" (the first {} listed)", all.len()) } else { String::new() };
    let heading = format!("{class} test images still recognised after unlearning: {recognised} of {}{capped}", report.after.test.split.forget.images);
    let count = all.len();
    let images = move || {
        let shown = if more.get() { count } else { count.min(SHOWN_AT_FIRST) };
        all[..shown]
            .iter()
            .map(|&index| view! { <img src=format!("/api/samples/{index}") alt=format!("test image {index}, a {class} still recognised") loading="lazy" /> })
            .collect_view()
    };
    (count > 0).then(|| {
        view! {
            <details class="still-recognised">
                <summary>{heading}</summary>
                <div class="gallery">{images}</div>
                {(count > SHOWN_AT_FIRST).then(|| view! {
                    <button class="secondary" on:click=move |_| more.update(|m| *m = !*m)>
                        {move || if more.get() { "Show fewer".to_owned() } else { format!("Show all {count}") }}
                    </button>
                })}
            </details>
        }
    })
}

/// A sweep's classes at a glance: forget and retain accuracy after unlearning each.
#[component]
fn SweepGrid(reports: Vec<UnlearnReport>) -> impl IntoView {
    let cells = |value: fn(&UnlearnReport) -> String| reports.iter().map(|r| view! { <td class:collapsed=r.collapsed()>{value(r)}</td> }).collect_view();
    view! {
        <div class="table-scroll">
            <table class="sweep-grid">
                <caption>"Each class forgotten in turn: test accuracy after unlearning (percent)"</caption>
                <thead><tr><th scope="col">"Forgotten"</th>{reports.iter().map(|r| view! { <th scope="col">{CLASSES[r.forget_class]}</th> }).collect_view()}</tr></thead>
                <tbody>
                    <tr><th scope="row">"Forget acc"</th>{cells(|r| format!("{:.1}", r.after.test.split.forget.accuracy))}</tr>
                    <tr><th scope="row">"Retain acc"</th>{cells(|r| format!("{:.1}", r.after.test.split.retain.accuracy))}</tr>
                    <tr><th scope="row">"Retain change"</th>{cells(|r| format!("{:+.1}", -r.retain_drop()))}</tr>
                </tbody>
            </table>
        </div>
    }
}

/// The local time of a moment in milliseconds since the epoch: "2026-12-02 18:05".
pub fn clock(ms: i64) -> String {
    let date = js_sys::Date::new(&(ms as f64).into());
    format!("{}-{:02}-{:02} {:02}:{:02}", date.get_full_year(), date.get_month() + 1, date.get_date(), date.get_hours(), date.get_minutes())
}

/// When a run was asked for, how long it waited and how long it ran.
pub fn run_times(run: &Run) -> String {
    let seconds = |from: i64, to: i64| (to - from) as f64 / 1000.0;
    let mut text = format!("submitted {}", clock(run.created_ms));
    if let Some(started) = run.started_ms {
        text += &format!(" · waited {}", duration(seconds(run.created_ms, started)));
        if let Some(finished) = run.finished_ms {
            text += &format!(" · ran {} in all", duration(seconds(started, finished)));
        }
    }
    text
}

/// Why a run did not succeed, and a button that submits it again.
#[component]
fn Ended(run: Run) -> impl IntoView {
    let workbench = expect_context::<Workbench>();
    let reason = run.error.clone().unwrap_or_else(|| "no reason was recorded".into());
    let kept = match &run.result {
        Some(RunResult::Sweep { reports }) => format!(" The {} classes it finished are shown below.", reports.len()),
        _ => String::new(),
    };
    let request = run.request.clone();
    let again = move |_| {
        leptos::task::spawn_local(workbench.run(request.clone()));
    };
    view! {
        <p class="warning ended" role="note">
            {format!("{}: {reason}.{kept}", run.status.as_str())}
            " " <button class="secondary again" disabled=move || workbench.busy() on:click=again>"Run again"</button>
        </p>
    }
}

/// Any run's results, or where it stands.
pub fn run_view(run: Run) -> AnyView {
    let id = run.id;
    let ended = (run.status.is_finished() && run.status != RunStatus::Succeeded).then(|| view! { <Ended run=run.clone() /> });
    let under_way =
        (!run.status.is_finished()).then(|| view! { <p class="meta">{format!("{}: its results appear here when it ends.", run.status.as_str())}</p> });
    let body = match run.result.clone() {
        Some(RunResult::Unlearn(report)) => view! { <ReportView run=id report=*report /> }.into_any(),
        Some(RunResult::Sweep { reports }) => view! {
            {reports.iter().find(|r| r.collapsed()).is_some().then(|| view! {
                <p class="warning collapse" role="note">"Collapsed: for the classes marked, retain accuracy fell by more than 10 points."</p>
            })}
            {reports.first().map(|r| view! { <p class="meta">{settings_line(r)}</p> })}
            <SweepGrid reports=reports.clone() />
            <SeedTable run=id reports=reports />
        }.into_any(),
        Some(RunResult::Eval(summary)) => view! {
            <p class="meta">{format!("{}: test accuracy {:.2} %, loss {:.4} on {} images", summary.model, summary.overall.accuracy, summary.overall.loss, summary.overall.images)}</p>
            <Heatmap title="Test confusion".into() confusion=summary.confusion forget=None />
        }.into_any(),
        Some(RunResult::Train(summary)) => view! {
            <p class="meta">{format!("trained model '{}' for {} epochs", summary.model, summary.epochs.len())}</p>
        }.into_any(),
        None => ().into_any(),
    };
    view! {
        <div class="run" data-run=id>
            <h3>{format!("Run {id}")}</h3>
            <p class="meta times">{run_times(&run)}</p>
            {ended}
            {under_way}
            {body}
        </div>
    }
    .into_any()
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

#[cfg(test)]
mod tests {
    use super::*;
    use unlearn_shared::api::{
        DampenStats, EvalReport, ForgetRetain, Layers, LogitMaskReport, Membership as Attack, ModelReport, ProbeReport, Relearning, SsdSettings, Subsample,
        Timings,
    };
    use wasm_bindgen::JsCast;
    use wasm_bindgen_test::wasm_bindgen_test;

    fn model(forget: f64, retain: f64) -> ModelReport {
        let acc_loss = |accuracy, images| AccLoss { accuracy, loss: 1.0, images };
        let eval = EvalReport {
            overall: acc_loss(retain, 100),
            split: ForgetRetain { forget: acc_loss(forget, 20), retain: acc_loss(retain, 80) },
            per_class_accuracy: vec![50.0; 10],
            confusion: vec![vec![1; 10]; 10],
        };
        ModelReport { test: eval.clone(), train: eval }
    }

    fn report(retain_after: f64) -> UnlearnReport {
        UnlearnReport {
            model: "tiny".into(),
            device: "cpu".into(),
            forget_class: 3,
            settings: SsdSettings::default(),
            alpha: 10.0,
            layers: Layers::All,
            calibration: None,
            subsample: Subsample { forget: Some(64), full: Some(128), test: Some(100) },
            dampened: DampenStats { selected: 5, total: 50 },
            membership: Attack { before: 80.0, after: 20.0, images: 64, entropy: None },
            before: model(90.0, 80.0),
            after: model(5.0, retain_after),
            timings: Timings::default(),
            still_recognised: vec![7],
            retrained: None,
            logit_mask: None,
            probe: None,
            relearning: None,
        }
    }

    fn mounted(report: UnlearnReport) -> (web_sys::Element, impl Drop) {
        let document = leptos::prelude::document();
        let host = document.create_element("div").unwrap();
        document.body().unwrap().append_child(&host).unwrap();
        let handle = leptos::mount::mount_to(host.clone().unchecked_into(), move || {
            Workbench::provide_for_tests();
            view! { <ReportView run=4 report=report.clone() /> }
        });
        (host, handle)
    }

    #[wasm_bindgen_test]
    fn a_collapsed_run_is_flagged_and_a_sound_one_is_not() {
        let (host, _mounted) = mounted(report(60.0));
        let warning = host.query_selector(".warning.collapse").unwrap().expect("a collapse warning").text_content().unwrap();
        assert!(warning.contains("from 80.0 % to 60.0 % (20.0 points)") && warning.contains("cat"), "{warning}");
        let row = host.query_selector("tr.SSD.collapsed").unwrap().expect("the SSD row is marked").text_content().unwrap();
        assert!(row.contains("collapsed: retain −20.0 points"), "{row}");
        assert!(host.query_selector("tr.original.collapsed").unwrap().is_none());

        let (sound, _mounted) = mounted(report(79.0));
        assert!(sound.query_selector(".warning.collapse").unwrap().is_none() && sound.query_selector("tr.collapsed").unwrap().is_none());
    }

    #[wasm_bindgen_test]
    fn every_figure_shows_what_it_rests_on() {
        let (host, _mounted) = mounted(report(79.0));
        let table = host.query_selector(".seed-table").unwrap().unwrap().text_content().unwrap();
        // 5 % of 20 images: one image, with its interval.
        assert!(table.contains("5.00 (1.0000)95 % CI 0.9–23.6") && table.contains("20 / 80"), "{table}");
        assert!(host.query_selector(".seed-table caption").unwrap().is_some() && host.query_selector("th[scope=col]").unwrap().is_some());
        let meta = host.text_content().unwrap();
        assert!(meta.contains("forget-class training images 64, full-set images 128, test images 100"), "the subsample sizes: {meta}");
        let json = class_json(4, &[report(79.0)]);
        let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(parsed["run"], 4);
        assert_eq!(parsed["reports"][0]["confusion_true_by_predicted"]["after"][9][9], 1);
        assert_eq!(parsed["reports"][0]["per_class_accuracy"]["before"].as_array().unwrap().len(), 10);
        let csv = host.query_selector("a[download='run-4.csv']").unwrap().expect("a file name per run").get_attribute("href").unwrap();
        assert!(csv.starts_with("data:text/csv"), "{csv}");
    }

    #[wasm_bindgen_test]
    fn the_mask_row_and_the_probe_say_whether_the_class_was_hidden_or_forgotten() {
        let probe =
            |forget| ForgetRetain { forget: AccLoss { accuracy: forget, loss: 0.5, images: 200 }, retain: AccLoss { accuracy: 85.0, loss: 0.5, images: 1800 } };
        let mut masked = model(0.0, 82.0);
        masked.test.split.forget.loss = f64::INFINITY;
        let hidden = UnlearnReport {
            logit_mask: Some(LogitMaskReport { report: masked, membership: 70.0 }),
            probe: Some(ProbeReport { train_images: 2000, before: probe(90.0), after: probe(88.0) }),
            ..report(79.0)
        };
        let (host, _mounted) = mounted(hidden.clone());
        let row = host.query_selector("tr.logit-mask").unwrap().expect("the logit mask's row").text_content().unwrap();
        assert!(row.starts_with("logit mask") && row.contains("0.00 (∞)") && row.contains("70.0"), "{row}");
        let header = host.query_selector(".seed-table thead").unwrap().unwrap().inner_html();
        assert!(header.contains("Linear probe: forget class acc") && header.contains("penultimate features"), "a column with its meaning: {header}");
        assert!(header.contains("RelearnCheckpoint: forget class acc") && header.contains("fine-tuned"), "{header}");
        let verdict = host.query_selector(".probe-verdict").unwrap().expect("the probe's reading").text_content().unwrap();
        assert!(verdict.contains("90.0 % of 200 cat test images") && verdict.contains("88.0 %") && verdict.contains("hides the class"), "{verdict}");
        assert!(verdict.contains("as the logit mask does"), "{verdict}");

        let forgotten = UnlearnReport { probe: Some(ProbeReport { train_images: 2000, before: probe(90.0), after: probe(20.0) }), ..hidden.clone() };
        let (host, _mounted) = mounted(forgotten);
        let verdict = host.query_selector(".probe-verdict").unwrap().unwrap().text_content().unwrap();
        assert!(verdict.contains("reached past the output layer"), "{verdict}");

        // A model that still calls most of the class by its name hides nothing.
        let mut kept = hidden.clone();
        kept.after.test.split.forget.accuracy = 80.0;
        kept.logit_mask = None;
        let (host, _mounted) = mounted(kept);
        let verdict = host.query_selector(".probe-verdict").unwrap().unwrap().text_content().unwrap();
        assert!(verdict.contains("still recognises 80.0 %") && !verdict.contains("hides"), "{verdict}");
    }

    #[wasm_bindgen_test]
    fn the_relearning_attack_says_whether_the_class_came_back() {
        let split =
            |forget| ForgetRetain { forget: AccLoss { accuracy: forget, loss: 0.5, images: 200 }, retain: AccLoss { accuracy: 85.0, loss: 0.5, images: 1800 } };
        let curve = |points: &[(u32, f64)]| points.iter().map(|&(steps, forget)| RelearnCheckpoint { steps, split: split(forget) }).collect::<Vec<_>>();
        let relearning = |after_end| Relearning {
            train_images: 2000,
            steps: 50,
            batch: 128,
            forget_per_batch: 32,
            learning_rate: 0.01,
            momentum: 0.9,
            before: curve(&[(0, 90.0), (50, 91.0)]),
            after: curve(&[(0, 2.0), (50, after_end)]),
        };
        let came_back = UnlearnReport { relearning: Some(relearning(89.5)), ..report(79.0) };
        let (host, _mounted) = mounted(came_back.clone());
        let row = host.query_selector("tr.SSD").unwrap().unwrap().text_content().unwrap();
        assert!(row.contains("89.50"), "the column holds the last step's figure: {row}");
        let text = host.query_selector(".relearning-verdict").unwrap().expect("the relearning reading").text_content().unwrap();
        assert!(text.contains("after 0, 50 steps: unlearned model 2.0 → 89.5 %; original 90.0 → 91.0 %"), "{text}");
        assert!(text.contains("50 steps of SGD") && text.contains("hidden, not removed"), "{text}");

        let stayed = UnlearnReport { relearning: Some(relearning(30.0)), ..came_back.clone() };
        let (host, _mounted) = mounted(stayed);
        let text = host.query_selector(".relearning-verdict").unwrap().unwrap().text_content().unwrap();
        assert!(text.contains("stays below the original's level"), "{text}");

        // A model that still knew the class before any step had nothing hidden to relearn.
        let mut untouched = relearning(91.0);
        untouched.after[0].split.forget.accuracy = 88.0;
        let (host, _mounted) = mounted(UnlearnReport { relearning: Some(untouched), ..came_back });
        let text = host.query_selector(".relearning-verdict").unwrap().unwrap().text_content().unwrap();
        assert!(text.contains("little to relearn") && !text.contains("hidden, not removed"), "{text}");
    }
}
