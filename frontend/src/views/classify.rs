use leptos::prelude::*;
use unlearn_shared::api::RunId;
use wasm_bindgen::JsCast;

use super::status::Failed;
use crate::api;
use crate::app::Workbench;
use crate::inference::{self, Engine, ModelCache, Models, Prediction};
use crate::pixels;

#[derive(Clone, PartialEq)]
struct Outcome {
    image: String,
    base: Prediction,
    unlearned: Option<(RunId, Prediction)>,
}

/// Classifies a gallery image or the user's own; the latest image's outcome is shown.
type Classifier = Action<String, Result<Outcome, String>>;

/// Where a classification is: the image, the engine it runs on, and how the models'
/// downloads go.
#[derive(Clone, Copy)]
struct Classifying {
    models: ModelCache,
    engine: Option<Engine>,
    /// The download under way, in words.
    download: RwSignal<Option<String>>,
}

/// How far the download of `what` has come.
fn download_line(what: &str, received: u64, total: Option<u64>) -> String {
    let mib = |bytes: u64| bytes as f64 / (1 << 20) as f64;
    match total.filter(|&total| total >= received && total > 0) {
        Some(total) => format!("downloading {what}: {:.1} of {:.1} MB ({:.0} %)", mib(received), mib(total), 100.0 * received as f64 / total as f64),
        None => format!("downloading {what}: {:.1} MB", mib(received)),
    }
}

/// `image` classified by the base model and, where the shown run has one, the unlearned model,
/// on the chosen engine or else the best this browser has.
async fn classify(workbench: Workbench, with: Classifying, image: String) -> Result<Outcome, String> {
    let engine = match with.engine {
        Some(engine) => engine,
        None => Engine::available().await[0],
    };
    let rgba = pixels::rgba_32(&image).await?;
    let base_model = workbench.model.get_untracked().ok_or("the server offers no base model")?;
    let load = |what: &'static str, url: String| async move {
        let model = Models::get(with.models, engine, &url, |received, total| with.download.set(Some(download_line(what, received, total)))).await;
        with.download.set(None);
        model
    };
    let base = load("the base model", format!("/api/models/{base_model}/weights")).await?;
    let base = inference::predict(&base, &rgba).await?;
    let unlearned = match workbench.shown.get_untracked().filter(|r| r.has_weights) {
        Some(run) => {
            let model = load("the unlearned model", format!("/api/runs/{}/weights", run.id)).await?;
            Some((run.id, inference::predict(&model, &rgba).await?))
        }
        None => None,
    };
    Ok(Outcome { image, base, unlearned })
}

/// Classify a gallery image or the user's own, with the base and the unlearned model, here
/// in the browser.
#[component]
pub fn Classify() -> impl IntoView {
    let workbench = expect_context::<Workbench>();
    let models: ModelCache = StoredValue::new_local(Models::default());
    let engines = LocalResource::new(Engine::available);
    let picked = RwSignal::new(None::<Engine>);
    // The user's pick, else the best this browser has.
    let engine = move || picked.get().or_else(|| engines.get().and_then(|e| e.first().copied()));
    let download = RwSignal::new(None::<String>);
    let classifier: Classifier =
        Action::new_unsync(move |image: &String| classify(workbench, Classifying { models, engine: picked.get_untracked(), download }, image.clone()));
    let working = classifier.pending();
    let outcome = classifier.value();

    view! {
        <h2>"Try it in your browser"</h2>
        <p class="hint">
            "Runs on " <EnginePicker engines picked engine /> "; images stay on this computer."
            {move || engines.get().map(|e| match e.as_slice() {
                [Engine::Cpu] => " (This browser offers no WebGPU.)",
                [Engine::Cpu, Engine::WebGpu] => " (This browser's WebGPU runs in software, slower than the CPU.)",
                _ => "",
            })}
        </p>
        <Gallery classifier />
        <Upload classifier />
        {move || working.get().then(|| view! {
            <p class="hint" id="classifying" role="status">{move || download.get().unwrap_or_else(|| "classifying…".into())}</p>
        })}
        <div id="predictions">
            <ErrorBoundary fallback=|errors| view! { <Failed errors /> }>
                {move || outcome.get().map(|outcome| outcome.map(|outcome| view! { <Predictions outcome /> }))}
            </ErrorBoundary>
        </div>
    }
}

/// Test images of the picked class.
#[component]
fn Gallery(classifier: Classifier) -> impl IntoView {
    let workbench = expect_context::<Workbench>();
    let samples = LocalResource::new(move || api::samples(Some(workbench.class.get().index()), 12));
    let thumbs = move || {
        samples.get().map(|samples| {
            samples.map(|samples| {
                samples.into_iter().map(|sample| {
                    let url = sample.url.clone();
                    let name = format!("classify test image {} (a {})", sample.index, sample.class);
                    view! { <button class="thumb" title=sample.class.clone() aria-label=name on:click=move |_| { classifier.dispatch(url.clone()); }><img src=sample.url alt=format!("test image of a {}", sample.class) /></button> }
                }).collect_view()
            })
        })
    };
    view! {
        <ErrorBoundary fallback=|errors| view! { <Failed errors /> }>
            <div class="gallery" id="gallery">{thumbs}</div>
        </ErrorBoundary>
    }
}

/// The user's own image, picked or dropped; it is read here and sent nowhere.
#[component]
fn Upload(classifier: Classifier) -> impl IntoView {
    let workbench = expect_context::<Workbench>();
    let classify_file = move |file: Option<web_sys::File>| match file.map(|f| pixels::file_url(&f)) {
        Some(Ok(url)) => {
            classifier.dispatch(url);
        }
        Some(Err(error)) => workbench.fail(error),
        None => {}
    };
    let on_pick = move |ev: leptos::ev::Event| {
        let input: web_sys::HtmlInputElement = ev.target().expect("input").unchecked_into();
        classify_file(input.files().and_then(|files| files.get(0)));
    };
    let on_drop = move |ev: leptos::ev::DragEvent| {
        ev.prevent_default();
        classify_file(ev.data_transfer().and_then(|d| d.files()).and_then(|files| files.get(0)));
    };
    view! {
        <label class="drop" on:dragover=|ev: leptos::ev::DragEvent| ev.prevent_default() on:drop=on_drop>
            "Drop an image here, or " <input id="upload" type="file" accept="image/*" on:change=on_pick />
        </label>
    }
}

#[component]
fn Predictions(outcome: Outcome) -> impl IntoView {
    view! {
        <div class="predictions">
            <img class="query" src=outcome.image alt="the image classified" />
            <PredictionList title="Base model".into() prediction=outcome.base />
            {match outcome.unlearned {
                Some((id, p)) => view! { <PredictionList title=format!("Unlearned (run {id})") prediction=p /> }.into_any(),
                None => view! { <p class="hint">"Run an unlearning to compare with the unlearned model."</p> }.into_any(),
            }}
        </div>
    }
}

/// The engines this browser has; the choice applies to the next image.
#[component]
fn EnginePicker(
    engines: LocalResource<Vec<Engine>>,
    picked: RwSignal<Option<Engine>>,
    engine: impl Fn() -> Option<Engine> + Copy + Send + Sync + 'static,
) -> impl IntoView {
    let on_change = move |ev: leptos::ev::Event| {
        let value = event_target_value(&ev);
        picked.set(engines.get_untracked().and_then(|e| e.into_iter().find(|e| e.name() == value)));
    };
    view! {
        <select id="engine" aria-label="Engine that runs the models in this browser" on:change=on_change>
            {move || engines.get().unwrap_or_default().into_iter().map(|e| view! {
                <option value=e.name() selected=move || engine() == Some(e)>{e.name()}</option>
            }).collect_view()}
        </select>
    }
}

#[component]
fn PredictionList(title: String, prediction: Prediction) -> impl IntoView {
    view! {
        <div class="prediction">
            <h4>{title}</h4>
            <ol>
                {prediction.top.into_iter().map(|g| view! {
                    <li><span class="class-name">{g.class}</span>
                        <meter min="0" max="1" value=g.probability aria-label=format!("probability of {}", g.class)></meter>
                        <span>{format!("{:.1} %", g.probability * 100.0)}</span></li>
                }).collect_view()}
            </ol>
            <p class="time">{format!("{:.1} ms on {}", prediction.milliseconds, prediction.engine.name())}</p>
        </div>
    }
}
