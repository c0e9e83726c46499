//! The page: its shared state and its layout.

use leptos::prelude::*;
use unlearn_shared::api::{ProgressEvent, Run, RunId, RunStatus};

use crate::api;
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
    pub error: RwSignal<Option<String>>,
    /// The model runs are made from and the browser compares against.
    pub model: RwSignal<String>,
    pub class: RwSignal<usize>,
    pub active: RwSignal<Option<Active>>,
    /// The run whose results are shown.
    pub shown: RwSignal<Option<Run>>,
    /// Bumped when a run starts or ends, so the history refetches.
    pub history_version: RwSignal<u32>,
    /// Up to two runs picked in the history for a side-by-side comparison.
    pub compared: RwSignal<Vec<RunId>>,
}

impl Workbench {
    pub fn fail(&self, error: impl Into<String>) {
        self.error.set(Some(error.into()));
    }

    /// Follows run `id` until it ends, then shows it.
    pub fn follow(self, id: RunId) {
        self.active.set(Some(Active { id, status: RunStatus::Queued, progress: None }));
        self.history_version.update(|v| *v += 1);
        leptos::task::spawn_local(async move {
            let result = api::follow(id, |update| match update {
                api::Update::Status(status) => self.active.update(|a| {
                    if let Some(a) = a.as_mut().filter(|a| a.id == id) {
                        a.status = status;
                    }
                }),
                api::Update::Progress(progress) => self.active.update(|a| {
                    if let Some(a) = a.as_mut().filter(|a| a.id == id) {
                        a.progress = Some(progress);
                    }
                }),
                api::Update::Done(run) => {
                    if let Some(error) = &run.error {
                        self.fail(format!("run {id} failed: {error}"));
                    }
                    self.shown.set(Some(*run));
                }
            })
            .await;
            if let Err(error) = result {
                self.fail(error);
            }
            self.active.update(|a| {
                if a.as_ref().is_some_and(|a| a.id == id) {
                    *a = None;
                }
            });
            self.history_version.update(|v| *v += 1);
        });
    }
}

#[component]
pub fn App() -> impl IntoView {
    let workbench = Workbench {
        error: RwSignal::new(None),
        model: RwSignal::new("base".into()),
        class: RwSignal::new(3),
        active: RwSignal::new(None),
        shown: RwSignal::new(None),
        history_version: RwSignal::new(0),
        compared: RwSignal::new(Vec::new()),
    };
    provide_context(workbench);
    let health = LocalResource::new(api::health);
    let device = move || match health.get() {
        Some(Ok(h)) => format!("server on {} · queue {}/{}", h.device.unwrap_or_else(|| "starting".into()), h.queue_length, h.queue_capacity),
        Some(Err(e)) => e,
        None => "connecting…".into(),
    };
    view! {
        <header>
            <h1>"Unlearning workbench"</h1>
            <p class="subtitle">"Forget a CIFAR-10 class from a ResNet18 with Selective Synaptic Dampening, and see what changed."</p>
            <span class="badge" id="health">{device}</span>
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
