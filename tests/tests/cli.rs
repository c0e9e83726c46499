//! The command line end to end, on the real dataset and the shipped reference model (CPU,
//! subsampled so that each test takes seconds to a couple of minutes).

use std::path::Path;

use serde_json::Value;
use unlearn_shared::api::{Layers, UnlearnReport};
use unlearn_tests::{backend, backend_binary, fails, ok, scratch_data_dir, shipped_models, tiny_checkpoint};

const SUBSAMPLE: [&str; 6] = ["--forget-limit", "128", "--full-limit", "256", "--test-limit", "400"];

#[test]
fn unlearn_reports_the_split_and_caches_the_full_importance() {
    let scratch = scratch_data_dir();
    let dir = scratch.path();
    let json = dir.join("report.json");
    let saved = dir.join("unlearned.safetensors");
    // The shipped reference model is the default.
    let mut args = vec!["unlearn", "--class", "cat", "--preset", "seed", "--full-order", "shuffled", "--alpha", "5"];
    args.extend(SUBSAMPLE);
    let run = |extra: &[&str]| {
        let mut all = args.clone();
        all.extend(extra);
        ok(backend(dir, &all))
    };
    let text = run(&["--json", json.to_str().unwrap(), "--save", saved.to_str().unwrap()]);
    assert!(text.contains("forgetting class 3 (cat)") && text.contains("test confusion after:"), "{text}");

    let report: UnlearnReport = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(report.subsample.test, Some(400));
    assert_eq!((report.forget_class, report.model.as_str()), (3, "reference"));
    assert_eq!((report.settings.lambda, report.settings.importance_batch), (1.0, 64), "the seed preset where no option overrides it");
    assert!(!report.timings.full_importance_cached);
    let before = &report.before.test;
    assert_eq!(before.confusion.iter().flatten().sum::<u64>(), 400);
    assert_eq!(before.split.forget.images + before.split.retain.images, 400);
    assert_eq!(report.before.train.overall.images, 400, "a training subset as large as the test subset");
    assert!(before.overall.accuracy > 75.0, "the reference model is about 85 % accurate: {}", before.overall.accuracy);
    assert!(report.before.train.overall.accuracy > before.overall.accuracy, "it fits its training images better");
    assert!(report.dampened.selected > 0 && report.dampened.selected < report.dampened.total);
    assert_eq!((report.alpha, report.layers, report.calibration.is_none()), (5.0, Layers::All, true), "the seed preset with alpha 5");
    assert_eq!(report.membership.images, 128, "the attack asks about the forget set");
    assert!(report.after.test.split.forget.accuracy < before.split.forget.accuracy, "dampening at alpha 5 hurts the forgotten class");
    assert!(report.after.train.split.forget.accuracy < report.before.train.split.forget.accuracy);
    // The cat test images still recognised, as test-set indices.
    assert_eq!(report.still_recognised.len() as u64, report.after.test.confusion[3][3]);
    assert!(report.still_recognised.windows(2).all(|pair| pair[0] < pair[1]) && report.still_recognised.iter().all(|&i| i < 10_000));

    // The saved model is the unlearned one: evaluating it agrees with the report.
    let eval = ok(backend(dir, &["eval", "--model", saved.to_str().unwrap(), "--test-limit", "400"]));
    assert!(eval.contains(&format!("test accuracy {:.2} %", report.after.test.overall.accuracy)), "{eval}");

    // Same request again: the full-set importance comes from the cache, results are identical.
    let again_json = dir.join("again.json");
    run(&["--json", again_json.to_str().unwrap()]);
    let again: UnlearnReport = serde_json::from_slice(&std::fs::read(&again_json).unwrap()).unwrap();
    assert!(again.timings.full_importance_cached);
    assert_eq!(again.after, report.after);
    assert_eq!(again.dampened, report.dampened);
}

#[test]
fn sweep_prints_the_seed_table_for_all_classes() {
    let scratch = scratch_data_dir();
    let dir = scratch.path();
    let json = dir.join("sweep.json");
    let text = ok(backend(
        dir,
        &["sweep", "--model", "reference", "--forget-limit", "32", "--full-limit", "128", "--test-limit", "200", "--json", json.to_str().unwrap()],
    ));
    assert!(text.contains("| Model | Forget class | Forget class acc (loss) | Retain class acc (loss) |"), "{text}");
    for class in unlearn_shared::cifar::CLASSES {
        assert!(text.contains(&format!("| original | {class} |")) && text.contains(&format!("| SSD | {class} |")), "{class}: {text}");
    }
    let reports: Vec<UnlearnReport> = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(reports.iter().map(|r| r.forget_class).collect::<Vec<_>>(), (0..10).collect::<Vec<_>>());
    assert!(reports[1..].iter().all(|r| r.timings.full_importance_cached), "the full importance is computed once");

    // The default calibrates alpha per class, and the reports say how.
    for report in &reports {
        let calibration = report.calibration.as_ref().expect("alpha is calibrated by default");
        let steps = &calibration.steps;
        assert_eq!((steps[0].alpha, steps[0].layers), (256.0, Layers::Classifier), "the search starts at the top, on the classifier");
        assert_eq!(calibration.images, 32);
        assert!(steps.iter().all(|s| s.layers == Layers::Classifier) && report.layers == Layers::Classifier, "the scope asked for, never wider");
        if calibration.reached {
            // The chosen alpha is the largest that reached the target.
            let reaching = steps.iter().filter(|s| s.reached).map(|s| s.alpha);
            assert_eq!(reaching.fold(0.0, f64::max), report.alpha, "class {}", report.forget_class);
        }
        assert!(report.dampened.selected > 0, "class {}", report.forget_class);
        assert!((0.0..=100.0).contains(&report.membership.before) && (0.0..=100.0).contains(&report.membership.after));
    }
    let forgotten = reports.iter().filter(|r| r.calibration.as_ref().unwrap().reached).count();
    assert!(forgotten >= 8, "calibration reaches its target for most classes: {forgotten}");
    let mean = |f: fn(&UnlearnReport) -> f64| reports.iter().map(f).sum::<f64>() / reports.len() as f64;
    let forget_after = mean(|r| r.after.train.split.forget.accuracy);
    assert!(forget_after < 10.0, "forget classes' training images are no longer recognised: {forget_after:.1} %");
    let retain_drop = mean(|r| r.before.test.split.retain.accuracy - r.after.test.split.retain.accuracy);
    assert!(retain_drop < 5.0, "the other classes keep their accuracy: {retain_drop:.1} points lost on average");
}

#[test]
fn retrained_baselines_are_trained_without_the_class_and_compared() {
    let scratch = scratch_data_dir();
    let dir = scratch.path();
    let base = dir.join("base.safetensors");
    tiny_checkpoint(&base);
    let retrained_dir = dir.join("retrained");
    let retrained = retrained_dir.join("without-cat.safetensors");
    let quick = ["--width", "4", "--epochs", "1", "--train-limit", "512", "--test-limit", "100", "--batch-size", "64"];
    let mut args = vec!["train", "--exclude-class", "cat", "--out", retrained.to_str().unwrap()];
    args.extend(quick);
    ok(backend(dir, &args));
    let meta = workbench_metadata(&retrained);
    assert_eq!(meta["training"]["recipe"]["exclude_class"], 3);
    let provenance = meta["provenance"].as_str().unwrap();
    assert!(provenance.contains("without class 3 (cat)"), "{provenance}");

    let json = dir.join("report.json");
    let mut args = vec![
        "unlearn",
        "--model",
        base.to_str().unwrap(),
        "--class",
        "cat",
        "--retrained-dir",
        retrained_dir.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ];
    args.extend(["--forget-limit", "32", "--full-limit", "64", "--test-limit", "100"]);
    let text = ok(backend(dir, &args));
    assert!(text.contains("retrained: forget"), "{text}");
    let report: UnlearnReport = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let baseline = report.retrained.expect("the retrained model is compared");
    assert_eq!(baseline.model, "without-cat");
    assert_eq!(baseline.report.test.overall.images, 100, "on the same test subset");

    // A class without a retrained model has no baseline.
    let args = [
        "unlearn",
        "--model",
        base.to_str().unwrap(),
        "--class",
        "dog",
        "--retrained-dir",
        retrained_dir.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
        "--forget-limit",
        "32",
        "--full-limit",
        "64",
        "--test-limit",
        "100",
    ];
    ok(backend(dir, &args));
    let report: UnlearnReport = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert!(report.retrained.is_none());
}

#[test]
fn bad_input_gets_a_clear_error() {
    let scratch = scratch_data_dir();
    let dir = scratch.path();

    let error = fails(backend(dir, &["unlearn", "--class", "zebra"]));
    assert!(error.contains("unknown class 'zebra'"), "{error}");
    let error = fails(backend(dir, &["unlearn", "--class", "dog", "--alpha", "-1"]));
    assert!(error.contains("alpha must be a positive number or `auto`"), "{error}");
    let error = fails(backend(dir, &["unlearn", "--class", "dog", "--importance-batch", "0"]));
    assert!(error.contains("importance batch size"), "{error}");
    let error = fails(backend(dir, &["unlearn", "--class", "dog", "--full-order", "random"]));
    assert!(error.contains("`ordered`, `shuffled` or `shuffled:<seed>`"), "{error}");
    let error = fails(backend(dir, &["eval", "--model", "nope"]));
    assert!(error.contains("no model 'nope'"), "{error}");
    let error = fails(backend(dir, &["train", "--epochs", "0"]));
    assert!(error.contains("epochs must be in 1..=200"), "{error}");

    let missing = dir.join("nothing.safetensors");
    let error = fails(backend(dir, &["eval", "--model", missing.to_str().unwrap()]));
    assert!(error.contains("nothing.safetensors"), "{error}");

    let truncated = dir.join("truncated.safetensors");
    let bytes = std::fs::read(shipped_models().join("reference/model-00001-of-00002.safetensors")).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 3]).unwrap();
    let error = fails(backend(dir, &["eval", "--model", truncated.to_str().unwrap()]));
    assert!(error.contains("truncated.safetensors") && error.contains("not a safetensors file"), "{error}");

    // A foreign network: right format, wrong keys.
    let foreign = dir.join("foreign.safetensors");
    let mut dict = std::collections::BTreeMap::new();
    dict.insert("conv1.weight".to_owned(), unlearn_shared::model::weights::NamedTensor { shape: vec![64, 3, 3, 3], values: vec![0.0; 1728] });
    dict.insert("fc.weight".to_owned(), unlearn_shared::model::weights::NamedTensor { shape: vec![10, 512], values: vec![0.0; 5120] });
    dict.insert("encoder.proj.weight".to_owned(), unlearn_shared::model::weights::NamedTensor { shape: vec![2], values: vec![0.0; 2] });
    std::fs::write(&foreign, unlearn_shared::model::weights::encode(&dict, Default::default(), unlearn_shared::model::weights::Precision::F32)).unwrap();
    let out = dir.join("models/foreign.safetensors");
    let error = fails(backend(dir, &["import", foreign.to_str().unwrap(), "--out", out.to_str().unwrap()]));
    assert!(error.contains("missing   layer1.0.conv1.weight") && error.contains("unexpected encoder.proj.weight"), "{error}");
    assert!(!out.exists(), "a failed import writes nothing");
}

#[test]
fn training_resumes_exactly_from_its_checkpoint() {
    let scratch = scratch_data_dir();
    let dir = scratch.path();
    let quick = ["--width", "4", "--train-limit", "512", "--test-limit", "200", "--batch-size", "64"];
    let train = |out: &Path, extra: &[&str]| {
        let mut args = vec!["train", "--out", out.to_str().unwrap()];
        args.extend(quick);
        args.extend(extra);
        ok(backend(dir, &args))
    };
    let straight = dir.join("straight.safetensors");
    let straight_log = train(&straight, &["--epochs", "3"]);
    let resumed = dir.join("resumed.safetensors");
    train(&resumed, &["--epochs", "2"]);
    // Resuming needs only the checkpoint and the new epoch count.
    let resumed_log = ok(backend(dir, &["train", "--out", resumed.to_str().unwrap(), "--epochs", "3", "--resume"]));

    let epochs = |log: &str| -> Vec<serde_json::Value> { log.lines().map(|l| serde_json::from_str(l).unwrap()).collect() };
    let (a, b) = (epochs(&straight_log), epochs(&resumed_log));
    assert_eq!(a.len(), 3);
    assert_eq!(b.len(), 3);
    for key in ["train_loss", "test_accuracy", "test_loss"] {
        assert_eq!(a[2][key], b[2][key], "epoch 3 {key} after resuming");
    }
    assert!(a[2]["train_loss"].as_f64().unwrap() < a[0]["train_loss"].as_f64().unwrap(), "training lowers the loss");
    let log_file = std::fs::read_to_string(dir.join("resumed.safetensors.log.jsonl")).unwrap();
    assert_eq!(log_file.lines().count(), 3);

    // The checkpoint is a model like any other.
    let eval = ok(backend(dir, &["eval", "--model", resumed.to_str().unwrap(), "--test-limit", "200"]));
    assert!(eval.contains(&format!("test accuracy {:.2} %", b[2]["test_accuracy"].as_f64().unwrap())), "{eval}");
    let error = fails(backend(dir, &["train", "--out", dir.join("none.safetensors").to_str().unwrap(), "--resume"]));
    assert!(error.contains("none.safetensors"), "{error}");
}

#[test]
fn ctrl_c_leaves_a_usable_checkpoint() {
    let scratch = scratch_data_dir();
    let dir = scratch.path();
    let out = dir.join("interrupted.safetensors");
    let child = std::process::Command::new(backend_binary())
        .arg("--data-dir")
        .arg(dir)
        .args(["--device", "cpu", "train", "--width", "4", "--train-limit", "256", "--test-limit", "100", "--batch-size", "32", "--epochs", "200", "--out"])
        .arg(&out)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let log = dir.join("interrupted.safetensors.log.jsonl");
    let started = std::time::Instant::now();
    while !log.exists() {
        assert!(started.elapsed().as_secs() < 300, "no epoch finished in 5 minutes");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let status = std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("stopped by request"), "{stderr}");
    let eval = ok(backend(dir, &["eval", "--model", out.to_str().unwrap(), "--test-limit", "100"]));
    assert!(eval.contains("test accuracy"), "{eval}");
}

/// Ctrl-C during a sweep stops it, and the classes it finished are still printed and saved.
#[test]
fn ctrl_c_keeps_a_sweeps_finished_classes() {
    use std::io::{BufRead, Read};
    let scratch = scratch_data_dir();
    let dir = scratch.path();
    let model = dir.join("tiny.safetensors");
    tiny_checkpoint(&model);
    let json = dir.join("sweep.json");
    let mut child = std::process::Command::new(backend_binary())
        .arg("--data-dir")
        .arg(dir)
        .args([
            "--device",
            "cpu",
            "sweep",
            "--model",
            model.to_str().unwrap(),
            "--forget-limit",
            "1000",
            "--full-limit",
            "2000",
            "--test-limit",
            "2000",
            "--json",
        ])
        .arg(&json)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Off a terminal, each phase is a line of its own.
    let mut log = std::io::BufReader::new(child.stderr.take().unwrap()).lines().map(Result::unwrap);
    let mut seen = Vec::new();
    for line in log.by_ref() {
        let second_class = line.starts_with("class 2/10: ");
        seen.push(line);
        if second_class {
            break;
        }
    }
    assert!(seen.last().is_some_and(|l| l.starts_with("class 2/10: ")), "{seen:?}");
    let status = std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let rest: Vec<String> = log.collect();
    let mut stdout = String::new();
    child.stdout.take().unwrap().read_to_string(&mut stdout).unwrap();
    assert!(!child.wait().unwrap().success(), "a stopped sweep is not a success");

    let reports: Vec<UnlearnReport> = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let finished = reports.len();
    assert!((1..10).contains(&finished), "{finished} classes: {rest:?}");
    assert_eq!(reports.iter().map(|r| r.forget_class).collect::<Vec<_>>(), (0..finished).collect::<Vec<_>>());
    assert!(rest.iter().any(|l| l.contains(&format!("stopped by request, after {finished} of 10 classes"))), "{rest:?}");
    assert!(stdout.contains("| SSD | airplane |") && !stdout.contains("| SSD | truck |"), "{stdout}");
    assert_eq!(stdout.matches("| SSD |").count(), finished, "{stdout}");
}

#[test]
fn bench_prints_the_three_throughputs() {
    let scratch = tempfile::tempdir().unwrap();
    let text =
        ok(backend(scratch.path(), &["bench", "--width", "8", "--steps", "1", "--train-batch", "8", "--forward-batch", "16", "--importance-batch", "8"]));
    for line in ["train step", "forward", "importance"] {
        let rate: f64 = text
            .lines()
            .find(|l| l.starts_with(line))
            .and_then(|l| l.split(':').nth(1))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|r| r.parse().ok())
            .unwrap_or_else(|| panic!("no {line} figure in:\n{text}"));
        assert!(rate > 0.0, "{line}: {rate}");
    }
}

#[test]
fn a_torchvision_checkpoint_imports_as_a_model() {
    let scratch = scratch_data_dir();
    let dir = scratch.path();
    let checkpoint = dir.join("resnet18-tiny.safetensors");
    torchvision_checkpoint(&checkpoint);
    let text = ok(backend(dir, &["import", checkpoint.to_str().unwrap(), "--name", "imported"]));
    assert!(text.contains("as model 'imported' (width 4, 44622 parameters)"), "{text}");
    let eval = ok(backend(dir, &["eval", "--model", "imported", "--test-limit", "20"]));
    assert!(eval.contains("test accuracy") && eval.contains("20 images"), "{eval}");
    let meta = workbench_metadata(&dir.join("models/imported.safetensors"));
    assert!(meta["provenance"].as_str().unwrap().starts_with("uploaded as 'imported' (sha256 "), "{meta}");

    let error = fails(backend(dir, &["import", checkpoint.to_str().unwrap(), "--name", "imported"]));
    assert!(error.contains("a model named 'imported' already exists"), "{error}");
    let error = fails(backend(dir, &["import", checkpoint.to_str().unwrap(), "--name", "reference"]));
    assert!(error.contains("a model named 'reference' already exists"), "the shipped model's id is taken: {error}");
}

/// A tiny ResNet18 as PyTorch saves one: torchvision's keys, f32 weights, and the i64
/// `num_batches_tracked` counters the workbench has no use for.
fn torchvision_checkpoint(path: &Path) {
    let float = dir_of(path).join("floats.safetensors");
    tiny_checkpoint(&float);
    let bytes = std::fs::read(&float).unwrap();
    let floats = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let counter = 7i64.to_le_bytes();
    let mut views: Vec<(String, safetensors::tensor::TensorView)> = floats.tensors().into_iter().collect();
    let counters: Vec<String> = views.iter().filter_map(|(key, _)| key.strip_suffix(".running_mean").map(|bn| format!("{bn}.num_batches_tracked"))).collect();
    for key in counters {
        views.push((key, safetensors::tensor::TensorView::new(safetensors::Dtype::I64, vec![], &counter).unwrap()));
    }
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

fn dir_of(path: &Path) -> &Path {
    path.parent().unwrap()
}

/// The workbench's metadata in a model file's header.
fn workbench_metadata(path: &Path) -> Value {
    let bytes = std::fs::read(path).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    serde_json::from_str(&header.metadata().as_ref().unwrap()["workbench"]).unwrap()
}
