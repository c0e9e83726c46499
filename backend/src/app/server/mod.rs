//! The HTTP server: the JSON API over the engine, its event streams, the run history, and
//! the built browser UI, all from one origin.

mod catalog;
mod error;
mod extract;
mod guard;
mod jobs;
mod lifecycle;
mod listener;
mod openapi;
mod policy;
mod routes;
mod shared;
#[cfg(test)]
mod tests;
mod worker;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::Router;
use tower::ServiceExt;
use tower_http::services::{ServeDir, ServeFile};
use unlearn_shared::api::{RunId, Subsample};

use super::executor::Workspace;
use crate::engine::device::{self, DeviceChoice};
use crate::storage::history::History;
use crate::storage::shared_history::SharedHistory;
use catalog::BrowserModels;
use error::ApiError;
pub(crate) use guard::{Network, TrustedProxies};
use jobs::{Jobs, Subsamples};
pub(crate) use listener::ConnectionLimits;
pub(crate) use shared::{work, WorkerConfig};

/// How the server is deployed.
#[derive(Debug, Clone)]
pub(crate) struct ServerConfig {
    pub(crate) data_dir: PathBuf,
    /// The built UI (`trunk build`'s output); the API works without it.
    pub(crate) static_dir: PathBuf,
    /// Rate limits and token-protected writes, for a server on the internet.
    pub(crate) public: bool,
    /// Grants training, import and cancelling others' runs in public mode.
    pub(crate) token: Option<String>,
    pub(crate) queue_capacity: usize,
    /// API requests per minute per client in public mode.
    pub(crate) rate_limit: u32,
    /// Requests per minute per client for the page's files, thumbnails and model downloads
    /// in public mode.
    pub(crate) asset_rate_limit: u32,
    /// For requests that leave theirs out; `None` lets the worker pick by device. In public
    /// mode, also the most a request without the token may ask for.
    pub(crate) subsample: Option<Subsample>,
    pub(crate) connections: ConnectionLimits,
    /// Reverse proxies whose `X-Forwarded-For` names the client, for limits and quotas.
    pub(crate) trusted_proxies: TrustedProxies,
    /// Disk space the unlearned models of runs may take; the oldest are deleted past it.
    pub(crate) run_models_budget: u64,
    /// Free disk space kept in reserve: below it, new runs are refused with 507.
    pub(crate) min_free_disk: u64,
}

/// Largest JSON body accepted.
const JSON_LIMIT: usize = 64 * 1024;
/// Largest model upload accepted (ResNet18 in f32 is 45 MB).
const UPLOAD_LIMIT: usize = 256 * 1024 * 1024;
/// Longest URI answered; hyper itself refuses longer ones past 64 KiB, without a JSON body.
const URI_LIMIT: usize = 8 * 1024;

impl ServerConfig {
    fn run_files(&self) -> RunFiles {
        RunFiles { data_dir: self.data_dir.clone(), run_models_budget: self.run_models_budget }
    }
}

/// Where runs keep what they make, in the data folder (shared by every process of a
/// deployment on PostgreSQL).
#[derive(Debug, Clone)]
pub(crate) struct RunFiles {
    pub(crate) data_dir: PathBuf,
    /// Disk space the unlearned models of runs may take; the oldest are deleted past it.
    pub(crate) run_models_budget: u64,
}

impl RunFiles {
    /// What a run leaves behind besides its record: a trained model while it trains.
    fn run_dir(&self, id: RunId) -> PathBuf {
        self.runs_dir().join(id.to_string())
    }

    fn runs_dir(&self) -> PathBuf {
        self.data_dir.join("runs")
    }

    /// The unlearned model of run `id`, in the browser's format.
    fn run_weights_path(&self, id: RunId) -> PathBuf {
        self.runs_dir().join(format!("{id}.safetensors"))
    }

    /// Makes the runs' folder, without what an earlier process left half-written.
    fn prepare(&self) -> anyhow::Result<()> {
        let runs = self.runs_dir();
        std::fs::create_dir_all(&runs).with_context(|| format!("creating {}", runs.display()))?;
        crate::storage::files::remove_partials(&runs);
        Ok(())
    }
}

pub(crate) struct AppState {
    config: ServerConfig,
    workspace: Workspace,
    runs: Runs,
    browser_models: BrowserModels,
    limits: guard::RateLimits,
}

/// Where runs wait, who carries them out, and where they are recorded.
enum Runs {
    /// This process alone: SQLite in the data folder, and a worker thread beside the server.
    Embedded(Arc<Embedded>),
    /// Any number of API servers and workers (`backend worker`) sharing PostgreSQL.
    Shared(Arc<shared::Shared>),
}

/// The single-process deployment's history and queue.
struct Embedded {
    history: History,
    jobs: Jobs,
}

/// Where the server records runs.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Database {
    /// A file of its own, with the worker in the same process.
    Sqlite(PathBuf),
    /// A PostgreSQL URL: runs are carried out by `backend worker` processes.
    Postgres(String),
}

impl std::str::FromStr for Database {
    type Err = std::convert::Infallible;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(match text.starts_with("postgres://") || text.starts_with("postgresql://") {
            true => Self::Postgres(text.to_owned()),
            false => Self::Sqlite(PathBuf::from(text.strip_prefix("sqlite://").unwrap_or(text))),
        })
    }
}

/// Opens the history, and on SQLite starts the worker on `device` in its own thread.
pub(crate) fn start(config: ServerConfig, workspace: Workspace, database: &Database, device: DeviceChoice) -> anyhow::Result<Arc<AppState>> {
    config.run_files().prepare()?;
    let limits = guard::RateLimits::new(config.rate_limit, config.asset_rate_limit);
    match database {
        Database::Sqlite(path) => {
            let history = History::open(path)?;
            let (jobs, receiver) = Jobs::new(config.queue_capacity);
            let embedded = Arc::new(Embedded { history, jobs });
            let runs = Runs::Embedded(embedded.clone());
            let state = Arc::new(AppState { config, workspace, runs, browser_models: BrowserModels::default(), limits });
            let worker = worker::Worker { state: state.clone(), runs: embedded, receiver };
            std::thread::Builder::new().name("worker".into()).spawn(move || {
                if let Err(error) = device::run(device, worker) {
                    tracing::error!(%error, "the worker could not start");
                    std::process::exit(1);
                }
            })?;
            Ok(state)
        }
        Database::Postgres(url) => {
            let history = SharedHistory::open(url)?;
            // Whole sets, unless limits were given; a public server keeps the CPU's ceiling, since
            // any worker may be a CPU.
            let subsample = config.subsample.unwrap_or(if config.public { worker::CPU_SUBSAMPLE } else { Subsample::default() });
            let shared = Arc::new(shared::Shared { history, subsamples: Subsamples { default: subsample, classifier: subsample } });
            shared::reap_in_background(shared.clone());
            Ok(Arc::new(AppState { config, workspace, runs: Runs::Shared(shared), browser_models: BrowserModels::default(), limits }))
        }
    }
}

pub(crate) fn router(state: Arc<AppState>) -> Router {
    let deadline = extract::BodyDeadline { json: state.config.connections.read_timeout };
    Router::new()
        .nest("/api", routes::api())
        .fallback(ui)
        .layer(axum::Extension(deadline))
        .layer(axum::middleware::from_fn(guard::declared_length))
        .layer(axum::middleware::from_fn_with_state(state.clone(), guard::rate_limit))
        .layer(axum::middleware::from_fn(uri_length))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .layer(DefaultBodyLimit::max(JSON_LIMIT))
        .with_state(state)
}

/// The built UI for GET and HEAD; paths the UI does not have get its page, so that its own
/// routes survive a reload. Other methods are not for the page.
async fn ui(State(state): State<Arc<AppState>>, request: Request) -> Response {
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        return ApiError::MethodNotAllowed(request.method().clone()).into_response();
    }
    let ui = &state.config.static_dir;
    let index = ui.join("index.html");
    if !index.exists() {
        return ui_missing().into_response();
    }
    let files = ServeDir::new(ui).precompressed_gzip();
    // A hashed name that is not there (a stale tab after a deploy) gets 404, never the page:
    // the page under that name would be cached for a year.
    let (served, cache_control) = match is_hashed_asset(request.uri().path()) {
        true => (files.oneshot(request).await, IMMUTABLE),
        false => (files.fallback(ServeFile::new(index).precompressed_gzip()).oneshot(request).await, "no-cache"),
    };
    let mut response = match served {
        Ok(response) => response.into_response(),
        Err(never) => match never {},
    };
    if response.status().is_success() || response.status() == StatusCode::NOT_MODIFIED {
        let headers = response.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache_control));
        // Caches on the way must keep the gzipped and the plain copy apart.
        headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    }
    response
}

/// For files whose name changes with their content: a browser never needs to ask again.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// Whether a UI path names a file trunk gave a content hash (`frontend-<hex>_bg.wasm`; trunk
/// writes a 64-bit hash without leading zeros).
fn is_hashed_asset(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or_default();
    let stem = name.split('.').next().unwrap_or_default().trim_end_matches("_bg");
    stem.rsplit_once('-').is_some_and(|(_, hash)| (8..=16).contains(&hash.len()) && hash.bytes().all(|b| b.is_ascii_hexdigit()))
}

async fn uri_length(request: Request, next: Next) -> Response {
    let length = request.uri().to_string().len();
    if length > URI_LIMIT {
        return ApiError::Malformed { status: StatusCode::URI_TOO_LONG, detail: format!("the URI has {length} bytes; at most {URI_LIMIT} are read") }
            .into_response();
    }
    next.run(request).await
}

/// The page where the UI is missing; it does not say where the server looked.
fn ui_missing() -> (StatusCode, Html<&'static str>) {
    let page = "<!doctype html><title>Unlearning workbench</title><h1>The UI is not built</h1>\
         <p>There is no <code>index.html</code> in the server's <code>--static-dir</code>. Run <code>scripts/start.sh</code>, \
         or <code>cd frontend && trunk build --offline</code>. The API is up: <a href=\"/api/health\">/api/health</a>.</p>";
    (StatusCode::SERVICE_UNAVAILABLE, Html(page))
}

/// Serves until Ctrl-C. Runs in flight then are marked interrupted at the next start.
pub(crate) async fn serve(state: Arc<AppState>, addr: SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
    let local = listener.local_addr()?;
    let mode = if state.config.public { "public" } else { "local" };
    if !state.config.static_dir.join("index.html").exists() {
        tracing::warn!(folder = %state.config.static_dir.display(), "no UI here; the API works, the page needs the frontend built");
    }
    println!("workbench listening on http://{local} ({mode} mode)");
    let limits = state.config.connections;
    let proxies = state.config.trusted_proxies.clone();
    listener::serve(listener, router(state), limits, proxies, async {
        tokio::signal::ctrl_c().await.ok();
    })
    .await;
    Ok(())
}
