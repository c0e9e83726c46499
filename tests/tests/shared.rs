//! The deployment on PostgreSQL, with real processes: two `backend serve --database` API
//! servers and three `backend worker` processes over one data folder and a throwaway
//! PostgreSQL server. Runs submitted to either server finish exactly once; a cancel through
//! either server reaches the worker; a worker stopped with Ctrl-C hands its run back; a
//! worker killed mid-run, an API server killed under its event streams, and a database
//! restart mid-run are each survived.

use std::time::{Duration, Instant};

use serde_json::json;
use unlearn_shared::api::{Run, RunStatus};
use unlearn_tests::postgres::Postgres;
use unlearn_tests::server::{events_until_cut, Server, Worker};
use unlearn_tests::{backend, ok, scratch_data_dir, tiny_checkpoint};

/// Seconds a worker's lease lasts past its last heartbeat: long enough that a busy 2-core
/// machine's database restart does not end one, short enough to wait out after a kill.
const LEASE_SECS: u64 = 10;

fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Who claimed run `id`, how many times it was claimed, and its status, as the database has it.
fn claims(database: &str, id: i64) -> (Option<String>, i32, String) {
    let mut client = postgres::Client::connect(database, postgres::NoTls).expect("connect");
    let row = client.query_one("SELECT worker, attempts, status FROM runs WHERE id = $1", &[&id]).expect("the run's row");
    (row.get(0), row.get(1), row.get(2))
}

/// A sweep on the tiny model that takes long enough to be caught under way: each `seed`
/// reads another full set, so none finds its full-set importance cached by another.
fn slow_sweep(seed: u64) -> serde_json::Value {
    json!({ "kind": "sweep", "model": "tiny", "ssd": { "alpha": 2.0 }, "subsample": { "forget": 1000, "full": 4000 + 100 * seed, "test": 5000 } })
}

#[test]
fn servers_and_workers_share_one_queue_and_survive_crashes_and_a_database_restart() {
    let postgres = Postgres::start();
    let database = postgres.database("workbench");
    let scratch = scratch_data_dir();
    let dir = scratch.path();
    let checkpoint = dir.join("tiny-checkpoint.safetensors");
    tiny_checkpoint(&checkpoint);
    ok(backend(dir, &["import", &checkpoint.display().to_string(), "--name", "tiny"]));

    let mut workers: Vec<Worker> = (0..3).map(|n| Worker::start(dir, &database, &format!("worker-{n}"), LEASE_SECS)).collect();
    let mut servers = [Server::start(dir, &["--database", &database, "--queue", "64"]), Server::start(dir, &["--database", &database, "--queue", "64"])];
    wait_until("every worker counted", Duration::from_secs(30), || servers[0].get("/api/health")["device"] == "3 × cpu");

    // 30 distinct runs, alternately to each server, all finish exactly once.
    let submitted_at = Instant::now();
    let ids: Vec<i64> = (0..30)
        .map(|n| {
            let (status, accepted) = servers[n % 2].submit(json!({ "kind": "eval", "model": "tiny", "test_limit": 200 + n }));
            assert_eq!(status, 202);
            accepted.id
        })
        .collect();
    println!("30 submissions took {:.0} ms", submitted_at.elapsed().as_secs_f64() * 1000.0);
    wait_until("30 runs finished", Duration::from_secs(300), || ids.iter().all(|&id| servers[id as usize % 2].run(id).status.is_finished()));
    println!("30 runs finished {:.1} s after the first submission", submitted_at.elapsed().as_secs_f64());
    let mut by_worker = std::collections::BTreeMap::<String, usize>::new();
    for &id in &ids {
        let run = servers[1 - id as usize % 2].run(id);
        assert_eq!(run.status, RunStatus::Succeeded, "run {id} as the other server has it: {run:?}");
        let (worker, attempts, _) = claims(&database, id);
        assert_eq!(attempts, 1, "run {id} was claimed once");
        *by_worker.entry(worker.expect("a worker")).or_default() += 1;
    }
    println!("runs per worker: {by_worker:?}");
    let (status, again) = servers[1].submit(json!({ "kind": "eval", "model": "tiny", "test_limit": 200 }));
    assert_eq!((status, again.id), (200, ids[0]), "an identical request is answered by the run that another server admitted");

    // A worker killed mid-run: the run goes back to the queue and another finishes it.
    let (_, sweep) = servers[0].submit(slow_sweep(0));
    wait_until("the sweep started", Duration::from_secs(60), || claims(&database, sweep.id).2 == "running");
    let holder = claims(&database, sweep.id).0.expect("a worker holds it");
    let victim = workers.iter_mut().find(|w| w.name == holder).expect("one of ours");
    std::thread::sleep(Duration::from_millis(500));
    victim.kill();
    println!("killed {holder} while it ran run {}", sweep.id);
    wait_until("the sweep finished", Duration::from_secs(600), || servers[1].run(sweep.id).status.is_finished());
    let finished = servers[1].run(sweep.id);
    let (worker, attempts, _) = claims(&database, sweep.id);
    assert_eq!((finished.status, attempts), (RunStatus::Succeeded, 2), "{finished:?}");
    assert_ne!(worker.as_deref(), Some(holder.as_str()), "another worker finished it");
    assert!(finished.result.is_some());
    workers.retain_mut(|w| w.is_running());
    assert_eq!(workers.len(), 2);

    // A worker stopped with Ctrl-C hands its run back; another carries it out, and the
    // handed-back claim does not count as a try.
    let (_, handed_back) = servers[1].submit(slow_sweep(4));
    wait_until("the handed-back sweep started", Duration::from_secs(60), || claims(&database, handed_back.id).2 == "running");
    let holder = claims(&database, handed_back.id).0.expect("a worker holds it");
    std::thread::sleep(Duration::from_millis(500));
    workers.iter_mut().find(|w| w.name == holder).expect("one of ours").interrupt();
    println!("stopped {holder} with SIGINT while it ran run {}", handed_back.id);
    wait_until("the handed-back sweep finished", Duration::from_secs(600), || servers[0].run(handed_back.id).status.is_finished());
    let (worker, attempts, status) = claims(&database, handed_back.id);
    assert_eq!((status.as_str(), attempts), ("succeeded", 1));
    assert_ne!(worker, Some(holder));
    workers.retain_mut(|w| w.is_running());
    workers.push(Worker::start(dir, &database, "worker-3", LEASE_SECS));

    // A cancel through one server reaches the worker of a run the other admitted.
    let (_, cancelled) = servers[1].submit(slow_sweep(3));
    wait_until("the cancelled sweep started", Duration::from_secs(60), || claims(&database, cancelled.id).2 == "running");
    std::thread::sleep(Duration::from_millis(500));
    let response = unlearn_tests::server::agent().delete(format!("{}/api/runs/{}", servers[0].url, cancelled.id)).call().expect("DELETE");
    assert_eq!(response.status(), 200);
    wait_until("the cancel reached the worker", Duration::from_secs(60), || servers[1].run(cancelled.id).status.is_finished());
    let run = servers[1].run(cancelled.id);
    assert_eq!(run.status, RunStatus::Cancelled, "{run:?}");
    assert!(run.error.as_deref().unwrap_or_default().starts_with("cancelled by a request while running"), "{run:?}");

    // An API server killed under an event stream: its client reconnects to the other one
    // and sees the run end.
    let (_, streamed) = servers[0].submit(slow_sweep(1));
    wait_until("the second sweep started", Duration::from_secs(60), || claims(&database, streamed.id).2 == "running");
    let url = servers[0].url.clone();
    let reader = std::thread::spawn(move || events_until_cut(&url, streamed.id));
    wait_until("progress of the second sweep", Duration::from_secs(60), || servers[1].run(streamed.id).progress.is_some());
    std::thread::sleep(Duration::from_millis(500));
    servers[0].kill();
    let (before_cut, done) = reader.join().unwrap();
    assert!(!done, "the stream was cut before the run ended");
    assert!(before_cut.iter().any(|(name, _)| name == "progress"), "progress came through the database: {before_cut:?}");
    let (after, done) = events_until_cut(&servers[1].url, streamed.id);
    assert!(done, "the other server's stream ends with the run: {after:?}");
    let ended: Run = serde_json::from_str(&after.last().unwrap().1).unwrap();
    assert_eq!(ended.status, RunStatus::Succeeded, "{ended:?}");

    // The database restarts mid-run: workers and servers reconnect, and the run finishes
    // once, on the worker that held it.
    let (_, across) = servers[1].submit(slow_sweep(2));
    wait_until("the third sweep started", Duration::from_secs(60), || claims(&database, across.id).2 == "running");
    let holder = claims(&database, across.id).0;
    let url = servers[1].url.clone();
    let reader = std::thread::spawn(move || events_until_cut(&url, across.id));
    std::thread::sleep(Duration::from_millis(500));
    postgres.restart();
    println!("restarted the database under run {}", across.id);
    let (events, done) = reader.join().unwrap();
    assert!(done, "the event stream outlives the restart: {events:?}");
    assert_eq!(serde_json::from_str::<Run>(&events.last().unwrap().1).unwrap().status, RunStatus::Succeeded);
    let (worker, attempts, status) = claims(&database, across.id);
    assert_eq!((status.as_str(), attempts, worker), ("succeeded", 1, holder), "the lease outlived the restart");
    let (status, after_restart) = servers[1].submit(json!({ "kind": "eval", "model": "tiny", "test_limit": 199 }));
    assert_eq!(status, 202);
    wait_until("a run after the restart", Duration::from_secs(120), || servers[1].run(after_restart.id).status == RunStatus::Succeeded);
    assert!(servers[1].is_running() && workers.iter_mut().all(|w| w.is_running()));
}
