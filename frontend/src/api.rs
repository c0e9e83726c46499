//! The server's API, as the page calls it. Every failure becomes one readable line.

use futures_util::StreamExt;
use gloo_net::eventsource::futures::EventSource;
use gloo_net::http::{Request, Response};
use serde::de::DeserializeOwned;
use unlearn_shared::api::{ErrorBody, Health, ModelInfo, ProgressEvent, Run, RunAccepted, RunId, RunPage, RunRequest, RunStatus, Sample};

pub type ApiResult<T> = Result<T, String>;

async fn read<T: DeserializeOwned>(response: Response) -> ApiResult<T> {
    if !response.ok() {
        return Err(failure(response).await);
    }
    response.json::<T>().await.map_err(|e| format!("unreadable answer from the server: {e}"))
}

/// A failed answer's `ErrorBody`, in words.
async fn failure(response: Response) -> String {
    let status = response.status();
    match response.json::<ErrorBody>().await {
        Ok(body) => format!("{} ({status}): {}", body.error, body.detail),
        Err(_) => format!("the server answered {status} {}", response.status_text()),
    }
}

fn unreachable(error: gloo_net::Error) -> String {
    format!("the server cannot be reached: {error}")
}

async fn get<T: DeserializeOwned>(url: &str) -> ApiResult<T> {
    read(Request::get(url).send().await.map_err(unreachable)?).await
}

pub async fn health() -> ApiResult<Health> {
    get("/api/health").await
}

pub async fn models() -> ApiResult<Vec<ModelInfo>> {
    get("/api/models").await
}

pub async fn samples(class: Option<usize>, n: usize) -> ApiResult<Vec<Sample>> {
    match class {
        Some(class) => get(&format!("/api/samples?class={class}&n={n}")).await,
        None => get(&format!("/api/samples?n={n}")).await,
    }
}

pub async fn runs() -> ApiResult<RunPage> {
    get("/api/runs?limit=50").await
}

pub async fn run(id: RunId) -> ApiResult<Run> {
    get(&format!("/api/runs/{id}")).await
}

pub async fn submit(request: &RunRequest) -> ApiResult<RunAccepted> {
    let request = Request::post("/api/runs").json(request).map_err(|e| e.to_string())?;
    read(request.send().await.map_err(unreachable)?).await
}

pub async fn cancel(id: RunId) -> ApiResult<Run> {
    read(Request::delete(&format!("/api/runs/{id}")).send().await.map_err(unreachable)?).await
}

/// A model file's bytes (the browser's HTTP cache revalidates them by ETag).
pub async fn bytes(url: &str) -> ApiResult<Vec<u8>> {
    let response = Request::get(url).send().await.map_err(unreachable)?;
    if !response.ok() {
        return Err(failure(response).await);
    }
    response.binary().await.map_err(|e| format!("downloading {url}: {e}"))
}

/// What the run's event stream says, in order.
pub enum Update {
    Status(RunStatus),
    Progress(ProgressEvent),
    Done(Box<Run>),
}

/// Follows `/api/runs/{id}/events`, calling `on_update` for each event until `done`.
pub async fn follow(id: RunId, mut on_update: impl FnMut(Update)) -> ApiResult<()> {
    let mut source = EventSource::new(&format!("/api/runs/{id}/events")).map_err(|e| e.to_string())?;
    let streams = ["status", "progress", "done"].map(|name| source.subscribe(name).map_err(|e| e.to_string()));
    let [status, progress, done] = streams;
    let mut events = futures_util::stream::select_all([status?, progress?, done?]);
    while let Some(event) = events.next().await {
        let (name, message) = event.map_err(|e| format!("the event stream broke: {e}"))?;
        let data = message.data().as_string().unwrap_or_default();
        let parse_error = |e: serde_json::Error| format!("unreadable {name} event: {e}");
        match name.as_str() {
            "status" => on_update(Update::Status(serde_json::from_str(&data).map_err(parse_error)?)),
            "progress" => on_update(Update::Progress(serde_json::from_str(&data).map_err(parse_error)?)),
            _ => {
                on_update(Update::Done(Box::new(serde_json::from_str(&data).map_err(parse_error)?)));
                break;
            }
        }
    }
    source.close();
    Ok(())
}
