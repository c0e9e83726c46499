//! The whole workbench in headless Chromium: the real server with a tiny trained model, the
//! built UI, an unlearning run from the page to its table and heatmaps, and local inference
//! on a gallery image and on an uploaded file, on the CPU and on WebGPU. Saves a screenshot in
//! `target/e2e/`.

use std::time::Duration;

use unlearn_tests::server::{agent, Server};
use unlearn_tests::webdriver::{Browser, WebGpu};
use unlearn_tests::{backend, ok, repository, scratch_data_dir};

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
    browser.click("button.class[data-class='dog']");
    browser.wait_for_text("#run", Duration::from_secs(5), |t| t == "Forget dog");
    browser.click("#run");
    browser.wait_for("#results .seed-table tbody tr", 2, Duration::from_secs(180));
    let table = browser.text("#results .seed-table");
    assert!(table.contains("original dog") && table.contains("SSD dog"), "{table}");
    assert!(table.contains("MIA (% members)") && table.contains("Time (s)"), "{table}");
    let meta = browser.text("#results");
    assert!(meta.contains("calibrated") && meta.contains("membership attack"), "the default preset calibrates alpha: {meta}");
    assert_eq!(browser.all("#results .heatmap g.cell").len(), 200, "two 10x10 heatmaps");
    let history = browser.wait_for_text(".history", Duration::from_secs(10), |t| t.contains("forget dog"));
    assert!(history.contains("succeeded"), "{history}");

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

    let shots = repository().join("target/e2e");
    std::fs::create_dir_all(&shots).unwrap();
    let png = browser.screenshot();
    assert_eq!(&png[1..4], b"PNG");
    std::fs::write(shots.join("workbench.png"), png).unwrap();
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
    browser.wait_for(".classes button.class img", 10, Duration::from_secs(60));
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
