//! The real `backend serve` binary end to end: a trained tiny model, a run followed over
//! its Server-Sent Events to the end, then a hard restart that keeps the finished result and
//! marks the run that was cut off as interrupted.

use std::time::{Duration, Instant};

use serde_json::json;
use unlearn_shared::api::{ModelInfo, ProgressEvent, Run, RunResult, RunStatus};
use unlearn_tests::server::Server;
use unlearn_tests::{backend, ok, scratch_data_dir};

#[test]
fn a_run_streams_to_its_result_which_survives_a_restart() {
    let scratch = scratch_data_dir();
    let dir = scratch.path();
    ok(backend(dir, &["train", "--name", "tiny", "--width", "4", "--epochs", "1", "--train-limit", "512", "--test-limit", "100"]));

    let server = Server::start(dir, &[]);
    let models: Vec<ModelInfo> = serde_json::from_value(server.get("/api/models")).unwrap();
    let tiny = models.iter().find(|m| m.id == "tiny").expect("the trained model is offered");
    assert!(tiny.test_accuracy.is_some() && tiny.provenance.contains("trained by the workbench"), "{tiny:?}");

    // Enough images that the stream is joined while the run is under way.
    let request = json!({ "kind": "unlearn", "model": "tiny", "class": "ship", "ssd": { "alpha": 2 },
                          "subsample": { "forget": 1000, "full": 4000, "test": 2000 } });
    let (status, accepted) = server.submit(request.clone());
    assert_eq!(status, 202);
    let started = Instant::now();
    let events = server.events(accepted.id);
    println!("stream took {:.1} s: {} events", started.elapsed().as_secs_f64(), events.len());
    let (last_name, last_data) = events.last().expect("events");
    assert_eq!(last_name, "done", "the stream ends with the result");
    let finished: Run = serde_json::from_str(last_data).unwrap();
    assert_eq!(finished.status, RunStatus::Succeeded, "{finished:?}");
    let Some(RunResult::Unlearn(report)) = &finished.result else { panic!("{finished:?}") };
    assert_eq!((report.forget_class, report.subsample.test), (8, Some(2000)));
    let progress: Vec<ProgressEvent> = events.iter().filter(|(n, _)| n == "progress").map(|(_, d)| serde_json::from_str(d).unwrap()).collect();
    assert!(!progress.is_empty(), "progress was streamed: {events:?}");
    assert!(progress.iter().all(|p| p.done <= p.total && p.total > 0));
    assert!(events.iter().any(|(n, d)| n == "status" && d == "\"running\""), "{events:?}");

    // A sweep caught running when the process dies.
    let (_, sweep) = server.submit(json!({ "kind": "sweep", "model": "tiny", "subsample": { "forget": 1000, "full": 5000, "test": 5000 } }));
    let deadline = Instant::now() + Duration::from_secs(60);
    while server.run(sweep.id).status != RunStatus::Running {
        assert!(Instant::now() < deadline, "the sweep never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(server);

    let server = Server::start(dir, &[]);
    let after_restart = server.run(accepted.id);
    assert_eq!(after_restart.status, RunStatus::Succeeded);
    assert_eq!(after_restart.result, finished.result, "the stored result is the streamed one");
    assert_eq!(server.run(sweep.id).status, RunStatus::Interrupted);
    assert_eq!(server.events(accepted.id).iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["done"]);
    let (status, again) = server.submit(request);
    assert_eq!((status, again.id), (200, accepted.id), "the identical request is answered from the history");
    let (status, resubmitted) = server.submit(json!({ "kind": "sweep", "model": "tiny", "subsample": { "forget": 1000, "full": 5000, "test": 5000 } }));
    assert_eq!(status, 202, "an interrupted run can be submitted again");
    assert_ne!(resubmitted.id, sweep.id);
}
