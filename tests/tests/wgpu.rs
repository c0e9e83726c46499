//! The real binary on `--device wgpu`, on whatever Vulkan adapter the machine has (in CI,
//! Mesa's software device, lavapipe): training from the CLI, then an unlearning run through
//! the server, both reporting the adapter they ran on. And `auto`, which passes over a
//! software adapter and says why, leaving no GPU device's thread running once on the CPU.
//!
//! These fail, not skip, without a Vulkan device: the README's test command installs one.

use serde_json::json;
use unlearn_shared::api::{RunResult, RunStatus};
use unlearn_tests::server::Server;
use unlearn_tests::{backend_on, ok, scratch_data_dir, stderr};

/// The adapter description reports carry, e.g. `wgpu (llvmpipe (LLVM 15.0.6, 256 bits), software)`.
fn is_wgpu(description: &str) -> bool {
    description.starts_with("wgpu (") && description.ends_with(')')
}

#[test]
fn training_and_unlearning_run_on_wgpu_and_report_the_adapter() {
    let scratch = scratch_data_dir();
    let dir = scratch.path();
    let trained = ok(backend_on(
        "wgpu",
        dir,
        &["train", "--name", "narrow", "--width", "4", "--epochs", "1", "--train-limit", "256", "--batch-size", "64", "--test-limit", "100"],
    ));
    println!("{trained}");

    let server = Server::start_on("wgpu", dir, &[]);
    let health = server.get("/api/health");
    let device = health["device"].as_str().expect("the health answer names the device");
    assert!(is_wgpu(device), "{health}");

    let request = json!({ "kind": "unlearn", "model": "narrow", "class": "cat", "ssd": { "alpha": 2, "layers": "all" },
                          "subsample": { "forget": 32, "full": 64, "test": 100 } });
    let (_, accepted) = server.submit(request);
    let events = server.events(accepted.id);
    let finished = server.run(accepted.id);
    assert_eq!(finished.status, RunStatus::Succeeded, "{finished:?}\n{events:?}");
    let Some(RunResult::Unlearn(report)) = &finished.result else { panic!("{finished:?}") };
    assert_eq!(report.device, device, "the report names the adapter the worker runs on");
    assert!(report.dampened.selected > 0, "{report:?}");
    assert_eq!(report.after.test.overall.images, 100, "{report:?}");
}

#[test]
fn auto_passes_over_a_software_adapter_and_says_why() {
    let scratch = scratch_data_dir();
    let dir = scratch.path();
    let output = backend_on("auto", dir, &["eval", "--model", "reference", "--test-limit", "10"]);
    let log = stderr(&output);
    assert!(output.status.success(), "{log}");
    if log.contains("software renderer") {
        assert!(log.contains("running on cpu"), "{log}");
        assert!(log.contains("no GPU backend works"), "the fallback is logged with its reasons: {log}");
    } else {
        // No software adapter was found: either a GPU was, and auto takes it, or there is no
        // Vulkan device at all, which these tests need (`mesa-vulkan-drivers`).
        assert!(log.contains("running on wgpu (") || log.contains("running on cuda"), "with a hardware GPU, auto takes it: {log}");
    }
}

/// Setting up a GPU device in Burn starts threads that wake every 150 µs for the life of the
/// process, even where the device then fails; `auto` lists the devices first, so a server that
/// falls back to the CPU runs none (cubecl's `DSD-` and Burn fusion's `DSU-` threads).
#[test]
fn a_server_that_falls_back_to_the_cpu_starts_no_gpu_device_threads() {
    let scratch = scratch_data_dir();
    let server = Server::start_on("auto", scratch.path(), &[]);
    let health = server.get("/api/health");
    if health["device"] != "cpu" {
        eprintln!("skipped: auto found a GPU here ({health})");
        return;
    }
    let tasks = std::fs::read_dir(format!("/proc/{}/task", server.pid())).expect("the server's threads");
    // A thread may end between the listing and the read.
    let names: Vec<String> =
        tasks.flatten().filter_map(|task| std::fs::read_to_string(task.path().join("comm")).ok()).map(|name| name.trim().to_owned()).collect();
    assert!(names.len() > 1 && !names.iter().any(|name| name.starts_with("DSD-") || name.starts_with("DSU-")), "{names:?}");
}
