//! The page: its shared state and its layout.

use leptos::prelude::*;
use unlearn_shared::api::{ClassId, Health, ModelInfo, ProgressEvent, PublicLimits, Run, RunEvent, RunId, RunRequest, RunStatus, Subsample, DEFAULT_MODEL};

use crate::api::{self, ApiResult};
use crate::views::{Classify, Compare, Controls, ErrorBanner, History, Results, RunProgress};

/// A run the page is following.
#[derive(Debug, Clone, PartialEq)]
pub struct Active {
    pub id: RunId,
    pub status: RunStatus,
    pub progress: Option<ProgressEvent>,
}

/// What the views share, provided as context.
#[derive(Clone, Copy)]
pub struct Workbench {
    /// The last failure of something the user did, for the banner.
    pub error: RwSignal<Option<String>>,
    /// The base models the server offers.
    pub models: LocalResource<ApiResult<Vec<ModelInfo>>>,
    /// The model the user picked, if any.
    pub picked_model: RwSignal<Option<String>>,
    /// The model runs are made from and the browser compares against: as `chosen_model` picks it.
    pub model: Memo<Option<String>>,
    pub class: RwSignal<ClassId>,
    pub active: RwSignal<Option<Active>>,
    /// The followed run's id and status without its progress: what the server's lists change
    /// with, so they refetch when it does.
    pub followed: Memo<Option<(RunId, RunStatus)>>,
    /// The run whose results are shown.
    pub shown: RwSignal<Option<Run>>,
    /// Up to two runs picked in the history for a side-by-side comparison.
    pub compared: RwSignal<Vec<RunId>>,
}

/// The user's pick while the server still lists it, else the repository's reference model
/// where the server has it (a test server may have only a tiny one), else the first listed.
fn chosen_model(models: &[ModelInfo], picked: Option<String>) -> Option<String> {
    let listed = |id: &str| models.iter().any(|m| m.id == id);
    picked.filter(|id| listed(id)).or_else(|| listed(DEFAULT_MODEL).then(|| DEFAULT_MODEL.to_owned())).or_else(|| models.first().map(|m| m.id.clone()))
}

impl Workbench {
    fn new() -> Self {
        let active = RwSignal::new(None::<Active>);
        let followed = Memo::new(move |_| active.with(|a| a.as_ref().map(|a| (a.id, a.status))));
        // A training run, from here or elsewhere, adds a model.
        let models = LocalResource::new(move || {
            followed.track();
            api::models()
        });
        let picked_model = RwSignal::new(None);
        let model = Memo::new(move |_| models.map(|listed| chosen_model(listed.as_deref().ok()?, picked_model.get())).flatten());
        Self {
            error: RwSignal::new(None),
            models,
            picked_model,
            model,
            class: RwSignal::new(ClassId::new(3).expect("CIFAR-10 has a class 3")),
            active,
            followed,
            shown: RwSignal::new(None),
            compared: RwSignal::new(Vec::new()),
        }
    }

    pub fn fail(&self, error: impl Into<String>) {
        self.error.set(Some(error.into()));
    }

    /// Submits `request`, follows the run until it ends, then shows it.
    pub async fn run(self, request: RunRequest) {
        let accepted = match api::submit(&request).await {
            Ok(accepted) => accepted,
            Err(error) => return self.fail(error),
        };
        self.active.set(Some(Active { id: accepted.id, status: accepted.status, progress: None }));
        if let Err(error) = api::follow(accepted.id, |event| self.record(event)).await {
            self.fail(error);
        }
        self.active.set(None);
    }

    /// One event of the followed run.
    fn record(self, event: RunEvent) {
        match event {
            RunEvent::Status(status) => self.active.update(|active| {
                if let Some(active) = active {
                    active.status = status;
                }
            }),
            RunEvent::Progress(progress) => self.active.update(|active| {
                if let Some(active) = active {
                    active.progress = Some(progress);
                }
            }),
            RunEvent::Done(run) => {
                if let Some(error) = &run.error {
                    self.fail(format!("run {} failed: {error}", run.id));
                }
                self.shown.set(Some(*run));
            }
        }
    }
}

/// How often the page asks the server how it is.
const HEALTH_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// The health badge's words for the last answer.
fn health_badge(health: Option<&ApiResult<Health>>) -> String {
    match health {
        Some(Ok(h)) => format!("server on {} · queue {}/{}", h.device.as_deref().unwrap_or("starting"), h.queue_length, h.queue_capacity),
        Some(Err(e)) => format!("connection lost ({e}); trying again every {} s", HEALTH_EVERY.as_secs()),
        None => "connecting…".into(),
    }
}

/// On a public server, what a visitor may do.
fn demo_notice(limits: &PublicLimits) -> String {
    let mut notice = format!(
        "A public demo: each visitor may make {} requests a minute and have {} runs queued or running at once",
        limits.api_requests_per_minute, limits.runs_at_once
    );
    if let Some(Subsample { forget: Some(forget), full: Some(full), test: Some(test) }) = limits.subsample {
        notice += &format!(", each on at most {forget} images of the forget class, {full} of the training set and {test} test images");
    }
    notice + ". Training and importing models need the server's token."
}

#[component]
pub fn App() -> impl IntoView {
    provide_context(Workbench::new());
    // Asked again every few seconds, so that the badge tells when the server goes away and
    // when it is back.
    let asked = RwSignal::new(0u32);
    set_interval(move || asked.update(|n| *n += 1), HEALTH_EVERY);
    let asking = LocalResource::new(move || {
        asked.track();
        api::health()
    });
    // The last answer stays shown while the next is on its way.
    let health = RwSignal::new(None::<ApiResult<Health>>);
    Effect::new(move |_| {
        if let Some(answer) = asking.get() {
            health.set(Some(answer));
        }
    });
    let device = move || health.with(|h| health_badge(h.as_ref()));
    let lost = move || health.with(|h| matches!(h, Some(Err(_))));
    let notice = move || health.with(|h| h.as_ref().and_then(|h| h.as_ref().ok()?.public_limits).map(|limits| demo_notice(&limits)));
    view! {
        <header>
            <h1>"Unlearning workbench"</h1>
            <p class="subtitle">"Forget a CIFAR-10 class from a ResNet18 with Selective Synaptic Dampening, and see what changed."</p>
            <span class="badge" class:lost=lost id="health" role="status">{device}</span>
            {move || notice().map(|text| view! { <p class="notice" id="demo">{text}</p> })}
        </header>
        <ErrorBanner/>
        <main>
            <section class="panel"><Controls/><RunProgress/></section>
            <section class="panel wide"><Results/></section>
            <section class="panel"><Classify/></section>
            <section class="panel"><History/></section>
            <Compare/>
        </main>
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasm_bindgen_test::wasm_bindgen_test;

    #[wasm_bindgen_test]
    fn the_reference_model_is_the_default_where_the_server_has_it() {
        let model = |id: &str| ModelInfo { id: id.into(), provenance: String::new(), test_accuracy: None, width: 4, parameters: 0, digest: String::new() };
        let tiny = [model("tiny")];
        let both = [model("tiny"), model(DEFAULT_MODEL)];
        assert_eq!(chosen_model(&tiny, None).as_deref(), Some("tiny"));
        assert_eq!(chosen_model(&both, None).as_deref(), Some(DEFAULT_MODEL));
        assert_eq!(chosen_model(&both, Some("tiny".into())).as_deref(), Some("tiny"));
        assert_eq!(chosen_model(&tiny, Some("gone".into())).as_deref(), Some("tiny"), "a pick the server no longer lists");
        assert_eq!(chosen_model(&[], None), None);
    }

    #[wasm_bindgen_test]
    fn the_badge_says_when_the_connection_is_lost() {
        let health = Health { version: "1".into(), device: Some("cpu".into()), queue_length: 1, queue_capacity: 16, public: false, public_limits: None };
        assert_eq!(health_badge(Some(&Ok(health))), "server on cpu · queue 1/16");
        let lost = health_badge(Some(&Err("the server cannot be reached: fetch failed".into())));
        assert!(lost.starts_with("connection lost (the server cannot be reached") && lost.ends_with("every 5 s"), "{lost}");
        assert_eq!(health_badge(None), "connecting…");
    }

    #[wasm_bindgen_test]
    fn the_demo_notice_states_the_limits() {
        let mut limits = PublicLimits { api_requests_per_minute: 120, runs_at_once: 2, subsample: None };
        let notice = demo_notice(&limits);
        assert!(notice.contains("120 requests a minute") && notice.contains("2 runs") && !notice.contains("images"), "{notice}");
        limits.subsample = Some(Subsample { forget: Some(256), full: Some(1024), test: Some(500) });
        let notice = demo_notice(&limits);
        assert!(notice.contains("256 images of the forget class, 1024 of the training set and 500 test images"), "{notice}");
    }
}
