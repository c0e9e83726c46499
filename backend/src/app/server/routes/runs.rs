use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json as JsonResponse;
use futures_util::stream::{self, Stream, StreamExt};
use serde::Deserialize;
use tokio::sync::watch;
use unlearn_shared::api::{Run, RunAccepted, RunEvent, RunId, RunPage, RunRequest};

use super::send;
use crate::app::server::error::ApiError;
use crate::app::server::extract::{Json, Path, Query};
use crate::app::server::guard::Caller;
use crate::app::server::jobs::LiveState;
use crate::app::server::lifecycle::Updates;
use crate::app::server::shared::HEARTBEAT;
use crate::app::server::AppState;
use crate::storage::history::RunWeights;

const MAX_PAGE: usize = 100;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PageQuery {
    before: Option<RunId>,
    limit: Option<usize>,
}

pub(crate) async fn list(State(state): State<Arc<AppState>>, Query(query): Query<PageQuery>) -> Result<JsonResponse<RunPage>, ApiError> {
    let limit = query.limit.unwrap_or(20);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::Invalid(format!("limit must be between 1 and {MAX_PAGE}, got {limit}")));
    }
    let runs = blocking(&state, move |state| state.page(query.before, limit)).await?;
    let next_before = (runs.len() == limit).then(|| runs.last().map(|r| r.id)).flatten();
    Ok(JsonResponse(RunPage { runs, next_before }))
}

/// 202 with a new run; 200 with the identical run that already finished or is under way.
pub(crate) async fn submit(State(state): State<Arc<AppState>>, caller: Caller, Json(request): Json<RunRequest>) -> Result<Response, ApiError> {
    let accepted: RunAccepted = blocking(&state, move |state| state.submit(request, &caller)).await?;
    let status = if accepted.reused { StatusCode::OK } else { StatusCode::ACCEPTED };
    let location = format!("/api/runs/{}", accepted.id);
    Ok((status, [(header::LOCATION, location)], JsonResponse(accepted)).into_response())
}

pub(crate) async fn get(State(state): State<Arc<AppState>>, Path(id): Path<RunId>) -> Result<JsonResponse<Run>, ApiError> {
    Ok(JsonResponse(blocking(&state, move |state| state.run(id)).await?))
}

pub(crate) async fn cancel(State(state): State<Arc<AppState>>, caller: Caller, Path(id): Path<RunId>) -> Result<JsonResponse<Run>, ApiError> {
    Ok(JsonResponse(blocking(&state, move |state| state.cancel(id, &caller)).await?))
}

/// Status changes and progress while the run is under way, then `done` with the finished
/// run, then the stream ends. A finished run's stream is just `done`.
pub(crate) async fn events(State(state): State<Arc<AppState>>, Path(id): Path<RunId>) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let run = blocking(&state, move |state| state.run(id)).await?;
    let states = match state.updates(&run) {
        Updates::Watch(updates) => watched(updates).boxed(),
        Updates::Poll => polled(state.clone(), id).boxed(),
        Updates::Finished => stream::empty().boxed(),
    };
    let live_events = states
        .scan(None::<LiveState>, |last, now| {
            let events = changes(last.as_ref(), &now);
            *last = Some(now);
            std::future::ready(Some(stream::iter(events)))
        })
        .flatten();
    let done = stream::once(async move {
        let run = blocking(&state, move |state| state.run(id)).await.unwrap_or(run);
        RunEvent::Done(Box::new(run))
    });
    let stream = live_events.chain(done).map(|event| Ok(to_sse(&event)));
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// The run's states from this process's worker, up to the first finished one.
fn watched(updates: watch::Receiver<LiveState>) -> impl Stream<Item = LiveState> {
    stream::unfold((Some(updates), true), |(updates, first)| async move {
        let mut updates = updates?;
        if !first && updates.changed().await.is_err() {
            return None;
        }
        let now = updates.borrow_and_update().clone();
        let next = (!now.status.is_finished()).then_some(updates);
        Some((now, (next, false)))
    })
}

/// The run's states as the shared database has them, read every heartbeat, up to the first
/// finished one. While the database is unreachable the stream waits (its keep-alives go on).
fn polled(state: Arc<AppState>, id: RunId) -> impl Stream<Item = LiveState> {
    stream::unfold(Some(true), move |first| {
        let state = state.clone();
        async move {
            if !first? {
                tokio::time::sleep(HEARTBEAT).await;
            }
            loop {
                match blocking(&state, move |state| state.run(id)).await {
                    Ok(run) => {
                        let next = (!run.status.is_finished()).then_some(false);
                        return Some((LiveState { status: run.status, progress: run.progress }, next));
                    }
                    Err(error) => {
                        tracing::warn!(run = id, ?error, "could not read the run for its event stream; trying again");
                        tokio::time::sleep(HEARTBEAT * 4).await;
                    }
                }
            }
        }
    })
}

/// Runs `work` (database queries and commits, which wait for the disk, the network and
/// other writers) on the blocking pool, off the threads that serve every other request.
pub(super) async fn blocking<T: Send + 'static>(
    state: &Arc<AppState>,
    work: impl FnOnce(&AppState) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let state = state.clone();
    tokio::task::spawn_blocking(move || work(&state)).await.map_err(ApiError::internal)?
}

/// The events that take a client from `last` to `now`.
fn changes(last: Option<&LiveState>, now: &LiveState) -> Vec<RunEvent> {
    let mut events = Vec::new();
    if last.map(|l| l.status) != Some(now.status) {
        events.push(RunEvent::Status(now.status));
    }
    if let Some(progress) = &now.progress {
        if last.and_then(|l| l.progress.as_ref()) != Some(progress) && !now.status.is_finished() {
            events.push(RunEvent::Progress(progress.clone()));
        }
    }
    events
}

/// The event's name, and its payload as the data.
fn to_sse(event: &RunEvent) -> Event {
    let data = match event {
        RunEvent::Status(status) => serde_json::to_string(status),
        RunEvent::Progress(progress) => serde_json::to_string(progress),
        RunEvent::Done(run) => serde_json::to_string(run),
    };
    Event::default().event(event.name()).data(data.expect("events serialise"))
}

pub(crate) async fn weights(State(state): State<Arc<AppState>>, Path(id): Path<RunId>, headers: HeaderMap) -> Result<Response, ApiError> {
    let (run, weights) = blocking(&state, move |state| Ok((state.run(id)?, state.weights(id)?))).await?;
    let etag = match weights {
        RunWeights::Kept { etag } => etag,
        RunWeights::Removed => {
            return Err(ApiError::Gone(format!(
                "the unlearned model of run {id} was deleted to keep this server's disk use within its budget; its record stays, and POSTing the same request makes the model again"
            )))
        }
        RunWeights::None => {
            return Err(ApiError::NotFound(format!("run {id} has no unlearned model (a {} run, status {})", run.request.kind(), run.status.as_str())))
        }
    };
    let path = state.config.run_files().run_weights_path(id);
    crate::storage::retention::touch(&path);
    let file = tokio::fs::File::open(&path).await.map_err(|e| match e.kind() {
        // Deleted by the disk budget between the lookup and here.
        std::io::ErrorKind::NotFound => {
            ApiError::Gone(format!("the unlearned model of run {id} was just deleted to keep this server's disk use within its budget"))
        }
        _ => ApiError::internal(format!("{}: {e}", path.display())),
    })?;
    let length = file.metadata().await.map_err(|e| ApiError::internal(format!("{}: {e}", path.display())))?.len();
    // Streamed: a slow reader holds a buffer, not the file. A run's model never changes.
    let body = axum::body::Body::from_stream(tokio_util::io::ReaderStream::new(file));
    let mut response = send(&etag, body, &headers, "public, max-age=31536000, immutable");
    if response.status() == StatusCode::OK {
        response.headers_mut().insert(header::CONTENT_LENGTH, length.into());
    }
    Ok(response)
}
