//! The server's API, as the page calls it. Every failure becomes one readable line.

use futures_util::future::{select, Either};
use futures_util::StreamExt;
use gloo_net::eventsource::futures::EventSource;
use gloo_net::eventsource::State;
use gloo_net::http::{Request, Response};
use serde::de::DeserializeOwned;
use unlearn_shared::api::{ErrorBody, Health, ModelInfo, Run, RunAccepted, RunEvent, RunId, RunPage, RunRequest, Sample};
use wasm_bindgen::JsCast;

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

/// Longest the page waits out a public server's rate limit (429) on one read before it shows
/// the failure.
const PATIENCE_S: u32 = 60;

/// Sends a GET; when the server answers 429 it waits as long as `Retry-After` says and asks
/// again, up to [`PATIENCE_S`] in all. Reads only: a refused write is the user's to repeat.
async fn send_get(url: &str) -> ApiResult<Response> {
    let mut waited = 0;
    loop {
        let response = Request::get(url).send().await.map_err(unreachable)?;
        match retry_after(&response) {
            Some(seconds) if waited + seconds <= PATIENCE_S => {
                waited += seconds;
                sleep_ms(seconds * 1000).await;
            }
            _ => return Ok(response),
        }
    }
}

/// The seconds a 429 answer asks the client to wait: at least one, so that a proxy's
/// `Retry-After: 0` does not make the page spin.
fn retry_after(response: &Response) -> Option<u32> {
    (response.status() == 429).then(|| response.headers().get("retry-after")?.trim().parse::<u32>().ok()).flatten().map(|s| s.clamp(1, PATIENCE_S + 1))
}

pub async fn sleep_ms(milliseconds: u32) {
    let promise = js_sys::Promise::new(&mut |resolve, _| {
        let window = web_sys::window().expect("the page has a window");
        window.set_timeout_with_callback_and_timeout_and_arguments_0(&resolve, milliseconds as i32).expect("a timer");
    });
    let _ = wasm_bindgen_futures::JsFuture::from(promise).await;
}

async fn get<T: DeserializeOwned>(url: &str) -> ApiResult<T> {
    read(send_get(url).await?).await
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

/// A model file's bytes (the browser's HTTP cache revalidates them by ETag), telling
/// `on_progress` the bytes received and, where the server said, the total.
pub async fn bytes(url: &str, on_progress: impl Fn(u64, Option<u64>)) -> ApiResult<Vec<u8>> {
    let response = send_get(url).await?;
    if !response.ok() {
        return Err(failure(response).await);
    }
    let total = response.headers().get("content-length").and_then(|length| length.parse().ok());
    let failed = |e: wasm_bindgen::JsValue| format!("downloading {url}: {}", e.as_string().unwrap_or_else(|| format!("{e:?}")));
    let Some(body) = response.body() else {
        return response.binary().await.map_err(|e| format!("downloading {url}: {e}"));
    };
    let reader: web_sys::ReadableStreamDefaultReader = body.get_reader().unchecked_into();
    let mut bytes = Vec::with_capacity(total.unwrap_or(0) as usize);
    loop {
        let chunk = wasm_bindgen_futures::JsFuture::from(reader.read()).await.map_err(failed)?;
        if js_sys::Reflect::get(&chunk, &"done".into()).map_err(failed)?.as_bool().unwrap_or(true) {
            break;
        }
        let value: js_sys::Uint8Array = js_sys::Reflect::get(&chunk, &"value".into()).map_err(failed)?.unchecked_into();
        bytes.extend(value.to_vec());
        on_progress(bytes.len() as u64, total);
    }
    Ok(bytes)
}

/// The names of the events `/api/runs/{id}/events` sends: `RunEvent`'s variants.
const RUN_EVENTS: [&str; 3] = ["status", "progress", "done"];

/// A Server-Sent Event as the `RunEvent` it carries: its name is the variant, its data the
/// variant's JSON.
fn run_event(name: &str, data: &str) -> ApiResult<RunEvent> {
    let unreadable = |e: serde_json::Error| format!("unreadable {name} event: {e}");
    let payload: serde_json::Value = serde_json::from_str(data).map_err(unreadable)?;
    let tagged = serde_json::Map::from_iter([(name.to_owned(), payload)]);
    serde_json::from_value(tagged.into()).map_err(unreadable)
}

/// How often a quiet event stream's connection is looked at.
const STREAM_LOOK_MS: u32 = 2000;

/// Follows `/api/runs/{id}/events`, calling `on_event` for each event until `done`, or until
/// `wanted` says the page no longer follows it. A broken stream is an error.
pub async fn follow(id: RunId, wanted: impl Fn() -> bool, mut on_event: impl FnMut(RunEvent)) -> ApiResult<()> {
    let mut source = EventSource::new(&format!("/api/runs/{id}/events")).map_err(|e| e.to_string())?;
    let streams = RUN_EVENTS.map(|name| source.subscribe(name).map_err(|e| e.to_string())).into_iter().collect::<ApiResult<Vec<_>>>()?;
    let mut events = futures_util::stream::select_all(streams);
    // The browser reconnects a broken stream by itself and reports nothing while it tries
    // (neither does gloo), so a stream found still connecting at two looks in a row is taken
    // as broken; one look would mistake a slow first connection for a lost one.
    let mut unopened_looks = 0;
    loop {
        let next = match select(events.next(), Box::pin(sleep_ms(STREAM_LOOK_MS))).await {
            Either::Left((next, _)) => next,
            Either::Right(((), _)) => {
                unopened_looks = if source.state() == State::Open { 0 } else { unopened_looks + 1 };
                if unopened_looks >= 2 {
                    return Err("the event stream broke: the server cannot be reached".to_owned());
                }
                // A quiet stream the page no longer follows is closed now, not at its next event.
                if !wanted() {
                    break;
                }
                continue;
            }
        };
        let Some(event) = next else { break };
        let (name, message) = event.map_err(|e| format!("the event stream broke: {e}"))?;
        if !wanted() {
            break;
        }
        let event = run_event(&name, &message.data().as_string().unwrap_or_default())?;
        let done = matches!(event, RunEvent::Done(_));
        on_event(event);
        if done {
            break;
        }
    }
    source.close();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use unlearn_shared::api::RunStatus;
    use wasm_bindgen_test::wasm_bindgen_test;

    #[wasm_bindgen_test]
    async fn a_pause_waits_as_long_as_it_says() {
        let now = || web_sys::window().unwrap().performance().unwrap().now();
        let started = now();
        sleep_ms(1000).await;
        let waited = now() - started;
        assert!((990.0..3000.0).contains(&waited), "waited {waited} ms");
    }

    #[wasm_bindgen_test]
    fn events_are_read_by_their_name() {
        assert_eq!(run_event("status", "\"running\"").unwrap(), RunEvent::Status(RunStatus::Running));
        let progress = r#"{"phase":"evaluate","done":1,"total":2,"images_per_s":3.0,"eta_s":null,"loss":null}"#;
        assert!(matches!(run_event("progress", progress).unwrap(), RunEvent::Progress(p) if p.phase == "evaluate"));
        assert!(run_event("status", "\"done\"").unwrap_err().starts_with("unreadable status event"));
        assert!(run_event("finished", "{}").unwrap_err().starts_with("unreadable finished event"));
    }
}
