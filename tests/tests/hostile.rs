//! The real `backend serve --public` binary against what a hostile visitor sends: every
//! endpoint, bad values, lying lengths, odd methods, stalled and excess connections. Each
//! answer must be the expected status with a JSON error that says what was wrong, and the
//! server must stay up.

use std::io::Write;
use std::time::{Duration, Instant};

use serde_json::json;
use unlearn_shared::api::ErrorBody;
use unlearn_tests::raw::{self, closed_by_server, connect, read_answer};
use unlearn_tests::server::Server;
use unlearn_tests::{backend, ok, scratch_data_dir, tiny_checkpoint};

/// A request as raw bytes, closing the connection after the answer.
fn request(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut text = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() && !headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("content-length")) {
        text.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    text.push_str("\r\n");
    let mut bytes = text.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

const JSON: (&str, &str) = ("Content-Type", "application/json");

fn get(path: &str) -> Vec<u8> {
    request("GET", path, &[], b"")
}

fn post_json(body: &str) -> Vec<u8> {
    request("POST", "/api/runs", &[JSON], body.as_bytes())
}

fn unlearn(extra: serde_json::Value) -> Vec<u8> {
    let mut body = json!({ "kind": "unlearn", "model": "tiny", "class": "cat" });
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    post_json(&body.to_string())
}

fn start(extra: &[&str]) -> (Server, tempfile::TempDir) {
    let scratch = scratch_data_dir();
    let checkpoint = scratch.path().join("tiny.safetensors");
    tiny_checkpoint(&checkpoint);
    ok(backend(scratch.path(), &["import", checkpoint.to_str().unwrap(), "--name", "tiny"]));
    let mut args = vec!["--public", "--token", "s3cret"];
    args.extend_from_slice(extra);
    (Server::start(scratch.path(), &args), scratch)
}

#[test]
fn hostile_requests_to_every_endpoint_get_json_errors_and_the_server_stays_up() {
    let (mut server, _scratch) = start(&["--rate-limit", "100000"]);
    let addr = server.addr().to_owned();
    let big_json = format!("{{\"kind\":\"eval\",\"model\":\"{}\"}}", "x".repeat(100_000));
    // Before `kind`, so that serde buffers it and meets the recursion limit.
    let nested = format!("{{\"model\":{}{},\"kind\":\"eval\"}}", "[".repeat(10_000), "]".repeat(10_000));
    let long_uri = format!("/api/runs?before={}", "9".repeat(10_000));
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        // The cost of a run.
        (
            "one batch of 2,000 (crashed the server)",
            unlearn(json!({ "ssd": { "importance_batch": 2000 }, "subsample": { "forget": 2000, "full": 8, "test": 200 } })),
            422,
            "at most 512",
        ),
        ("the whole sets, anonymously", unlearn(json!({ "subsample": {} })), 422, "got the whole set"),
        (
            "more than the server's subsample",
            unlearn(json!({ "subsample": { "forget": 64, "full": 129, "test": 100 } })),
            422,
            "at most 128 images for subsample.full",
        ),
        ("a sweep, anonymously", post_json(r#"{"kind":"sweep","model":"tiny"}"#), 401, "a sweep"),
        ("training, anonymously", post_json(r#"{"kind":"train","name":"mine"}"#), 401, "training"),
        (
            "training with a wrong token",
            request("POST", "/api/runs", &[JSON, ("Authorization", "Bearer nope")], br#"{"kind":"train","name":"mine"}"#),
            401,
            "training",
        ),
        (
            "training with a wrong lower-case token",
            request("POST", "/api/runs", &[JSON, ("Authorization", "bearer nope")], br#"{"kind":"train","name":"mine"}"#),
            401,
            "training",
        ),
        ("a new shuffle seed", unlearn(json!({ "ssd": { "full_order": { "kind": "shuffled", "seed": 7 } } })), 422, "a preset's importance_batch"),
        ("another importance batch", unlearn(json!({ "ssd": { "importance_batch": 65 } })), 422, "a preset's importance_batch"),
        ("more forget images than a class has", unlearn(json!({ "subsample": { "forget": 6000 } })), 422, "at most 5000"),
        ("more training images than there are", unlearn(json!({ "subsample": { "full": 60000 } })), 422, "at most 50000"),
        ("more test images than there are", unlearn(json!({ "subsample": { "test": 20000 } })), 422, "at most 10000"),
        ("a zero subsample", unlearn(json!({ "subsample": { "test": 0 } })), 422, "at least 1"),
        ("an eval past the ceiling", post_json(r#"{"kind":"eval","model":"tiny","test_limit":101}"#), 422, "at most 100 images for test_limit"),
        ("an eval past the test set", post_json(r#"{"kind":"eval","model":"tiny","test_limit":100000}"#), 422, "at most 10000"),
        ("a huge training batch", post_json(r#"{"kind":"train","name":"x","recipe":{"batch_size":100000}}"#), 422, "batch_size may be at most 512"),
        ("a huge width", post_json(r#"{"kind":"train","name":"x","recipe":{"width":100000}}"#), 422, "width"),
        ("a million epochs", post_json(r#"{"kind":"train","name":"x","recipe":{"epochs":1000000}}"#), 422, "epochs"),
        // Values.
        ("an unknown class", unlearn(json!({ "class": "zebra" })), 422, "unknown class 'zebra'"),
        ("class 10", unlearn(json!({ "class": 10 })), 422, "unknown class 10"),
        ("class -1", unlearn(json!({ "class": -1 })), 422, "unknown class -1; use 0-9"),
        ("class 1e30", unlearn(json!({ "class": 1e30 })), 422, "use 0-9"),
        ("no class", post_json(r#"{"kind":"unlearn","model":"tiny"}"#), 422, "needs a `class`"),
        ("a sweep with a class", post_json(r#"{"kind":"sweep","model":"tiny","class":1}"#), 422, "leave out `class`"),
        ("a negative alpha", unlearn(json!({ "ssd": { "alpha": -1 } })), 422, "alpha must be a positive number"),
        ("alpha as a word", unlearn(json!({ "ssd": { "alpha": "NaN" } })), 422, "alpha"),
        ("an infinite alpha", post_json(r#"{"kind":"unlearn","model":"tiny","class":1,"ssd":{"alpha":1e999}}"#), 400, "out of range"),
        ("lambda 0", unlearn(json!({ "ssd": { "lambda": 0 } })), 422, "lambda"),
        ("unknown layers", unlearn(json!({ "ssd": { "layers": "middle" } })), 422, "unknown variant `middle`"),
        ("an unknown field", unlearn(json!({ "alpah": 3 })), 422, "unknown field `alpah`"),
        ("an unknown kind", post_json(r#"{"kind":"forget"}"#), 422, "unknown variant `forget`"),
        ("no kind", post_json(r#"{"model":"tiny"}"#), 422, "kind"),
        ("a model path", unlearn(json!({ "model": "../../etc/passwd" })), 404, "no model"),
        ("an empty model name", unlearn(json!({ "model": "" })), 404, "no model"),
        ("a model name with a NUL", unlearn(json!({ "model": "ti\u{0}ny" })), 404, "no model"),
        ("a training name with a path", post_json(r#"{"kind":"train","name":"../x"}"#), 422, "model name"),
        // Bodies.
        ("a body that is not JSON", post_json("kind=unlearn"), 400, "expected"),
        ("truncated JSON", post_json(r#"{"kind":"unlearn","#), 400, "EOF"),
        ("a JSON array", post_json("[]"), 422, "missing field `kind`"),
        ("JSON null", post_json("null"), 422, "invalid type"),
        ("JSON nested 10,000 deep", post_json(&nested), 400, "recursion limit exceeded"),
        ("invalid UTF-8", request("POST", "/api/runs", &[JSON], b"{\"kind\":\"\xff\xfe\"}"), 400, "invalid unicode"),
        ("text/plain", request("POST", "/api/runs", &[("Content-Type", "text/plain")], b"{}"), 415, "Content-Type"),
        ("no content type", request("POST", "/api/runs", &[], b"{}"), 415, "Content-Type"),
        ("a 100 KB body", post_json(&big_json), 413, "too large"),
        ("a declared 10 GB body", request("POST", "/api/runs", &[JSON, ("Content-Length", "10737418240")], b""), 413, "too large"),
        ("a declared 10 GB upload", request("POST", "/api/models/import?name=x", &[("Content-Length", "10737418240")], b""), 413, "too large"),
        // Runs.
        ("a page of 0", get("/api/runs?limit=0"), 422, "limit"),
        ("a page of 1000", get("/api/runs?limit=1000"), 422, "limit"),
        ("a negative page", get("/api/runs?limit=-1"), 400, "limit"),
        ("a word for before", get("/api/runs?before=abc"), 400, "before"),
        ("an unknown query field", get("/api/runs?sort=id"), 400, "unknown field `sort`"),
        ("a word for a run id", get("/api/runs/abc"), 400, "abc"),
        ("a run id past i64", get("/api/runs/99999999999999999999"), 400, "99999999999999999999"),
        ("an unknown run", get("/api/runs/424242"), 404, "no run 424242"),
        ("cancelling an unknown run", request("DELETE", "/api/runs/424242", &[], b""), 404, "no run 424242"),
        ("events of an unknown run", get("/api/runs/424242/events"), 404, "no run 424242"),
        ("weights of an unknown run", get("/api/runs/424242/weights"), 404, "no run 424242"),
        ("PUT on a run", request("PUT", "/api/runs/1", &[JSON], b"{}"), 405, "not allowed"),
        // Models.
        (
            "an anonymous upload",
            request("POST", "/api/models/import?name=evil", &[("Content-Type", "application/octet-stream")], b"x"),
            401,
            "importing a model",
        ),
        ("an upload with a wrong token", request("POST", "/api/models/import?name=evil", &[("Authorization", "Bearer nope")], b"x"), 401, "importing a model"),
        ("an upload without a name", request("POST", "/api/models/import", &[("Authorization", "Bearer s3cret")], b"x"), 400, "name"),
        (
            "an upload that is not a model",
            request("POST", "/api/models/import?name=junk", &[("Authorization", "Bearer s3cret")], b"not a model"),
            422,
            "upload",
        ),
        ("an upload named with a path", request("POST", "/api/models/import?name=..%2Fevil", &[("Authorization", "Bearer s3cret")], b"x"), 422, "model name"),
        (
            "an upload over an existing model",
            request("POST", "/api/models/import?name=tiny", &[("Authorization", "Bearer s3cret")], b"x"),
            409,
            "already exists",
        ),
        ("weights of an unknown model", get("/api/models/nope/weights"), 404, "no model 'nope'"),
        ("weights by an escaped path", get("/api/models/..%2F..%2Fetc%2Fpasswd/weights"), 404, "no model"),
        ("POST on the model list", request("POST", "/api/models", &[JSON], b"{}"), 405, "not allowed"),
        // Samples.
        ("samples of an unknown class", get("/api/samples?class=zebra"), 400, "zebra"),
        ("a thousand samples", get("/api/samples?n=1000"), 422, "between 1 and 100"),
        ("a sample past the test set", get("/api/samples/10000"), 404, "0 to 9999"),
        ("a negative sample", get("/api/samples/-1"), 400, "-1"),
        ("a word for a sample", get("/api/samples/abc"), 400, "abc"),
        // The rest.
        ("an unknown endpoint", get("/api/nothing"), 404, "no such API endpoint"),
        ("a path out of the API", get("/api/../../etc/passwd"), 404, ""),
        ("PATCH on health", request("PATCH", "/api/health", &[], b""), 405, "not allowed"),
        ("DELETE on the page", request("DELETE", "/", &[], b""), 405, "not allowed"),
        ("POST on the page", request("POST", "/index.html", &[JSON], b"{}"), 405, "not allowed"),
        ("CONNECT", b"CONNECT localhost:443 HTTP/1.1\r\nHost: localhost:443\r\nConnection: close\r\n\r\n".to_vec(), 405, "not allowed"),
        ("a 10 KB URI", get(&long_uri), 414, "at most 8192"),
        ("a 70 KB URI (hyper refuses it)", get(&format!("/api/runs?before={}", "9".repeat(70_000))), 414, "64 KiB"),
        ("a 500 KB header", request("GET", "/api/health", &[("X-Padding", &"x".repeat(500_000))], b""), 431, "headers"),
        ("not HTTP at all", b"HELLO THERE\r\n\r\n".to_vec(), 400, "HTTP/1.1"),
    ];
    assert!(cases.len() >= 60, "{} cases", cases.len());
    let mut failures = Vec::new();
    for (name, bytes, status, needle) in &cases {
        let answer = raw::send(&addr, bytes);
        let error: Option<ErrorBody> = serde_json::from_str(&answer.body).ok();
        let good = answer.status == *status && error.as_ref().is_some_and(|e| !e.error.is_empty() && e.detail.contains(needle));
        println!("{} {name}: {} {}", if good { "ok  " } else { "FAIL" }, answer.status, answer.body.chars().take(200).collect::<String>());
        if !good {
            failures.push(format!("{name}: expected {status} with '{needle}', got {} {}", answer.status, answer.body));
        }
        assert!(server.is_running(), "the server died on: {name}");
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
    let health = server.get("/api/health");
    assert_eq!(health["queue_length"], 0, "no hostile request queued a run: {health}");
    assert_eq!(server.get("/api/runs")["runs"].as_array().unwrap().len(), 0);
}

#[test]
fn stalled_and_excess_connections_are_closed_and_the_server_stays_reachable() {
    let (mut server, _scratch) = start(&["--rate-limit", "100000", "--max-client-connections", "4", "--read-timeout-secs", "2"]);
    let addr = server.addr().to_owned();

    // Half-sent headers are dropped after the read timeout.
    let mut half = connect(&addr);
    half.write_all(b"GET /api/health HTTP/1.1\r\nHost: localhost\r\n").unwrap();
    let started = Instant::now();
    assert!(closed_by_server(&mut half), "half-sent headers were not dropped");
    assert!(started.elapsed() < Duration::from_secs(8), "dropped after {:?}", started.elapsed());

    // A stalled body gets 408 after the read timeout.
    let mut stalled = connect(&addr);
    stalled.write_all(b"POST /api/runs HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"kind\":").unwrap();
    let started = Instant::now();
    let answer = read_answer(&mut stalled);
    assert_eq!(answer.status, 408, "{answer:?}");
    assert!(answer.body.contains("did not arrive within 2 s"), "{answer:?}");
    assert!(started.elapsed() < Duration::from_secs(8));

    // One client's fifth connection is closed at once; the first four are kept.
    let mut held: Vec<_> = (0..4).map(|_| connect(&addr)).collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut fifth = connect(&addr);
    let started = Instant::now();
    assert!(closed_by_server(&mut fifth), "the fifth connection was kept");
    assert!(started.elapsed() < Duration::from_secs(1), "closed only after {:?}", started.elapsed());
    held[0].set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    assert!(!closed_by_server(&mut held[0]), "the first four are still open");
    // Idle ones are dropped too, and then the client is served again.
    held[0].set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    assert!(held.iter_mut().all(closed_by_server), "idle connections were dropped");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(raw::send(&addr, &get("/api/health")).status, 200);
    assert!(server.is_running());
}
