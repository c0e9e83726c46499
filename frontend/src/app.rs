//! The page: its shared state and its layout.

use leptos::prelude::*;
use unlearn_shared::api::{ClassId, Health, ModelInfo, ProgressEvent, PublicLimits, Run, RunEvent, RunId, RunRequest, RunStatus, Subsample, DEFAULT_MODEL};

use crate::api::{self, ApiResult};
use crate::views::{Classify, Compare, Controls, ErrorBanner, History, Results, RunProgress};

/// Whether the page still hears from the server about the followed run.
#[derive(Debug, Clone, PartialEq)]
pub enum Connection {
    Live,
    /// The event stream broke; the page asks about the run every [`RECONNECT_EVERY`] until
    /// the server answers.
    Lost(String),
}

/// Where a followed run came from: the page blocks new runs only while its own is under way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Submitted,
    /// Opened from the history or a link: someone's run, watched.
    Opened,
}

/// A run the page is following.
#[derive(Debug, Clone, PartialEq)]
pub struct Active {
    pub id: RunId,
    pub origin: Origin,
    pub status: RunStatus,
    pub progress: Option<ProgressEvent>,
    pub connection: Connection,
}

/// What the views share, provided as context.
#[derive(Clone, Copy)]
pub struct Workbench {
    /// The last failure of something the user did, for the banner.
    pub error: RwSignal<Option<String>>,
    /// Seconds since the page opened.
    seconds: RwSignal<u32>,
    /// Seconds between polls: [`POLL_EVERY`], or longer where a public server's rate limit
    /// asks for it.
    poll_every: RwSignal<u32>,
    /// Counts up every `poll_every` seconds: what the health badge and the history refetch
    /// with, so that every viewer of a shared page sees runs start and end.
    pub tick: Memo<u32>,
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
    /// The run whose results are shown; its id is in the page's address.
    pub shown: RwSignal<Option<Run>>,
    /// Up to two runs picked in the history for a comparison.
    pub compared: RwSignal<Vec<RunId>>,
    /// For screen readers: what just happened to the followed run.
    pub announcement: RwSignal<String>,
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
        let seconds = RwSignal::new(0);
        let poll_every = RwSignal::new(POLL_EVERY.as_secs() as u32);
        Self {
            error: RwSignal::new(None),
            seconds,
            poll_every,
            tick: Memo::new(move |_| seconds.get() / poll_every.get().max(1)),
            models,
            picked_model,
            model,
            class: RwSignal::new(ClassId::new(3).expect("CIFAR-10 has a class 3")),
            active,
            followed,
            shown: RwSignal::new(None),
            compared: RwSignal::new(Vec::new()),
            announcement: RwSignal::new(String::new()),
        }
    }

    /// A workbench as context for a component mounted on its own.
    #[cfg(test)]
    pub fn provide_for_tests() {
        provide_context(Self::new());
    }

    pub fn fail(&self, error: impl Into<String>) {
        self.error.set(Some(error.into()));
    }

    /// Whether a run this page submitted is under way.
    pub fn busy(&self) -> bool {
        self.active.with(|a| a.as_ref().is_some_and(|a| a.origin == Origin::Submitted))
    }

    /// Submits `request`, follows the run until it ends, then shows it.
    pub async fn run(self, request: RunRequest) {
        match api::submit(&request).await {
            Ok(accepted) => self.follow(accepted.id, accepted.status, Origin::Submitted).await,
            Err(error) => self.fail(error),
        }
    }

    /// Shows `run`; one still under way is followed live unless the page follows its own.
    pub fn show(self, run: Run) {
        let (id, status) = (run.id, run.status);
        self.shown.set(Some(run));
        let followed = self.active.with_untracked(|a| a.as_ref().is_some_and(|a| a.id == id));
        if !status.is_finished() && !self.busy() && !followed {
            leptos::task::spawn_local(self.follow(id, status, Origin::Opened));
        }
    }

    /// Follows run `id` until it ends, through lost connections, then shows it. Stops early
    /// when the page follows another run instead.
    async fn follow(self, id: RunId, status: RunStatus, origin: Origin) {
        self.active.set(Some(Active { id, origin, status, progress: None, connection: Connection::Live }));
        self.announcement.set(format!("Run {id} {}", status.as_str()));
        let following = move || self.active.with_untracked(|a| a.as_ref().is_some_and(|a| a.id == id));
        loop {
            let broke = match api::follow(id, following, |event| self.record(id, event)).await {
                Ok(()) => break,
                Err(error) => error,
            };
            // The server may be gone for a while, or back without the run: ask until it answers.
            self.set_connection(id, Connection::Lost(broke));
            let run = loop {
                sleep(RECONNECT_EVERY).await;
                if !following() {
                    return;
                }
                let answer = api::run(id).await;
                if !following() {
                    return;
                }
                match answer {
                    Ok(run) => break run,
                    Err(error) => self.set_connection(id, Connection::Lost(error)),
                }
            };
            if run.status.is_finished() {
                self.record(id, RunEvent::Done(Box::new(run)));
                break;
            }
            self.set_connection(id, Connection::Live);
        }
        if following() {
            self.active.set(None);
        }
    }

    fn set_connection(self, id: RunId, connection: Connection) {
        self.active.update(|active| {
            if let Some(active) = active.as_mut().filter(|a| a.id == id) {
                active.connection = connection;
            }
        });
    }

    /// One event of the followed run `id`; nothing once the page follows another.
    fn record(self, id: RunId, event: RunEvent) {
        let Some(origin) = self.active.with_untracked(|a| a.as_ref().filter(|a| a.id == id).map(|a| a.origin)) else { return };
        let update = |change: &dyn Fn(&mut Active)| {
            self.active.update(|active| {
                if let Some(active) = active.as_mut().filter(|a| a.id == id) {
                    change(active);
                }
            })
        };
        match event {
            RunEvent::Status(status) => {
                update(&|active| active.status = status);
                self.announcement.set(format!("Run {id} {}", status.as_str()));
            }
            RunEvent::Progress(progress) => update(&|active| active.progress = Some(progress.clone())),
            RunEvent::Done(run) => {
                if let (RunStatus::Failed, Some(error)) = (run.status, &run.error) {
                    self.fail(format!("run {} failed: {error}", run.id));
                }
                self.announcement.set(format!("Run {id} {}", run.status.as_str()));
                // A run this page submitted is shown when it ends; one opened from the history
                // only while it is still the one shown.
                let still_shown = self.shown.with_untracked(|shown| shown.as_ref().is_some_and(|s| s.id == id));
                if origin == Origin::Submitted || still_shown {
                    self.shown.set(Some(*run));
                }
            }
        }
    }
}

/// How often the page asks about a followed run whose event stream broke.
pub const RECONNECT_EVERY: std::time::Duration = std::time::Duration::from_secs(3);

async fn sleep(duration: std::time::Duration) {
    api::sleep_ms(duration.as_millis() as u32).await;
}

/// The run a page's address names: `?run=12`.
fn run_in_address() -> Option<RunId> {
    let search = web_sys::window()?.location().search().ok()?;
    search.trim_start_matches('?').split('&').find_map(|pair| pair.strip_prefix("run=")?.parse().ok())
}

/// Puts the shown run in the address, so that a reload or a shared link opens it.
fn put_in_address(run: RunId) {
    if let Some(history) = web_sys::window().and_then(|window| window.history().ok()) {
        let _ = history.replace_state_with_url(&wasm_bindgen::JsValue::NULL, "", Some(&format!("?run={run}")));
    }
}

/// How often the page asks the server how it is and what runs it has.
pub const POLL_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Seconds between polls on a public server: each poll makes two API requests, and polling
/// may take at most a third of a visitor's budget.
fn poll_period(limits: Option<&PublicLimits>) -> u32 {
    let least = POLL_EVERY.as_secs() as u32;
    limits.map_or(least, |limits| least.max((2 * 60 * 3u32).div_ceil(limits.api_requests_per_minute.max(1))))
}

/// The health badge's words for the last answer.
fn health_badge(health: Option<&ApiResult<Health>>, every_s: u32) -> String {
    match health {
        Some(Ok(h)) => format!("server on {} · queue {}/{}", h.device.as_deref().unwrap_or("starting"), h.queue_length, h.queue_capacity),
        Some(Err(e)) => format!("connection lost ({e}); trying again every {every_s} s"),
        None => "connecting…".into(),
    }
}

/// On a public server, what a visitor may do.
fn demo_notice(limits: &PublicLimits) -> String {
    let mut notice = format!(
        "A public demo: each visitor may make {} requests a minute and have {} runs queued or running at once",
        limits.api_requests_per_minute, limits.runs_at_once
    );
    let images = |subsample: Option<Subsample>| match subsample {
        Some(Subsample { forget: Some(forget), full: Some(full), test: Some(test) }) => {
            Some(format!("at most {forget} images of the forget class, {full} of the training set and {test} test images"))
        }
        Some(whole) if whole.is_full() => Some("the whole sets".to_owned()),
        _ => None,
    };
    if let Some(classifier) = images(limits.classifier_subsample) {
        notice += &format!("; unlearning on the classifier (the default) reads {classifier} once the model's features are cached");
    }
    if let Some(whole_model) = images(limits.subsample) {
        notice += &format!("; runs of the whole model read {whole_model}");
    }
    notice + ". Training and importing models need the server's token."
}

#[component]
pub fn App() -> impl IntoView {
    let workbench = Workbench::new();
    provide_context(workbench);
    // Asked again every few seconds, so that the badge tells when the server goes away and
    // when it is back.
    set_interval(move || workbench.seconds.update(|n| *n += 1), std::time::Duration::from_secs(1));
    let asking = LocalResource::new(move || {
        workbench.tick.track();
        api::health()
    });
    if let Some(id) = run_in_address() {
        leptos::task::spawn_local(async move {
            match api::run(id).await {
                Ok(run) => workbench.show(run),
                Err(error) => workbench.fail(format!("run {id} from the address: {error}")),
            }
        });
    }
    Effect::new(move |_| {
        if let Some(id) = workbench.shown.with(|run| run.as_ref().map(|run| run.id)) {
            put_in_address(id);
        }
    });
    // The last answer stays shown while the next is on its way.
    let health = RwSignal::new(None::<ApiResult<Health>>);
    Effect::new(move |_| {
        if let Some(answer) = asking.get() {
            if let Ok(h) = &answer {
                workbench.poll_every.set(poll_period(h.public_limits.as_ref()));
            }
            health.set(Some(answer));
        }
    });
    let device = move || health.with(|h| health_badge(h.as_ref(), workbench.poll_every.get()));
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
        <p class="visually-hidden" aria-live="polite" id="announce">{move || workbench.announcement.get()}</p>
        <main>
            <section class="panel"><Controls/><RunProgress/></section>
            <section class="panel"><Results/></section>
            <section class="panel"><Classify/></section>
            <section class="panel" id="history"><History/></section>
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
        assert_eq!(health_badge(Some(&Ok(health)), 5), "server on cpu · queue 1/16");
        let lost = health_badge(Some(&Err("the server cannot be reached: fetch failed".into())), 5);
        assert!(lost.starts_with("connection lost (the server cannot be reached") && lost.ends_with("every 5 s"), "{lost}");
        assert_eq!(health_badge(None, 5), "connecting…");
    }

    #[wasm_bindgen_test]
    fn polling_takes_at_most_a_third_of_a_public_budget() {
        assert_eq!(poll_period(None), 5);
        let limits = |api_requests_per_minute| PublicLimits { api_requests_per_minute, runs_at_once: 2, subsample: None, classifier_subsample: None };
        assert_eq!(poll_period(Some(&limits(120))), 5);
        assert_eq!(poll_period(Some(&limits(12))), 30);
        assert_eq!(poll_period(Some(&limits(0))), 360);
    }

    #[wasm_bindgen_test]
    fn the_demo_notice_states_the_limits() {
        let mut limits = PublicLimits { api_requests_per_minute: 120, runs_at_once: 2, subsample: None, classifier_subsample: None };
        let notice = demo_notice(&limits);
        assert!(notice.contains("120 requests a minute") && notice.contains("2 runs") && !notice.contains("images"), "{notice}");
        limits.subsample = Some(Subsample { forget: Some(256), full: Some(1024), test: Some(500) });
        limits.classifier_subsample = Some(Subsample::default());
        let notice = demo_notice(&limits);
        assert!(notice.contains("the classifier (the default) reads the whole sets"), "{notice}");
        assert!(notice.contains("whole model read at most 256 images of the forget class, 1024 of the training set and 500 test images"), "{notice}");
    }
}
