use leptos::prelude::*;
use unlearn_shared::api::{Alpha, ClassId, Layers, ModelInfo, Preset, RunRequest, SsdSettings, UnlearnRequest};

use crate::api;
use crate::app::Workbench;

/// The SSD settings as typed: text, so that a half-typed number stays on screen to be fixed.
#[derive(Clone, Copy)]
struct SettingsForm {
    alpha: RwSignal<String>,
    lambda: RwSignal<String>,
    layers: RwSignal<Layers>,
}

impl SettingsForm {
    fn new(preset: Preset) -> Self {
        let settings = preset.settings();
        Self { alpha: RwSignal::new(settings.alpha.to_string()), lambda: RwSignal::new(settings.lambda.to_string()), layers: RwSignal::new(settings.layers) }
    }

    fn apply(self, preset: Preset) {
        let settings = preset.settings();
        self.alpha.set(settings.alpha.to_string());
        self.lambda.set(settings.lambda.to_string());
        self.layers.set(settings.layers);
    }

    /// The settings typed, the rest as the project's default; or why they are not settings.
    fn settings(self) -> Result<SsdSettings, String> {
        let lambda = self.lambda.get().trim().parse().map_err(|_| "lambda must be a positive number".to_string())?;
        let settings = SsdSettings { alpha: self.alpha.get().parse::<Alpha>()?, lambda, layers: self.layers.get(), ..SsdSettings::default() };
        settings.validate()?;
        Ok(settings)
    }
}

/// Model, class and SSD settings, and the buttons that start runs.
#[component]
pub fn Controls() -> impl IntoView {
    let form = SettingsForm::new(Preset::Default);
    let settings = Memo::new(move |_| form.settings());
    view! {
        <h2>"Forget a class"</h2>
        <ModelPicker/>
        <ClassPicker/>
        <SettingsFields form settings />
        <RunButtons settings />
    }
}

/// The server's models; the pick applies to runs and to the browser's base model.
#[component]
fn ModelPicker() -> impl IntoView {
    let workbench = expect_context::<Workbench>();
    let listed = move || workbench.models.get().and_then(Result::ok).unwrap_or_default();
    view! {
        <label>"Base model "
            <select id="model" on:change=move |ev| workbench.picked_model.set(Some(event_target_value(&ev)))>
                {move || workbench.models.get().is_none().then(|| view! { <option>"loading…"</option> })}
                <For each=listed key=|model| (model.id.clone(), model.digest.clone()) let(model)>
                    <ModelOption model />
                </For>
            </select>
        </label>
        {move || workbench.models.get().and_then(Result::err).map(|error| view! { <p class="invalid">{error}</p> })}
    }
}

#[component]
fn ModelOption(model: ModelInfo) -> impl IntoView {
    let workbench = expect_context::<Workbench>();
    let accuracy = model.test_accuracy.map(|a| format!(" · {a:.1} %")).unwrap_or_default();
    let label = format!("{}{accuracy}", model.id);
    let id = model.id.clone();
    let chosen = move || workbench.model.with(|chosen| chosen.as_deref() == Some(id.as_str()));
    view! { <option value=model.id title=model.provenance prop:selected=chosen>{label}</option> }
}

/// The classes as a radio group, each with a test image of it.
#[component]
fn ClassPicker() -> impl IntoView {
    let workbench = expect_context::<Workbench>();
    let thumbnails = LocalResource::new(|| api::samples(None, 100));
    let thumbnail = move |class: ClassId| {
        thumbnails
            .get()
            .and_then(Result::ok)
            .and_then(|samples| samples.into_iter().find(|s| s.label == class.index()))
            .map(|s| view! { <img src=s.url alt="" /> })
    };
    view! {
        <fieldset class="classes">
            <legend>"Class to forget"</legend>
            {ClassId::all().map(|class| view! {
                <label class="class" class:picked=move || workbench.class.get() == class data-class=class.name()>
                    <input type="radio" name="forget-class" value=class.name() prop:checked=move || workbench.class.get() == class
                           on:change=move |_| workbench.class.set(class) />
                    {move || thumbnail(class)}
                    <span>{class.name()}</span>
                </label>
            }).collect_view()}
        </fieldset>
    }
}

/// Alpha, lambda and the layers, with the presets that fill them in.
#[component]
fn SettingsFields(form: SettingsForm, settings: Memo<Result<SsdSettings, String>>) -> impl IntoView {
    let SettingsForm { alpha, lambda, layers } = form;
    let pick_layers = move |ev| {
        if let Some(choice) = Layers::ALL.into_iter().find(|l| l.describe() == event_target_value(&ev)) {
            layers.set(choice);
        }
    };
    view! {
        <div class="settings">
            <label title="a positive number, or auto to calibrate it for the class">"α (selection) "
                <input id="alpha" type="text" inputmode="decimal" size="6" prop:value=move || alpha.get()
                on:input=move |ev| alpha.set(event_target_value(&ev)) /></label>
            <label>"λ (dampening) " <input id="lambda" type="number" step="any" min="0" prop:value=move || lambda.get()
                on:input=move |ev| lambda.set(event_target_value(&ev)) /></label>
            <label>"Dampen "
                <select id="layers" on:change=pick_layers>
                    {Layers::ALL.map(|choice| view! { <option value=choice.describe() selected=move || layers.get() == choice>{choice.describe()}</option> }).collect_view()}
                </select>
            </label>
            <div class="presets" role="group" aria-label="Presets">
                {Preset::ALL.map(|preset| view! {
                    <button class="secondary" on:click=move |_| form.apply(preset)>{preset.describe()}</button>
                }).collect_view()}
            </div>
            {move || settings.get().err().map(|e| view! { <p class="invalid">{e}</p> })}
        </div>
    }
}

/// Forget the picked class, or each class in turn; one run at a time.
#[component]
fn RunButtons(settings: Memo<Result<SsdSettings, String>>) -> impl IntoView {
    let workbench = expect_context::<Workbench>();
    let start = Action::new_unsync(move |request: &RunRequest| workbench.run(request.clone()));
    let running = start.pending();
    let ready = move || !running.get() && !workbench.busy() && settings.with(Result::is_ok) && workbench.model.with(Option::is_some);
    // What the buttons ask for; `None` while they are disabled.
    let request = move |class: Option<ClassId>| {
        Some(UnlearnRequest { model: workbench.model.get_untracked()?, class, ssd: settings.get_untracked().ok()?, subsample: None })
    };
    let forget = move |_| {
        if let Some(request) = request(Some(workbench.class.get_untracked())) {
            start.dispatch(RunRequest::Unlearn(request));
        }
    };
    let sweep = move |_| {
        if let Some(request) = request(None) {
            start.dispatch(RunRequest::Sweep(request));
        }
    };
    view! {
        <div class="actions">
            <button id="run" disabled=move || !ready() on:click=forget>
                {move || format!("Forget {}", workbench.class.get().name())}
            </button>
            <button id="sweep" class="secondary" disabled=move || !ready() on:click=sweep>"Run all 10 classes"</button>
        </div>
    }
}
