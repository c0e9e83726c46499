//! The real `backend serve` binary, started for a test and killed when dropped.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use unlearn_shared::api::{Run, RunAccepted};

pub fn agent() -> ureq::Agent {
    ureq::Agent::new_with_config(ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(Duration::from_secs(600))).build())
}

/// A running server, killed when dropped.
pub struct Server {
    child: Child,
    pub url: String,
    agent: ureq::Agent,
    /// What it was started with, to start it again.
    args: Vec<String>,
}

impl Server {
    /// Serves `data_dir` on a free port on the CPU, small subsamples by default. Only the
    /// models in `data_dir` are offered, not the shipped ones.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Self {
        Self::start_on("cpu", data_dir, extra)
    }

    /// As [`Server::start`], on `device` (`--device`).
    pub fn start_on(device: &str, data_dir: &Path, extra: &[&str]) -> Self {
        let mut args = vec!["--data-dir".to_owned(), data_dir.display().to_string(), "--shipped-models".to_owned()];
        args.push(data_dir.join("no-shipped-models").display().to_string());
        args.extend(["--device", device, "serve", "--forget-limit", "64", "--full-limit", "128", "--test-limit", "100"].map(String::from));
        args.extend(extra.iter().map(|a| a.to_string()));
        let (child, url) = Self::spawn(&args, "127.0.0.1:0");
        let server = Self { child, url, agent: agent(), args };
        server.wait_until_ready();
        server
    }

    /// Starts the binary on `addr`; returns it and its URL.
    fn spawn(args: &[String], addr: &str) -> (Child, String) {
        let mut child = Command::new(crate::backend_binary()).args(args).args(["--addr", addr]).stdout(Stdio::piped()).spawn().expect("backend starts");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let banner = lines.next().expect("a banner").expect("readable stdout");
        let url = banner.split("http://").nth(1).and_then(|rest| rest.split_whitespace().next()).unwrap_or_else(|| panic!("no address in: {banner}"));
        (child, format!("http://{url}"))
    }

    fn wait_until_ready(&self) {
        let started = Instant::now();
        while self.get("/api/health")["device"].is_null() {
            assert!(started.elapsed() < Duration::from_secs(60), "the worker did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills the process, as a crash or a stopped machine would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same address and data folder.
    pub fn restart(&mut self) {
        self.kill();
        let addr = self.addr().to_owned();
        let (child, url) = Self::spawn(&self.args, &addr);
        assert_eq!(url, self.url, "the same address");
        self.child = child;
        self.wait_until_ready();
    }

    pub fn get(&self, path: &str) -> Value {
        let mut response = self.agent.get(format!("{}{path}", self.url)).call().expect("GET");
        assert_eq!(response.status(), 200, "GET {path}");
        serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap()
    }

    pub fn submit(&self, request: Value) -> (u16, RunAccepted) {
        let mut response =
            self.agent.post(format!("{}/api/runs", self.url)).header("content-type", "application/json").send(request.to_string()).expect("POST");
        let status = response.status().as_u16();
        let body = response.body_mut().read_to_string().unwrap();
        assert!(status == 200 || status == 202, "{status}: {body}");
        (status, serde_json::from_str(&body).unwrap())
    }

    /// `host:port`, for raw connections.
    pub fn addr(&self) -> &str {
        self.url.trim_start_matches("http://")
    }

    /// The process's id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still up.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("process status").is_none()
    }

    pub fn run(&self, id: i64) -> Run {
        serde_json::from_value(self.get(&format!("/api/runs/{id}"))).unwrap()
    }

    /// Reads the event stream to its end: (event name, data) pairs.
    pub fn events(&self, id: i64) -> Vec<(String, String)> {
        let mut response = self.agent.get(format!("{}/api/runs/{id}/events", self.url)).call().expect("GET events");
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        let mut events = Vec::new();
        let mut name = String::new();
        for line in BufReader::new(response.body_mut().as_reader()).lines() {
            let line = line.expect("stream line");
            if let Some(event) = line.strip_prefix("event: ") {
                name = event.to_owned();
            } else if let Some(data) = line.strip_prefix("data: ") {
                events.push((std::mem::take(&mut name), data.to_owned()));
            }
        }
        events
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A running `backend worker` process on the CPU, killed when dropped.
pub struct Worker {
    child: Child,
    pub name: String,
}

impl Worker {
    /// Starts a worker of the queue in `database` over `data_dir`, whose lease runs out
    /// `lease_secs` after its last heartbeat; returns once it waits for runs.
    pub fn start(data_dir: &Path, database: &str, name: &str, lease_secs: u64) -> Self {
        let mut child = Command::new(crate::backend_binary())
            .args(["--data-dir", &data_dir.display().to_string(), "--shipped-models", &data_dir.join("no-shipped-models").display().to_string()])
            .args(["--device", "cpu", "worker", "--database", database, "--name", name, "--lease-secs", &lease_secs.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .expect("backend worker starts");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let banner = lines.next().expect("a banner").expect("readable stdout");
        assert!(banner.contains("waiting for runs"), "{banner}");
        // Read on, so that what it prints as it stops finds a reader.
        std::thread::spawn(move || lines.for_each(drop));
        Self { child, name: name.to_owned() }
    }

    /// Sends SIGINT, as Ctrl-C would, and waits for the process to end.
    pub fn interrupt(&mut self) {
        let status = Command::new("kill").args(["-INT", &self.child.id().to_string()]).status().expect("kill runs");
        assert!(status.success());
        let _ = self.child.wait();
    }

    /// Kills the process at once (SIGKILL), as a crash or a lost machine would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether the process is still up.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("process status").is_none()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Reads a run's event stream until it ends or its connection breaks: the (event name,
/// data) pairs read, and whether the stream ended with `done`.
pub fn events_until_cut(url: &str, id: i64) -> (Vec<(String, String)>, bool) {
    let Ok(mut response) = agent().get(format!("{url}/api/runs/{id}/events")).call() else { return (Vec::new(), false) };
    let mut events = Vec::new();
    let mut name = String::new();
    for line in BufReader::new(response.body_mut().as_reader()).lines() {
        let Ok(line) = line else { break };
        if let Some(event) = line.strip_prefix("event: ") {
            name = event.to_owned();
        } else if let Some(data) = line.strip_prefix("data: ") {
            events.push((std::mem::take(&mut name), data.to_owned()));
        }
    }
    let done = events.last().is_some_and(|(name, _)| name == "done");
    (events, done)
}
