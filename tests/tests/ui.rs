//! The whole workbench in headless Chromium: the real server with a tiny trained model, the
//! built UI, an unlearning run from the page to its table and heatmaps, and local inference
//! on a gallery image and on an uploaded file, on the CPU and on WebGPU. Saves a screenshot in
//! `target/e2e/`.

use std::time::Duration;

use serde_json::json;
use unlearn_tests::server::{agent, Server};
use unlearn_tests::webdriver::{Browser, WebGpu};
use unlearn_tests::{backend, ok, repository, scratch_data_dir, shipped_models};

/// The real server on a scratch data folder, with a tiny model trained for it, serving the built UI.
fn workbench() -> (tempfile::TempDir, Server) {
    workbench_with(&[])
}

/// As [`workbench`], with more `backend serve` options.
fn workbench_with(serve_options: &[&str]) -> (tempfile::TempDir, Server) {
    let dist = repository().join("frontend/dist");
    assert!(dist.join("index.html").exists(), "the UI is not built in {}; scripts/test.sh builds it with trunk", dist.display());
    let scratch = scratch_data_dir();
    let dir = scratch.path();
    ok(backend(dir, &["train", "--name", "tiny", "--width", "4", "--epochs", "1", "--train-limit", "512", "--test-limit", "100"]));
    let server = Server::start(dir, &[&["--static-dir", dist.to_str().unwrap()], serve_options].concat());
    (scratch, server)
}

#[test]
fn a_user_forgets_a_class_and_classifies_an_image_locally() {
    let (scratch, server) = workbench();
    let dir = scratch.path();
    let browser = Browser::start(WebGpu::Absent);
    browser.open(&server.url);
    browser.wait_for_text("#health", Duration::from_secs(30), |t| t.contains("cpu"));
    browser.wait_for("#model option[value='tiny']", 1, Duration::from_secs(30));

    let alpha = browser.script("return document.querySelector('#alpha').value");
    assert_eq!(alpha.as_str(), Some("auto"), "the default preset calibrates alpha");
    browser.click("label.class[data-class='dog']");
    browser.wait_for_text("#run", Duration::from_secs(5), |t| t == "Forget dog");
    browser.click("#run");
    browser.wait_for("#results .seed-table tbody tr", 2, Duration::from_secs(180));
    let table = browser.text("#results .seed-table");
    assert!(table.contains("original dog") && table.contains("SSD dog"), "{table}");
    assert!(table.contains("MIA (% members)") && table.contains("Unlearning time (s)"), "{table}");
    assert!(table.contains("Test images (forget / retain)") && table.contains("95 % CI"), "every figure with what it rests on: {table}");
    let meta = browser.text("#results");
    assert!(meta.contains("calibrated") && meta.contains("Membership attack"), "the default preset calibrates alpha: {meta}");
    assert_eq!(browser.all("#results .heatmap g.cell").len(), 200, "two 10x10 heatmaps");
    let history = browser.wait_for_text(".history", Duration::from_secs(10), |t| t.contains("forget dog"));
    assert!(history.contains("succeeded"), "{history}");
    let row = browser.wait_for_text(".history li.shown[data-run='1']", Duration::from_secs(10), |t| t.contains("retain"));
    assert!(row.contains("forget") && row.contains("Calibrated α (default)"), "the shown run's row, with its figures and preset: {row}");
    assert_eq!(browser.script("return location.search").as_str(), Some("?run=1"), "the shown run is in the address");

    // A gallery image, classified by both models in the page.
    browser.click("#gallery button.thumb");
    browser.wait_for("#predictions .prediction", 2, Duration::from_secs(120));
    let predictions = browser.text("#predictions");
    assert!(predictions.contains("Base model") && predictions.contains("Unlearned (run 1)"), "{predictions}");
    assert!(predictions.contains(" ms on WebAssembly CPU") && predictions.contains('%'), "without WebGPU the CPU runs it: {predictions}");
    assert!(browser.text("body").contains("This browser offers no WebGPU"));

    // The user's own file: the page reads it and shows it.
    let upload = dir.join("mine.png");
    let mut response = agent().get(format!("{}/api/samples/7", server.url)).call().unwrap();
    std::fs::write(&upload, response.body_mut().read_to_vec().unwrap()).unwrap();
    browser.type_into("#upload", upload.to_str().unwrap());
    let started = std::time::Instant::now();
    while !browser.script("return document.querySelector('#predictions img.query')?.src ?? ''").as_str().unwrap_or_default().starts_with("blob:") {
        assert!(started.elapsed() < Duration::from_secs(60), "the upload was not classified: {}", browser.text("body"));
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(browser.all(".error").is_empty(), "no error shown: {}", browser.text(".error"));

    // A second run of the same class with the seed's settings, from elsewhere; the two compared.
    let (_, seed) = server.submit(json!({ "kind": "unlearn", "model": "tiny", "class": "dog", "ssd": { "alpha": 10, "lambda": 1, "layers": "all" } }));
    browser.wait_for_text(&format!(".history li[data-run='{}'] .status", seed.id), Duration::from_secs(120), |t| t == "succeeded");
    browser.click(".history li[data-run='1'] input[type=checkbox]");
    browser.click(&format!(".history li[data-run='{}'] input[type=checkbox]", seed.id));
    let comparison = browser.wait_for_text("#comparison table.comparison", Duration::from_secs(30), |t| t.contains("dog"));
    assert!(comparison.contains("change") && comparison.contains("Forget acc"), "{comparison}");
    assert!(browser.text("#comparison").contains("Seed (α 10, λ 1)"), "each run's settings: {}", browser.text("#comparison"));
    let layout = "const c = document.querySelector('#comparison').getBoundingClientRect(); \
                  const m = document.querySelector('main').getBoundingClientRect(); \
                  return [c.width / m.width, c.top < innerHeight && c.bottom > 0, document.documentElement.scrollWidth <= innerWidth]";
    let desktop = browser.script(layout);
    assert!(desktop[0].as_f64().unwrap() > 0.9, "the comparison spans the page: {desktop}");
    assert_eq!((desktop[1].as_bool(), desktop[2].as_bool()), (Some(true), Some(true)), "in view, and nothing wider than the page: {desktop}");
    save_screenshot(&browser, "workbench.png");

    // At a phone's width the page fits; the wide tables scroll inside their cards.
    browser.emulate_width(390, 844);
    let phone = "return [innerWidth, document.documentElement.scrollWidth, \
                 [...document.querySelectorAll('.table-scroll')].map(s => [s.scrollWidth > s.clientWidth, s.getBoundingClientRect().right <= innerWidth + 1, \
                 s.parentElement.className, Math.round(s.getBoundingClientRect().right)])]";
    let started = std::time::Instant::now();
    let measured = loop {
        let measured = browser.script(phone);
        if measured[0] == 390 || started.elapsed() > Duration::from_secs(10) {
            break measured;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(measured[0], 390, "{measured}");
    assert!(measured[1].as_u64().unwrap() <= 390, "the page is no wider than the phone: {measured}");
    let scrolls = measured[2].as_array().unwrap();
    assert!(scrolls.len() >= 2 && scrolls.iter().all(|s| s[1] == true), "every table's card fits: {measured}");
    assert!(scrolls.iter().any(|s| s[0] == true), "the wide tables scroll inside their cards: {measured}");
    save_screenshot(&browser, "workbench-phone.png");

    // A link to a run opens it.
    browser.emulate_width(1400, 1800);
    browser.open(&format!("{}/?run=1", server.url));
    browser.wait_for("#results .run[data-run='1'] .seed-table tbody tr", 2, Duration::from_secs(30));
}

/// The page as it is now, in `target/e2e/`.
fn save_screenshot(browser: &Browser, name: &str) {
    let shots = repository().join("target/e2e");
    std::fs::create_dir_all(&shots).unwrap();
    let png = browser.screenshot();
    assert_eq!(&png[1..4], b"PNG");
    std::fs::write(shots.join(name), png).unwrap();
}

/// A shared dashboard: a run someone else submits appears and moves on in the history without
/// a reload; opened, it is followed live; when the server goes away the page says so and
/// keeps asking, and when it is back it shows how the run ended and offers to run it again;
/// a cancelled sweep keeps the classes it finished.
#[test]
fn a_second_viewer_follows_runs_live_through_a_lost_connection() {
    let (_scratch, mut server) = workbench();
    let viewer = Browser::start(WebGpu::Absent);
    viewer.open(&server.url);
    viewer.wait_for_text("#health", Duration::from_secs(30), |t| t.contains("cpu"));
    viewer.wait_for_text("#history", Duration::from_secs(30), |t| t.contains("No runs yet"));

    // Long enough to be caught running: every class on large subsets, every layer dampened
    // (the default preset's classifier-only runs read cached features, and took 5 s in all).
    let long_sweep = json!({
        "kind": "sweep", "model": "tiny", "subsample": { "forget": 1000, "full": 5000, "test": 5000 },
        "ssd": { "alpha": 10, "lambda": 1, "layers": "all" },
    });
    let (_, sweep) = server.submit(long_sweep.clone());
    let row = format!(".history li[data-run='{}']", sweep.id);
    viewer.wait_for_text(&format!("{row} .status"), Duration::from_secs(30), |t| t == "running");
    viewer.click(&format!("{row} button.link"));
    viewer.wait_for_text("#progress", Duration::from_secs(30), |t| t.contains(&format!("Run {}: running", sweep.id)) && t.contains("/10: "));

    server.kill();
    let lost = viewer.wait_for_text("#progress p.lost", Duration::from_secs(30), |t| !t.is_empty());
    assert!(lost.contains("Connection lost") && lost.contains("every 3 s"), "{lost}");
    viewer.wait_for("#health.lost", 1, Duration::from_secs(30));

    server.restart();
    let ended = viewer.wait_for_text("#results .ended", Duration::from_secs(60), |t| t.contains("interrupted"));
    assert!(ended.contains("the server stopped"), "with its reason: {ended}");
    assert!(viewer.all("#progress").is_empty(), "no stale progress once the run has ended");
    viewer.wait_for_text("#health", Duration::from_secs(30), |t| t.contains("cpu"));

    // Run again: the page submits the same request and follows it; cancelled after its first
    // class, it keeps that class.
    viewer.click("#results button.again");
    let again = viewer.wait_for_text("#progress strong", Duration::from_secs(30), |t| t.starts_with("Run ") && !t.starts_with(&format!("Run {}:", sweep.id)));
    viewer.wait_for_text("#progress .phase", Duration::from_secs(300), |t| t.contains("class 2/10"));
    viewer.click("#progress button");
    let cancelled = viewer.wait_for_text("#results .ended", Duration::from_secs(120), |t| t.contains("cancelled"));
    assert!(cancelled.contains("classes it finished"), "{again}: {cancelled}");
    assert!(viewer.all("#results .seed-table tbody tr").len() >= 2, "the finished class's rows");
    let id = again.trim_start_matches("Run ").split(':').next().unwrap().to_owned();
    viewer.wait_for_text(&format!(".history li[data-run='{id}'] .status"), Duration::from_secs(30), |t| t == "cancelled");
}

/// On a public server the page says what a visitor may do, loads its files and thumbnails
/// past the API's limit (they have their own), and waits out the API's 429 answers by their
/// `Retry-After` instead of showing them.
#[test]
fn a_public_demo_states_its_limits_and_waits_out_its_rate_limit() {
    let (_scratch, server) = workbench_with(&["--public", "--rate-limit", "12"]);
    // Spend this address's API budget, so that every first call of the page is refused.
    let api = agent();
    let mut refused = None;
    for _ in 0..20 {
        let response = api.get(format!("{}/api/runs", server.url)).call().unwrap();
        if response.status() == 429 {
            refused = Some(response.headers()["retry-after"].to_str().unwrap().to_owned());
            break;
        }
    }
    let retry_after: u64 = refused.expect("the budget was spent").parse().unwrap();
    assert!((1..=10).contains(&retry_after), "12 a minute: one every 5 s, not {retry_after}");

    let browser = Browser::start(WebGpu::Absent);
    let started = std::time::Instant::now();
    browser.open(&server.url);
    let notice = browser.wait_for_text("#demo", Duration::from_secs(30), |t| !t.is_empty());
    assert!(notice.contains("12 requests a minute") && notice.contains("2 runs"), "{notice}");
    assert!(notice.contains("64 images of the forget class"), "the server's ceiling: {notice}");
    browser.wait_for("#model option[value='tiny']", 1, Duration::from_secs(90));
    // Thumbnails are assets: they load (not just their tags) while the page has just spent
    // the API's budget again; on the API's limit they would be refused.
    browser.wait_for(".classes label.class img", 10, Duration::from_secs(60));
    let loaded = "return [...document.querySelectorAll('.classes img')].filter(i => i.complete && i.naturalWidth > 0).length";
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while browser.script(loaded).as_u64() != Some(10) {
        assert!(std::time::Instant::now() < deadline, "thumbnails did not load: {}", browser.script(loaded));
        std::thread::sleep(Duration::from_millis(200));
    }
    browser.wait_for("#gallery button.thumb", 12, Duration::from_secs(90));
    let waited = started.elapsed();
    assert!(waited >= Duration::from_secs(retry_after.saturating_sub(1)), "the lists came only after the server's wait: {waited:?}");
    assert!(browser.all(".error").is_empty(), "no 429 shown: {}", browser.text(".error"));
}

/// Where the browser offers WebGPU the page can run on it (headless Chromium's is software,
/// so the CPU is ranked first), and both give the same answer.
#[test]
fn webgpu_and_the_cpu_classify_alike_in_the_page() {
    let (_scratch, server) = workbench();
    let browser = Browser::start(WebGpu::Offered);
    browser.open(&server.url);
    let engines = browser.wait_for_text("#engine", Duration::from_secs(30), |t| t.contains("WebGPU"));
    assert!(engines.starts_with("WebAssembly CPU"), "software WebGPU comes after the CPU: {engines}");
    assert!(browser.text("body").contains("WebGPU runs in software"));
    browser.wait_for("#gallery button.thumb", 1, Duration::from_secs(30));

    browser.click("#engine option[value^='WebGPU']");
    browser.click("#gallery button.thumb");
    let on_gpu = browser.wait_for_text("#predictions", Duration::from_secs(120), |t| t.contains("on WebGPU"));
    browser.click("#engine option[value^='WebAssembly']");
    browser.click("#gallery button.thumb");
    let on_cpu = browser.wait_for_text("#predictions", Duration::from_secs(120), |t| t.contains("on WebAssembly CPU"));
    assert!(browser.all(".error").is_empty(), "no error shown: {}", browser.text(".error"));

    let (gpu, cpu) = (guesses(&on_gpu), guesses(&on_cpu));
    assert_eq!(gpu.len(), 3, "{on_gpu}");
    for ((gpu_class, gpu_percent), (cpu_class, cpu_percent)) in gpu.iter().zip(&cpu) {
        assert_eq!(gpu_class, cpu_class, "the same ranking: {on_gpu} vs {on_cpu}");
        // Shown to 0.1 %: rounding may differ by one step.
        assert!((gpu_percent - cpu_percent).abs() <= 0.11, "{on_gpu} vs {on_cpu}");
    }
}

/// The (class, percent) pairs of a prediction list, shown as a class line and a "45.2 %" line.
fn guesses(text: &str) -> Vec<(String, f64)> {
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    lines
        .windows(2)
        .filter_map(|pair| {
            let percent = pair[1].strip_suffix(" %")?.parse().ok()?;
            Some((pair[0].to_owned(), percent))
        })
        .collect()
}

/// The README's screenshots, with the shipped reference ResNet18 on the test server's small
/// subsets. Run by hand: `cargo test --release --workspace --exclude unlearn-frontend --test ui
/// -- --ignored readme_screenshots`; it writes `docs/screenshots/`.
#[test]
#[ignore = "regenerates the README's screenshots"]
fn readme_screenshots() {
    let dist = repository().join("frontend/dist");
    let scratch = scratch_data_dir();
    std::fs::create_dir_all(scratch.path().join("models")).unwrap();
    std::os::unix::fs::symlink(shipped_models().join("reference"), scratch.path().join("models/reference")).unwrap();
    let server = Server::start(scratch.path(), &["--static-dir", dist.to_str().unwrap()]);
    let (_, seed) = server.submit(json!({ "kind": "unlearn", "class": "cat", "ssd": { "alpha": 10, "lambda": 1, "layers": "all" } }));
    let browser = Browser::start(WebGpu::Absent);
    browser.open(&server.url);
    browser.click("label.class[data-class='cat']");
    browser.click("#run");
    browser.wait_for("#results .seed-table tbody tr", 2, Duration::from_secs(600));
    browser.wait_for_text(&format!(".history li[data-run='{}'] .status", seed.id), Duration::from_secs(600), |t| t == "succeeded");
    let shots = repository().join("docs/screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    std::fs::write(shots.join("desktop.png"), browser.screenshot()).unwrap();
    for id in [seed.id, seed.id + 1] {
        browser.click(&format!(".history li[data-run='{id}'] input[type=checkbox]"));
    }
    browser.wait_for("#comparison table.comparison tbody tr", 1, Duration::from_secs(30));
    browser.script("document.querySelector('#comparison').scrollIntoView()");
    std::thread::sleep(Duration::from_secs(1));
    std::fs::write(shots.join("comparison.png"), browser.screenshot()).unwrap();
    browser.emulate_width(390, 844);
    browser.script("window.scrollTo(0, 0)");
    std::thread::sleep(Duration::from_secs(1));
    std::fs::write(shots.join("phone.png"), browser.screenshot()).unwrap();
}
