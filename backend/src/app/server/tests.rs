//! The HTTP API in-process: every handler through the real router and worker (CPU, a tiny
//! model, the real dataset), including everything a client can get wrong.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;
use unlearn_shared::api::{ErrorBody, Health, ModelInfo, Run, RunAccepted, RunPage, RunRequest, RunResult, RunStatus, Sample, Subsample};
use unlearn_shared::model::weights;

use super::worker::CPU_SUBSAMPLE;
use super::{router, start as start_server, AppState, Database, Runs, ServerConfig};
use crate::app::executor::Workspace;
use crate::engine::device::{CpuBackend, DeviceChoice};
use crate::engine::unlearn::features_cache_names;
use crate::storage::dataset::{prepare, Source};
use crate::storage::model_store::ModelStore;
use crate::storage::tensor_cache::TensorCache;
use crate::testing;

/// A server over a scratch data folder holding the tiny model `tiny`.
struct TestServer {
    app: Router,
    state: Arc<AppState>,
    _dir: tempfile::TempDir,
}

fn config(dir: &std::path::Path) -> ServerConfig {
    ServerConfig {
        data_dir: dir.to_owned(),
        static_dir: dir.join("no-ui"),
        public: false,
        token: None,
        queue_capacity: 8,
        rate_limit: 120,
        asset_rate_limit: 600,
        subsample: Some(Subsample { forget: Some(32), full: Some(64), test: Some(50) }),
        connections: super::ConnectionLimits::default(),
        trusted_proxies: Default::default(),
        run_models_budget: 1 << 30,
        min_free_disk: 0,
    }
}

async fn start(adjust: impl FnOnce(&mut ServerConfig)) -> TestServer {
    let dir = testing::scratch_data_dir();
    testing::tiny_model(dir.path(), "tiny");
    let mut config = config(dir.path());
    adjust(&mut config);
    let workspace = Workspace {
        data: std::sync::Arc::new(prepare(dir.path(), &Source::Npm).expect("dataset")),
        models: ModelStore::open(&dir.path().join("models"), &dir.path().join("no-shipped-models")).expect("models"),
        cache: TensorCache::open(&dir.path().join("cache"), 1 << 30),
    };
    let database = Database::Sqlite(dir.path().join("runs.sqlite"));
    let state = start_server(config, workspace, &database, DeviceChoice::Cpu).expect("server starts");
    let server = TestServer { app: router(state.clone()), state, _dir: dir };
    let started = Instant::now();
    while server.get::<Health>("/api/health").await.device.is_none() {
        assert!(started.elapsed() < Duration::from_secs(30), "the worker did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server
}

struct Call {
    method: Method,
    uri: String,
    body: Body,
    headers: Vec<(header::HeaderName, String)>,
    client: SocketAddr,
}

impl Call {
    fn new(method: Method, uri: &str) -> Self {
        Self { method, uri: uri.into(), body: Body::empty(), headers: vec![], client: "127.0.0.1:50000".parse().unwrap() }
    }

    fn json(mut self, value: Value) -> Self {
        self.headers.push((header::CONTENT_TYPE, "application/json".into()));
        self.body = Body::from(value.to_string());
        self
    }

    fn raw(mut self, content_type: &str, bytes: impl Into<Bytes>) -> Self {
        self.headers.push((header::CONTENT_TYPE, content_type.into()));
        self.body = Body::from(bytes.into());
        self
    }

    fn header(mut self, name: header::HeaderName, value: &str) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    fn from(mut self, client: &str) -> Self {
        self.client = client.parse().unwrap();
        self
    }
}

impl TestServer {
    async fn send(&self, call: Call) -> (StatusCode, HeaderMap, Bytes) {
        let mut request = Request::builder().method(call.method).uri(call.uri);
        for (name, value) in call.headers {
            request = request.header(name, value);
        }
        let mut request = request.body(call.body).unwrap();
        request.extensions_mut().insert(ConnectInfo(call.client));
        let response = self.app.clone().oneshot(request).await.unwrap();
        let (parts, body) = response.into_parts();
        (parts.status, parts.headers, body.collect().await.unwrap().to_bytes())
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, uri: &str) -> T {
        let (status, _, body) = self.send(Call::new(Method::GET, uri)).await;
        assert_eq!(status, StatusCode::OK, "GET {uri}: {}", String::from_utf8_lossy(&body));
        serde_json::from_slice(&body).unwrap()
    }

    async fn submit(&self, request: Value) -> (StatusCode, RunAccepted) {
        let (status, _, body) = self.send(Call::new(Method::POST, "/api/runs").json(request)).await;
        assert!(status.is_success(), "{status}: {}", String::from_utf8_lossy(&body));
        (status, serde_json::from_slice(&body).unwrap())
    }

    /// Polls from an address of its own each time, so that public mode's rate limit does not
    /// count the polls against the clients under test.
    async fn wait_for(&self, id: i64, done: impl Fn(&Run) -> bool) -> Run {
        let started = Instant::now();
        for poll in 0u32.. {
            let [_, _, a, b] = poll.to_be_bytes();
            let (status, _, body) = self.send(Call::new(Method::GET, &format!("/api/runs/{id}")).from(&format!("10.250.{a}.{b}:1"))).await;
            assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
            let run: Run = serde_json::from_slice(&body).unwrap();
            if done(&run) {
                return run;
            }
            assert!(started.elapsed() < Duration::from_secs(300), "run {id} stuck: {run:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        unreachable!("polls until done or the deadline")
    }
}

/// Asserts a JSON error with this status whose detail mentions `needle`.
fn assert_error((status, _, body): &(StatusCode, HeaderMap, Bytes), expected: StatusCode, needle: &str) {
    let text = String::from_utf8_lossy(body);
    assert_eq!(*status, expected, "{text}");
    let error: ErrorBody = serde_json::from_slice(body).unwrap_or_else(|e| panic!("not a JSON error body ({e}): {text}"));
    assert!(!error.error.is_empty());
    assert!(error.detail.contains(needle), "expected '{needle}' in: {}", error.detail);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_a_json_error_and_the_server_keeps_serving() {
    let server = start(|_| {}).await;
    let unlearn = |extra: Value| {
        let mut request = json!({ "kind": "unlearn", "model": "tiny", "class": "cat" });
        request.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        Call::new(Method::POST, "/api/runs").json(request)
    };
    let unprocessable = StatusCode::UNPROCESSABLE_ENTITY;
    let cases = [
        (unlearn(json!({ "class": "zebra" })), unprocessable, "unknown class 'zebra'"),
        (unlearn(json!({ "class": 10 })), unprocessable, "unknown class 10"),
        (unlearn(json!({ "ssd": { "alpha": -1 } })), unprocessable, "alpha must be a positive number"),
        (unlearn(json!({ "ssd": { "alpha": "sometimes" } })), unprocessable, "positive number or \"auto\""),
        (unlearn(json!({ "ssd": { "layers": "middle" } })), unprocessable, "unknown variant `middle`"),
        (unlearn(json!({ "ssd": { "lambda": 0 } })), unprocessable, "lambda must be a positive number"),
        (unlearn(json!({ "ssd": { "importance_batch": 0 } })), unprocessable, "batch size"),
        (unlearn(json!({ "alpha": 3 })), unprocessable, "unknown field `alpha`"),
        (unlearn(json!({ "ssd": { "alpah": 3 } })), unprocessable, "unknown field `alpah`"),
        (unlearn(json!({ "subsample": { "test": 0 } })), unprocessable, "at least 1"),
        (unlearn(json!({ "model": "nope" })), StatusCode::NOT_FOUND, "no model 'nope'"),
        (unlearn(json!({ "alpah": 3 })), unprocessable, "unknown field `alpah`"),
        (unlearn(json!({ "kind": "forget" })), unprocessable, "unknown variant `forget`"),
        (Call::new(Method::POST, "/api/runs").json(json!({ "kind": "sweep", "class": 1 })), unprocessable, "leave out `class`"),
        (Call::new(Method::POST, "/api/runs").raw("application/json", r#"{"kind":"unlearn","ssd":{"alpha":1e999}}"#), StatusCode::BAD_REQUEST, "out of range"),
        (Call::new(Method::POST, "/api/runs").raw("application/json", r#"{"kind":"unlearn","#), StatusCode::BAD_REQUEST, "EOF"),
        (Call::new(Method::POST, "/api/runs").raw("text/plain", "{}"), StatusCode::UNSUPPORTED_MEDIA_TYPE, "Content-Type"),
        (Call::new(Method::POST, "/api/runs").raw("application/json", vec![b' '; 100_000]), StatusCode::PAYLOAD_TOO_LARGE, "too large"),
        (Call::new(Method::GET, "/api/runs/abc"), StatusCode::BAD_REQUEST, "abc"),
        (Call::new(Method::GET, "/api/runs/424242"), StatusCode::NOT_FOUND, "no run 424242"),
        (Call::new(Method::DELETE, "/api/runs/424242"), StatusCode::NOT_FOUND, "no run 424242"),
        (Call::new(Method::GET, "/api/runs/424242/events"), StatusCode::NOT_FOUND, "no run 424242"),
        (Call::new(Method::GET, "/api/runs/424242/weights"), StatusCode::NOT_FOUND, "no run 424242"),
        (Call::new(Method::GET, "/api/runs?limit=0"), unprocessable, "limit"),
        (Call::new(Method::GET, "/api/models/nope/weights"), StatusCode::NOT_FOUND, "no model 'nope'"),
        (Call::new(Method::GET, "/api/samples?class=zebra"), StatusCode::BAD_REQUEST, "zebra"),
        (Call::new(Method::GET, "/api/samples?n=1000"), unprocessable, "between 1 and 100"),
        (Call::new(Method::GET, "/api/samples/10000"), StatusCode::NOT_FOUND, "0 to 9999"),
        (Call::new(Method::GET, "/api/nothing"), StatusCode::NOT_FOUND, "no such API endpoint"),
        (Call::new(Method::POST, "/api/models/import?name=upload").raw("application/octet-stream", "not a model"), unprocessable, "upload"),
        (Call::new(Method::POST, "/api/models/import?name=../evil").raw("application/octet-stream", "x"), unprocessable, "model name"),
        (Call::new(Method::POST, "/api/models/import?name=tiny").raw("application/octet-stream", "x"), StatusCode::CONFLICT, "already exists"),
        (
            Call::new(Method::POST, "/api/runs").json(json!({ "kind": "train", "name": "tiny", "recipe": { "width": 4 } })),
            StatusCode::CONFLICT,
            "already exists",
        ),
    ];
    for (call, status, needle) in cases {
        let what = format!("{} {}", call.method, call.uri);
        let answer = server.send(call).await;
        println!("{what} -> {}: {}", answer.0, String::from_utf8_lossy(&answer.2));
        assert_error(&answer, status, needle);
    }
    let health: Health = server.get("/api/health").await;
    assert_eq!((health.device.as_deref(), health.queue_length), (Some("cpu"), 0));
    let page: RunPage = server.get("/api/runs").await;
    assert!(page.runs.is_empty(), "no bad request made a run: {page:?}");
    let models: Vec<ModelInfo> = server.get("/api/models").await;
    assert_eq!(models.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(), ["tiny"], "no bad upload was kept");

    // Without a built UI the page says how to build it instead of answering nothing.
    let (status, _, page) = server.send(Call::new(Method::GET, "/")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(String::from_utf8_lossy(&page).contains("trunk build"));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unlearning_run_reports_serves_its_model_and_is_reused() {
    let server = start(|_| {}).await;
    let request = json!({ "kind": "unlearn", "model": "tiny", "class": "dog", "ssd": { "alpha": 2 } });
    let (status, accepted) = server.submit(request.clone()).await;
    assert_eq!((status, accepted.reused), (StatusCode::ACCEPTED, false));
    let run = server.wait_for(accepted.id, |r| r.status.is_finished()).await;
    assert_eq!(run.status, RunStatus::Succeeded, "{run:?}");
    let Some(RunResult::Unlearn(report)) = &run.result else { panic!("{run:?}") };
    assert_eq!((report.forget_class, report.model.as_str(), report.device.as_str()), (5, "tiny", "cpu"));
    assert_eq!(report.subsample.test, Some(50), "the server's default subsample is applied and recorded");
    assert_eq!(report.before.test.confusion.iter().flatten().sum::<u64>(), 50);
    assert_eq!((report.settings.alpha, report.alpha), (unlearn_shared::api::Alpha::Fixed(2.0), 2.0));
    assert!(run.has_weights);
    assert_eq!(run.headline, Some(run.result.as_ref().unwrap().headline()));
    // The dog test images the unlearned model still calls dogs, by test-set index.
    assert_eq!(report.still_recognised.len() as u64, report.after.test.confusion[5][5]);
    assert!(report.still_recognised.windows(2).all(|pair| pair[0] < pair[1]));
    assert!(report.still_recognised.iter().all(|&index| server.state.workspace.data.test.label(index) == 5));
    let histograms = report.membership.entropy.as_ref().expect("the membership picture");
    assert_eq!(histograms.after.non_members.iter().sum::<u64>(), 50, "every test image in the picture");

    // The unlearned model downloads, loads into the shared model, and revalidates by ETag.
    let (status, headers, body) = server.send(Call::new(Method::GET, &format!("/api/runs/{}/weights", run.id))).await;
    assert_eq!(status, StatusCode::OK);
    let (tensors, _) = weights::decode(&body).expect("safetensors");
    let model = weights::model_from_state_dict::<CpuBackend>(tensors, &Default::default()).expect("loads");
    assert_eq!(model.config().width, 4);
    let etag = headers[header::ETAG].to_str().unwrap().to_owned();
    let call = Call::new(Method::GET, &format!("/api/runs/{}/weights", run.id)).header(header::IF_NONE_MATCH, &etag);
    assert_eq!(server.send(call).await.0, StatusCode::NOT_MODIFIED);
    let (status, headers, body) = server.send(Call::new(Method::GET, "/api/models/tiny/weights")).await;
    assert_eq!(status, StatusCode::OK);
    assert_ne!(headers[header::ETAG], etag.as_str(), "the base and the unlearned model differ");
    assert!(weights::decode(&body).is_ok());

    // Asking again gives the stored run; so does spelling the defaults out.
    let (status, again) = server.submit(request).await;
    assert_eq!((status, again.id, again.reused), (StatusCode::OK, run.id, true));
    let explicit =
        json!({ "kind": "unlearn", "model": "tiny", "class": 5, "ssd": { "alpha": 2, "lambda": 0.1 }, "subsample": { "forget": 32, "full": 64, "test": 50 } });
    assert_eq!(server.submit(explicit).await.1.id, run.id);

    // A run with no model to serve says so.
    let (_, eval) = server.submit(json!({ "kind": "eval", "model": "tiny" })).await;
    let eval = server.wait_for(eval.id, |r| r.status.is_finished()).await;
    let Some(RunResult::Eval(summary)) = &eval.result else { panic!("{eval:?}") };
    assert_eq!(summary.overall.images, 50);
    assert_error(&server.send(Call::new(Method::GET, &format!("/api/runs/{}/weights", eval.id))).await, StatusCode::NOT_FOUND, "no unlearned model");

    let page: RunPage = server.get("/api/runs?limit=1").await;
    assert_eq!((page.runs.len(), page.runs[0].id, page.next_before), (1, eval.id, Some(eval.id)));
    assert!(page.runs[0].result.is_none(), "listings leave results out");
    let headline = page.runs[0].headline.expect("but not the headline");
    assert_eq!((headline.accuracy, headline.classes), (Some(summary.overall.accuracy), 0));
    let older: RunPage = server.get(&format!("/api/runs?before={}", eval.id)).await;
    assert_eq!(older.runs.iter().map(|r| r.id).collect::<Vec<_>>(), [run.id]);
    assert_eq!(older.runs[0].headline, run.headline);

    let samples: Vec<Sample> = server.get("/api/samples?class=dog&n=3").await;
    assert_eq!(samples.len(), 3);
    assert!(samples.iter().all(|s| s.label == 5 && s.class == "dog"));
    let (status, headers, png) = server.send(Call::new(Method::GET, &samples[0].url)).await;
    assert_eq!((status, &headers[header::CONTENT_TYPE]), (StatusCode::OK, &"image/png".parse::<header::HeaderValue>().unwrap()));
    assert_eq!(&png[1..4], b"PNG");
}

/// A run slow enough to be caught running: every class, on more images.
fn slow_sweep(alpha: f64) -> Value {
    json!({ "kind": "sweep", "model": "tiny", "ssd": { "alpha": alpha }, "subsample": { "forget": 500, "full": 2000, "test": 2000 } })
}

#[tokio::test(flavor = "multi_thread")]
async fn runs_can_be_cancelled_running_or_queued_and_a_full_queue_says_when_to_retry() {
    let server = start(|config| config.queue_capacity = 1).await;
    let (_, running) = server.submit(slow_sweep(1.0)).await;
    server.wait_for(running.id, |r| r.status == RunStatus::Running).await;
    let (_, queued) = server.submit(slow_sweep(2.0)).await;
    assert_eq!(queued.status, RunStatus::Queued);

    let (status, headers, body) = server.send(Call::new(Method::POST, "/api/runs").json(slow_sweep(3.0))).await;
    assert_error(&(status, headers.clone(), body), StatusCode::TOO_MANY_REQUESTS, "queue is full");
    assert!(headers[header::RETRY_AFTER].to_str().unwrap().parse::<u64>().unwrap() >= 1);
    assert_eq!(server.get::<Health>("/api/health").await.queue_length, 1);

    let (status, _, _) = server.send(Call::new(Method::DELETE, &format!("/api/runs/{}", queued.id))).await;
    assert_eq!(status, StatusCode::OK);
    let run: Run = server.get(&format!("/api/runs/{}", queued.id)).await;
    assert_eq!(run.status, RunStatus::Cancelled, "a queued run ends at once");
    assert_eq!(run.error.as_deref(), Some("cancelled by a request while queued"), "and says why");

    server.send(Call::new(Method::DELETE, &format!("/api/runs/{}", running.id))).await;
    let run = server.wait_for(running.id, |r| r.status.is_finished()).await;
    assert_eq!(run.status, RunStatus::Cancelled, "{run:?}");
    assert!(run.error.as_deref().unwrap().starts_with("cancelled by a request while running, after "), "{run:?}");
    assert_error(&server.send(Call::new(Method::DELETE, &format!("/api/runs/{}", running.id))).await, StatusCode::CONFLICT, "already cancelled");

    // The worker is free again and the cancelled request can be made anew.
    let (status, again) = server.submit(slow_sweep(2.0)).await;
    assert_eq!((status, again.reused), (StatusCode::ACCEPTED, false));
    server.send(Call::new(Method::DELETE, &format!("/api/runs/{}", again.id))).await;
}

/// On a CPU, a classifier-scope request that leaves `subsample` out gets the CPU subsample
/// until its model's features are cached, and the whole sets after; a seed-preset request
/// always gets the CPU subsample.
#[tokio::test(flavor = "multi_thread")]
async fn a_cpu_server_gives_classifier_runs_whole_sets_once_their_features_are_cached() {
    let server = &start(|config| config.subsample = None).await;
    let subsample_of = |request: Value| async move {
        let (_, accepted) = server.submit(request).await;
        let run: Run = server.get(&format!("/api/runs/{}", accepted.id)).await;
        server.send(Call::new(Method::DELETE, &format!("/api/runs/{}", accepted.id))).await;
        server.wait_for(accepted.id, |r| r.status.is_finished()).await;
        let (RunRequest::Unlearn(request) | RunRequest::Sweep(request)) = run.request else { panic!("an unlearning run") };
        request.subsample
    };
    let default = json!({ "kind": "unlearn", "model": "tiny", "class": "cat" });
    let seed = json!({ "kind": "unlearn", "model": "tiny", "class": "cat", "ssd": { "alpha": 10, "lambda": 1, "layers": "all" } });
    assert_eq!(subsample_of(default.clone()).await, Some(CPU_SUBSAMPLE), "no features yet");

    let digest = server.state.workspace.models.get("tiny").unwrap().info.digest.clone();
    let entry = weights::StateDict::from([("features".to_owned(), weights::NamedTensor { shape: vec![1], values: vec![0.0] })]);
    for name in features_cache_names(&digest) {
        server.state.workspace.cache.put(&name, &entry).unwrap();
    }
    assert_eq!(subsample_of(default).await, Some(Subsample::default()), "the whole sets once the features are cached");
    assert_eq!(subsample_of(seed).await, Some(CPU_SUBSAMPLE), "runs of the whole model keep the CPU subsample");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sweep_cancelled_midway_keeps_the_classes_it_finished_and_says_how_far_it_came() {
    let server = start(|_| {}).await;
    let (_, accepted) = server.submit(slow_sweep(1.0)).await;
    // The first class is done once the second is under way.
    let midway = server.wait_for(accepted.id, |r| r.progress.as_ref().is_some_and(|p| p.phase.starts_with("class 2/10: "))).await;
    let overall = midway.progress.unwrap().overall.expect("the sweep's progress as a whole");
    // The first class computes most of the features every class reads, so about half the work.
    assert!(overall.fraction > 0.1 && overall.fraction < 0.9 && overall.eta_s.is_some(), "{overall:?}");
    assert_eq!(server.send(Call::new(Method::DELETE, &format!("/api/runs/{}", accepted.id))).await.0, StatusCode::OK);
    let run = server.wait_for(accepted.id, |r| r.status.is_finished()).await;
    assert_eq!((run.status, run.has_weights), (RunStatus::Cancelled, false), "{run:?}");
    let Some(RunResult::Sweep { reports }) = &run.result else { panic!("the finished classes are kept: {run:?}") };
    assert!((1..10).contains(&reports.len()), "{} classes", reports.len());
    assert_eq!(reports.iter().map(|r| r.forget_class).collect::<Vec<_>>(), (0..reports.len()).collect::<Vec<_>>());
    let reason = format!("cancelled by a request while running, after {} of 10 classes", reports.len());
    assert_eq!(run.error.as_deref(), Some(reason.as_str()));
    assert_eq!(run.headline.map(|h| h.classes), Some(reports.len()), "its headline covers what it kept");
    // A cancelled run, results and all, is not the answer to the request.
    let (status, again) = server.submit(slow_sweep(1.0)).await;
    assert_eq!((status, again.reused), (StatusCode::ACCEPTED, false));
    server.send(Call::new(Method::DELETE, &format!("/api/runs/{}", again.id))).await;
    server.wait_for(again.id, |r| r.status.is_finished()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn public_mode_guards_writes_with_the_token_and_limits_each_client() {
    let server = start(|config| {
        config.public = true;
        config.token = Some("s3cret".into());
        config.rate_limit = 20;
        // Large enough that a run is still under way when it is cancelled.
        config.subsample = Some(Subsample { forget: Some(500), full: Some(2000), test: Some(2000) });
    })
    .await;
    let train = json!({ "kind": "train", "name": "fresh", "recipe": { "width": 4, "epochs": 1, "train_limit": 64, "test_limit": 32 } });
    let post_train = || Call::new(Method::POST, "/api/runs").json(train.clone());
    assert_error(&server.send(post_train()).await, StatusCode::UNAUTHORIZED, "training needs `Authorization: Bearer");
    assert_error(&server.send(post_train().header(header::AUTHORIZATION, "Bearer wrong")).await, StatusCode::UNAUTHORIZED, "training");
    let import = Call::new(Method::POST, "/api/models/import?name=other").raw("application/octet-stream", "x");
    assert_error(&server.send(import).await, StatusCode::UNAUTHORIZED, "importing a model");

    // Unlearning stays open; cancelling is for the submitter or a token holder.
    let (_, run) = server.submit(json!({ "kind": "unlearn", "model": "tiny", "class": "cat", "ssd": { "alpha": 1 } })).await;
    let cancel = || Call::new(Method::DELETE, &format!("/api/runs/{}", run.id));
    assert_error(&server.send(cancel().from("10.9.9.9:1234")).await, StatusCode::UNAUTHORIZED, "another client's run");
    assert_eq!(server.send(cancel()).await.0, StatusCode::OK, "its submitter may");

    let (status, _, body) = server.send(post_train().header(header::AUTHORIZATION, "Bearer s3cret")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{}", String::from_utf8_lossy(&body));
    let trained: RunAccepted = serde_json::from_slice(&body).unwrap();
    let run = server.wait_for(trained.id, |r| r.status.is_finished()).await;
    let Some(RunResult::Train(summary)) = &run.result else { panic!("{run:?}") };
    assert_eq!(summary.epochs.len(), 1);
    let models: Vec<ModelInfo> = server.get("/api/models").await;
    assert!(models.iter().any(|m| m.id == "fresh" && m.width == 4), "the trained model is offered: {models:?}");
    assert!(!server.state.config.run_files().run_dir(run.id).exists(), "the run's folder is gone");

    // Another client still has its budget when this one has spent its own.
    let mut limited = None;
    for _ in 0..40 {
        let answer = server.send(Call::new(Method::GET, "/api/models").from("10.1.1.1:1")).await;
        if answer.0 == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(answer);
            break;
        }
    }
    let limited = limited.expect("the client was limited");
    assert!(limited.1.contains_key(header::RETRY_AFTER));
    assert_error(&limited, StatusCode::TOO_MANY_REQUESTS, "too many requests");
    assert_eq!(server.send(Call::new(Method::GET, "/api/models").from("10.2.2.2:1")).await.0, StatusCode::OK);
    // The limited client can still load the page's thumbnails: assets have their own budget.
    for index in 0..40 {
        let thumbnail = server.send(Call::new(Method::GET, &format!("/api/samples/{index}")).from("10.1.1.1:1")).await;
        assert_eq!(thumbnail.0, StatusCode::OK, "thumbnail {index}");
    }
    drop(server.state);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_openapi_document_covers_every_route_and_its_references_resolve() {
    let server = start(|_| {}).await;
    let document: Value = server.get("/api/openapi.json").await;
    let schemas = document["components"]["schemas"].as_object().expect("schemas");
    let text = document.to_string();
    for reference in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
        let name = &reference[..reference.find('"').unwrap()];
        assert!(schemas.contains_key(name), "dangling reference to {name}");
    }
    for name in ["RunRequest", "Run", "ErrorBody", "UnlearnReport", "Health", "ModelInfo", "Sample"] {
        assert!(schemas.contains_key(name), "{name} is missing");
    }
    let paths = document["paths"].as_object().unwrap();
    for (path, operations) in paths {
        for method in operations.as_object().unwrap().keys() {
            let uri = path.replace("{id}", if path.starts_with("/api/models") { "tiny" } else { "1" }).replace("{index}", "0");
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let (status, _, body) = server.send(Call::new(method.clone(), &uri)).await;
            let routed = status != StatusCode::METHOD_NOT_ALLOWED && !String::from_utf8_lossy(&body).contains("no such API endpoint");
            assert!(routed, "{method} {uri} is documented but not served ({status})");
        }
    }
}

fn post_run(request: Value) -> Call {
    Call::new(Method::POST, "/api/runs").json(request)
}

#[tokio::test(flavor = "multi_thread")]
async fn no_request_may_cost_more_than_the_server_allows() {
    let server = start(|config| {
        config.public = true;
        config.token = Some("s3cret".into());
    })
    .await;
    let unprocessable = StatusCode::UNPROCESSABLE_ENTITY;
    let token = |call: Call| call.header(header::AUTHORIZATION, "bearer s3cret");
    // The request that took the whole process down: one batch of 2,000 images.
    let crash =
        json!({ "kind": "unlearn", "model": "tiny", "class": 0, "ssd": { "importance_batch": 2000 }, "subsample": { "forget": 2000, "full": 8, "test": 200 } });
    assert_error(&server.send(post_run(crash.clone())).await, unprocessable, "at most 512");
    assert_error(&server.send(token(post_run(crash))).await, unprocessable, "at most 512");
    let cases = [
        (
            json!({ "kind": "unlearn", "model": "tiny", "class": 5, "subsample": {} }),
            unprocessable,
            "at most 32 images for subsample.forget, got the whole set",
        ),
        (json!({ "kind": "unlearn", "model": "tiny", "class": 5, "subsample": { "forget": 32, "full": 65, "test": 50 } }), unprocessable, "subsample.full"),
        (
            json!({ "kind": "unlearn", "model": "tiny", "class": 5, "ssd": { "full_order": { "kind": "shuffled", "seed": 7 } } }),
            unprocessable,
            "a preset's importance_batch",
        ),
        (json!({ "kind": "unlearn", "model": "tiny", "class": 5, "ssd": { "importance_batch": 65 } }), unprocessable, "a preset's importance_batch"),
        (json!({ "kind": "unlearn", "model": "tiny", "class": 5, "subsample": { "forget": 6000 } }), unprocessable, "at most 5000"),
        (json!({ "kind": "eval", "model": "tiny", "test_limit": 10000 }), unprocessable, "at most 50 images for test_limit"),
        (json!({ "kind": "eval", "model": "tiny", "test_limit": 20000 }), unprocessable, "at most 10000"),
        (json!({ "kind": "sweep", "model": "tiny" }), StatusCode::UNAUTHORIZED, "a sweep"),
        (json!({ "kind": "train", "name": "x", "recipe": { "batch_size": 100000 } }), unprocessable, "batch_size may be at most 512"),
    ];
    for (request, status, needle) in cases {
        assert_error(&server.send(post_run(request)).await, status, needle);
    }
    assert!(server.get::<RunPage>("/api/runs").await.runs.is_empty(), "nothing was queued");

    // A token holder may ask for the whole sets: this sweep holds the worker meanwhile.
    let (status, _, body) = server.send(token(post_run(json!({ "kind": "sweep", "model": "tiny", "subsample": {} })))).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{}", String::from_utf8_lossy(&body));
    let whole: RunAccepted = serde_json::from_slice(&body).unwrap();
    server.wait_for(whole.id, |r| r.status == RunStatus::Running).await;

    // One anonymous client holds at most two places; others, and token holders, are not
    // held back by it.
    let run = |class: &str| json!({ "kind": "unlearn", "model": "tiny", "class": class, "ssd": { "alpha": 1 } });
    let (_, first) = server.submit(run("cat")).await;
    let (_, second) = server.submit(run("dog")).await;
    let busy = server.send(post_run(run("frog"))).await;
    assert_error(&busy, StatusCode::TOO_MANY_REQUESTS, "this client has 2 runs queued or running");
    assert!(busy.1[header::RETRY_AFTER].to_str().unwrap().parse::<u64>().unwrap() >= 1);
    let (status, _, body) = server.send(post_run(run("frog")).from("10.7.7.7:1")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "another client has its own places: {}", String::from_utf8_lossy(&body));
    let other: RunAccepted = serde_json::from_slice(&body).unwrap();
    let (status, _, body) = server.send(token(post_run(run("ship")))).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{}", String::from_utf8_lossy(&body));
    let privileged: RunAccepted = serde_json::from_slice(&body).unwrap();
    // A place is given back when a run ends.
    assert_eq!(server.send(Call::new(Method::DELETE, &format!("/api/runs/{}", first.id))).await.0, StatusCode::OK);
    // Cancelling a queued run gives back its queue place too, so submitting and cancelling in
    // a loop cannot fill the queue (capacity 8) while the worker is busy.
    let waiting = server.get::<Health>("/api/health").await.queue_length;
    for round in 0..12 {
        let (_, queued) =
            server.submit(json!({ "kind": "unlearn", "model": "tiny", "class": "deer", "ssd": { "alpha": 1.0 + f64::from(round) / 100.0 } })).await;
        assert_eq!(server.send(Call::new(Method::DELETE, &format!("/api/runs/{}", queued.id))).await.0, StatusCode::OK);
    }
    assert_eq!(server.get::<Health>("/api/health").await.queue_length, waiting);
    let (status, _, body) = server.send(post_run(run("horse"))).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{}", String::from_utf8_lossy(&body));
    let third: RunAccepted = serde_json::from_slice(&body).unwrap();
    for id in [second.id, other.id, privileged.id, third.id, whole.id] {
        server.send(token(Call::new(Method::DELETE, &format!("/api/runs/{id}")))).await;
    }
    server.wait_for(whole.id, |r| r.status.is_finished()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn identical_concurrent_requests_make_one_run() {
    let server = Arc::new(start(|_| {}).await);
    let request = json!({ "kind": "unlearn", "model": "tiny", "class": "cat", "ssd": { "alpha": 3 } });
    let answers = futures_util::future::join_all((0..30).map(|_| {
        let server = server.clone();
        let request = request.clone();
        tokio::spawn(async move { server.submit(request).await.1.id })
    }))
    .await;
    let ids: std::collections::BTreeSet<i64> = answers.into_iter().map(|a| a.unwrap()).collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(server.get::<RunPage>("/api/runs").await.runs.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_result_with_undefined_numbers_is_a_readable_failure_not_a_success() {
    let server = start(|_| {}).await;
    // Five test images leave most classes without one: their accuracy is 0/0.
    let request = json!({ "kind": "eval", "model": "tiny", "test_limit": 5 });
    let (_, accepted) = server.submit(request.clone()).await;
    let run = server.wait_for(accepted.id, |r| r.status.is_finished()).await;
    assert_eq!(run.status, RunStatus::Failed, "{run:?}");
    assert!(run.error.as_deref().unwrap().contains("undefined number"), "{run:?}");
    let events = server.send(Call::new(Method::GET, &format!("/api/runs/{}/events", run.id))).await;
    assert_eq!(events.0, StatusCode::OK);
    assert!(String::from_utf8_lossy(&events.2).contains("\"status\":\"failed\""), "the stream's done event says failed");
    let (status, again) = server.submit(request).await;
    assert_eq!((status, again.reused), (StatusCode::ACCEPTED, false), "a failed run is not the answer to the request");
    server.wait_for(again.id, |r| r.status.is_finished()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn runs_models_past_the_disk_budget_are_deleted_and_their_records_stay() {
    // Room for one model of the tiny network.
    let server = start(|config| config.run_models_budget = 50_000).await;
    let request = |class: &str| json!({ "kind": "unlearn", "model": "tiny", "class": class, "ssd": { "alpha": 2 } });
    let (_, first) = server.submit(request("cat")).await;
    let first = server.wait_for(first.id, |r| r.status.is_finished()).await;
    assert!(first.has_weights, "{first:?}");
    let (_, second) = server.submit(request("dog")).await;
    let second = server.wait_for(second.id, |r| r.status.is_finished()).await;
    assert!(second.has_weights);
    let evicted: Run = server.get(&format!("/api/runs/{}", first.id)).await;
    assert_eq!((evicted.status, evicted.has_weights, evicted.result.is_some()), (RunStatus::Succeeded, false, true), "the record stays");
    assert_error(&server.send(Call::new(Method::GET, &format!("/api/runs/{}/weights", first.id))).await, StatusCode::GONE, "disk use");
    assert_eq!(server.send(Call::new(Method::GET, &format!("/api/runs/{}/weights", second.id))).await.0, StatusCode::OK);
    let (status, again) = server.submit(request("cat")).await;
    assert_eq!((status, again.reused), (StatusCode::ACCEPTED, false), "asking again makes the model again");
    server.wait_for(again.id, |r| r.status.is_finished()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn protocol_abuse_gets_json_errors_before_any_body_is_read() {
    let server = start(|config| {
        config.public = true;
        config.token = Some("s3cret".into());
    })
    .await;
    // A declared length over the limit is refused on the header alone.
    let huge = Call::new(Method::POST, "/api/runs").header(header::CONTENT_TYPE, "application/json").header(header::CONTENT_LENGTH, "10737418240");
    assert_error(&server.send(huge).await, StatusCode::PAYLOAD_TOO_LARGE, "too large");
    // An anonymous upload is refused before its body is read: this one never ends.
    let mut upload = Call::new(Method::POST, "/api/models/import?name=evil");
    upload.body = Body::from_stream(futures_util::stream::pending::<Result<Bytes, std::io::Error>>());
    let answer = tokio::time::timeout(Duration::from_secs(10), server.send(upload)).await.expect("answered without the body");
    assert_error(&answer, StatusCode::UNAUTHORIZED, "importing a model");
    for (method, uri) in
        [(Method::PUT, "/api/runs"), (Method::PATCH, "/api/health"), (Method::CONNECT, "/"), (Method::POST, "/index.html"), (Method::DELETE, "/")]
    {
        assert_error(&server.send(Call::new(method, uri)).await, StatusCode::METHOD_NOT_ALLOWED, "not allowed");
    }
    let long = format!("/api/runs?before={}", "9".repeat(10_000));
    assert_error(&server.send(Call::new(Method::GET, &long)).await, StatusCode::URI_TOO_LONG, "at most 8192");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_refuses_new_runs_with_507_and_keeps_answering_reads() {
    // No disk has this much free.
    let server = start(|config| config.min_free_disk = u64::MAX).await;
    assert_error(&server.send(post_run(json!({ "kind": "eval", "model": "tiny" }))).await, StatusCode::INSUFFICIENT_STORAGE, "keeps in reserve");
    assert!(server.get::<RunPage>("/api/runs").await.runs.is_empty());
    assert_eq!(server.get::<Health>("/api/health").await.queue_length, 0);
}

#[tokio::test(flavor = "current_thread")]
async fn a_busy_history_does_not_stall_requests_that_do_not_need_it() {
    let server = start(|_| {}).await;
    let Runs::Embedded(runs) = &server.state.runs else { panic!("an embedded server") };
    let runs = runs.clone();
    let busy = std::thread::spawn(move || runs.history.hold_busy(Duration::from_millis(1500)));
    tokio::time::sleep(Duration::from_millis(100)).await;
    // On one runtime thread: the run lookup waits for the history, health must not.
    let lookup = server.send(Call::new(Method::GET, "/api/runs/1"));
    let health = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let started = Instant::now();
        let answer = server.send(Call::new(Method::GET, "/api/health")).await;
        (answer.0, started.elapsed())
    };
    let ((lookup_status, _, _), (health_status, waited)) = tokio::join!(lookup, health);
    busy.join().unwrap();
    assert_eq!((lookup_status, health_status), (StatusCode::NOT_FOUND, StatusCode::OK));
    assert!(waited < Duration::from_millis(500), "health waited {waited:?} behind the history");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_end_the_history_cannot_store_is_reported_from_memory() {
    let server = start(|_| {}).await;
    // The history refuses to record ends, as a full disk would.
    let connection = rusqlite::Connection::open(server.state.config.data_dir.join("runs.sqlite")).unwrap();
    connection
        .execute_batch(
            "CREATE TRIGGER refuse_ends BEFORE UPDATE OF status ON runs WHEN NEW.status NOT IN ('queued', 'running')
             BEGIN SELECT RAISE(FAIL, 'database or disk is full'); END",
        )
        .unwrap();
    let (_, accepted) = server.submit(json!({ "kind": "eval", "model": "tiny" })).await;
    let run = server.wait_for(accepted.id, |r| r.status.is_finished()).await;
    assert_eq!(run.status, RunStatus::Failed, "{run:?}");
    assert!(run.error.as_deref().unwrap().contains("could not record") && run.error.as_deref().unwrap().contains("disk is full"), "{run:?}");
    assert_eq!(server.get::<Health>("/api/health").await.queue_length, 0, "the worker moved on");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_page_is_sent_compressed_and_its_hashed_files_are_cached_for_good() {
    let ui = tempfile::tempdir().unwrap();
    let wasm = "frontend-0123456789abcdef_bg.wasm";
    for (name, contents) in [("index.html", "<!doctype html>page"), (wasm, "plain wasm"), ("style.css", "body{}")] {
        std::fs::write(ui.path().join(name), contents).unwrap();
    }
    // Distinct contents tell which copy was sent.
    std::fs::write(ui.path().join(format!("{wasm}.gz")), "gzipped wasm").unwrap();
    let static_dir = ui.path().to_owned();
    let server = start(move |config| config.static_dir = static_dir).await;

    let (status, headers, body) = server.send(Call::new(Method::GET, &format!("/{wasm}")).header(header::ACCEPT_ENCODING, "gzip, br")).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"gzipped wasm"[..]));
    assert_eq!(headers[header::CONTENT_ENCODING], "gzip");
    assert_eq!(headers[header::CACHE_CONTROL], "public, max-age=31536000, immutable");
    assert_eq!(headers[header::VARY], "accept-encoding");
    let (status, headers, _) = server.send(Call::new(Method::GET, "/frontend-fedcba9876543210_bg.wasm")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "a stale hashed name is not answered with the page");
    assert!(!headers.contains_key(header::CACHE_CONTROL));

    let (_, headers, body) = server.send(Call::new(Method::GET, &format!("/{wasm}"))).await;
    assert_eq!(&body[..], b"plain wasm", "a client that takes no gzip gets the file itself");
    assert!(!headers.contains_key(header::CONTENT_ENCODING));

    for path in ["/", "/index.html", "/style.css", "/runs/5"] {
        let (status, headers, _) = server.send(Call::new(Method::GET, path)).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert_eq!(headers[header::CACHE_CONTROL], "no-cache", "{path}: a name without a hash must be checked again");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn answers_do_not_say_where_the_server_keeps_its_files() {
    let server = start(|_| {}).await;
    let data_dir = server.state.config.data_dir.display().to_string();
    let (status, _, body) = server.send(Call::new(Method::GET, "/")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "no UI is built in the test's folder");
    let page = String::from_utf8_lossy(&body);
    assert!(!page.contains(&data_dir) && page.contains("--static-dir"), "{page}");
    for path in ["/api/models", "/api/health", "/api/runs"] {
        let (_, _, body) = server.send(Call::new(Method::GET, path)).await;
        assert!(!String::from_utf8_lossy(&body).contains(&data_dir), "{path} names the data folder");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_budget() {
    let server = start(|config| {
        config.public = true;
        config.rate_limit = 5;
        config.trusted_proxies = super::TrustedProxies(vec!["10.0.0.0/8".parse().unwrap()]);
    })
    .await;
    let health =
        |peer: &str, forwarded: &str| Call::new(Method::GET, "/api/runs").from(peer).header(header::HeaderName::from_static("x-forwarded-for"), forwarded);
    let spend = |peer: &'static str, forwarded: &'static str| {
        let server = &server;
        async move {
            for n in 0.. {
                if server.send(health(peer, forwarded)).await.0 == StatusCode::TOO_MANY_REQUESTS {
                    return n;
                }
            }
            unreachable!()
        }
    };
    assert_eq!(spend("10.0.0.2:1", "203.0.113.1").await, 5, "the first visitor's budget");
    assert_eq!(server.send(health("10.0.0.2:1", "203.0.113.2")).await.0, StatusCode::OK, "another visitor through the same proxy");
    // Outside the trusted network, the header changes nothing: a client cannot pick new buckets.
    assert_eq!(spend("198.51.100.7:1", "203.0.113.3").await, 5);
    assert_eq!(server.send(health("198.51.100.7:1", "203.0.113.4")).await.0, StatusCode::TOO_MANY_REQUESTS);
}
