use leptos::prelude::*;
use unlearn_shared::api::{Alpha, ClassId, Layers, RunRequest, SsdSettings, UnlearnRequest};
use unlearn_shared::cifar::CLASSES;

use crate::api;
use crate::app::Workbench;

/// Named settings a user can start from: the project's default and the seed card's.
fn presets() -> [(&'static str, SsdSettings); 2] {
    [("Calibrated α (default)", SsdSettings::default()), ("Seed (α 10, λ 1)", SsdSettings::seed())]
}

fn parse_positive(text: &str, name: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(value) if value.is_finite() && value > 0.0 => Ok(value),
        _ => Err(format!("{name} must be a positive number")),
    }
}

/// Model, class, alpha and lambda, and the buttons that start runs.
#[component]
pub fn Controls() -> impl IntoView {
    let workbench = expect_context::<Workbench>();
    let models = LocalResource::new(api::models);
    let thumbnails = LocalResource::new(|| api::samples(None, 100));
    let defaults = SsdSettings::default();
    let alpha = RwSignal::new(defaults.alpha.to_string());
    let lambda = RwSignal::new(defaults.lambda.to_string());
    let layers = RwSignal::new(defaults.layers);
    let settings = move || Ok::<_, String>((alpha.get().parse::<Alpha>()?, parse_positive(&lambda.get(), "lambda")?));

    let start = move |sweep: bool| {
        let Ok((alpha, lambda)) = settings() else { return };
        let base = UnlearnRequest {
            model: workbench.model.get_untracked(),
            class: (!sweep).then(|| ClassId::new(workbench.class.get_untracked()).expect("picker offers classes 0-9")),
            alpha,
            lambda,
            layers: layers.get_untracked(),
            importance_batch: defaults.importance_batch,
            full_order: defaults.full_order,
            subsample: None,
        };
        let request = if sweep { RunRequest::Sweep(base) } else { RunRequest::Unlearn(base) };
        leptos::task::spawn_local(async move {
            match api::submit(&request).await {
                Ok(accepted) => workbench.follow(accepted.id),
                Err(error) => workbench.fail(error),
            }
        });
    };

    let model_options = move || match models.get() {
        Some(Ok(models)) => models
            .into_iter()
            .map(|m| {
                let accuracy = m.test_accuracy.map(|a| format!(" · {a:.1} %")).unwrap_or_default();
                let label = format!("{}{accuracy}", m.id);
                view! { <option value=m.id.clone() title=m.provenance selected=m.id == workbench.model.get_untracked()>{label}</option> }
            })
            .collect_view()
            .into_any(),
        Some(Err(error)) => {
            workbench.fail(error);
            ().into_any()
        }
        None => view! { <option>"loading…"</option> }.into_any(),
    };
    let thumbnail = move |class: usize| {
        thumbnails.get().and_then(|r| r.ok()).and_then(|samples| samples.into_iter().find(|s| s.label == class)).map(|s| view! { <img src=s.url alt="" /> })
    };
    let busy = move || workbench.active.get().is_some();

    view! {
        <h2>"Forget a class"</h2>
        <label>"Base model "
            <select id="model" on:change=move |ev| workbench.model.set(event_target_value(&ev))>{model_options}</select>
        </label>
        <div class="classes" role="radiogroup" aria-label="Class to forget">
            {CLASSES.iter().enumerate().map(|(class, name)| view! {
                <button class="class" class:picked=move || workbench.class.get() == class
                        data-class=*name on:click=move |_| workbench.class.set(class)>
                    {move || thumbnail(class)}
                    <span>{*name}</span>
                </button>
            }).collect_view()}
        </div>
        <div class="settings">
            <label title="a positive number, or auto to calibrate it for the class">"α (selection) "
                <input id="alpha" type="text" inputmode="decimal" size="6" prop:value=move || alpha.get()
                on:input=move |ev| alpha.set(event_target_value(&ev)) /></label>
            <label>"λ (dampening) " <input id="lambda" type="number" step="any" min="0" prop:value=move || lambda.get()
                on:input=move |ev| lambda.set(event_target_value(&ev)) /></label>
            <label>"Dampen "
                <select id="layers" on:change=move |ev| {
                    if let Some(choice) = Layers::ALL.into_iter().find(|l| l.describe() == event_target_value(&ev)) { layers.set(choice); }
                }>
                    {Layers::ALL.map(|choice| view! { <option value=choice.describe() selected=move || layers.get() == choice>{choice.describe()}</option> }).collect_view()}
                </select>
            </label>
            <div class="presets">
                {presets().map(|(name, preset)| view! {
                    <button class="secondary" on:click=move |_| {
                        alpha.set(preset.alpha.to_string());
                        lambda.set(preset.lambda.to_string());
                        layers.set(preset.layers);
                    }>{name}</button>
                }).collect_view()}
            </div>
            {move || settings().err().map(|e| view! { <p class="invalid">{e}</p> })}
        </div>
        <div class="actions">
            <button id="run" disabled=move || busy() || settings().is_err() on:click=move |_| start(false)>
                {move || format!("Forget {}", CLASSES[workbench.class.get()])}
            </button>
            <button id="sweep" class="secondary" disabled=move || busy() || settings().is_err() on:click=move |_| start(true)>"Run all 10 classes"</button>
        </div>
    }
}
