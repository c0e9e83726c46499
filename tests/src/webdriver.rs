//! Just enough of the W3C WebDriver protocol to drive headless Chromium through
//! chromedriver: open a page, find, click, type, read, run a script, take a screenshot.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Whether the browser offers WebGPU: headless Chromium's is SwiftShader, in software.
#[derive(Clone, Copy, PartialEq)]
pub enum WebGpu {
    Offered,
    Absent,
}

pub struct Browser {
    driver: Child,
    base: String,
    agent: ureq::Agent,
}

impl Browser {
    /// Starts chromedriver (`$CHROMEDRIVER`, default `/usr/bin/chromedriver`) and a headless
    /// Chromium session.
    pub fn start(webgpu: WebGpu) -> Self {
        let driver_path = std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "/usr/bin/chromedriver".into());
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let driver = Command::new(&driver_path)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{driver_path} does not start ({e}); install Debian's chromium and chromium-driver"));
        let mut browser = Self { driver, base: format!("http://127.0.0.1:{port}"), agent: crate::server::agent() };
        let started = Instant::now();
        while browser.agent.get(format!("{}/status", browser.base)).call().is_err() {
            assert!(started.elapsed() < Duration::from_secs(20), "chromedriver did not come up");
            std::thread::sleep(Duration::from_millis(100));
        }
        let binary = std::env::var("CHROME").unwrap_or_else(|_| "/usr/bin/chromium".into());
        let gpu = match webgpu {
            WebGpu::Offered => "--enable-unsafe-webgpu",
            WebGpu::Absent => "--disable-gpu",
        };
        let args = [
            "--headless",
            "--no-sandbox",
            gpu,
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1400,1800",
        ];
        let session = browser.call(
            "POST",
            "/session",
            json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome", "goog:chromeOptions": { "binary": binary, "args": args } } } }),
        );
        let id = session["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {session}")).to_owned();
        browser.base = format!("{}/session/{id}", browser.base);
        browser
    }

    fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let url = format!("{}{path}", self.base);
        let mut response = match method {
            "GET" => self.agent.get(&url).call(),
            "DELETE" => self.agent.delete(&url).call(),
            _ => self.agent.post(&url).header("content-type", "application/json").send(body.to_string()),
        }
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        let text = response.body_mut().read_to_string().unwrap();
        let value: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{method} {url}: {text}"));
        value["value"].clone()
    }

    pub fn open(&self, url: &str) {
        self.call("POST", "/url", json!({ "url": url }));
    }

    /// Elements matching a CSS selector, now.
    pub fn all(&self, css: &str) -> Vec<String> {
        let found = self.call("POST", "/elements", json!({ "using": "css selector", "value": css }));
        found.as_array().map(|list| list.iter().filter_map(|e| e[ELEMENT].as_str().map(String::from)).collect()).unwrap_or_default()
    }

    /// Waits until `css` matches at least `count` elements; returns them.
    pub fn wait_for(&self, css: &str, count: usize, timeout: Duration) -> Vec<String> {
        let started = Instant::now();
        loop {
            let found = self.all(css);
            if found.len() >= count {
                return found;
            }
            assert!(started.elapsed() < timeout, "waited {timeout:?} for {count} of '{css}'; page: {}", self.page());
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until the first `css` element's text satisfies `check`; returns the text.
    pub fn wait_for_text(&self, css: &str, timeout: Duration, check: impl Fn(&str) -> bool) -> String {
        let started = Instant::now();
        loop {
            let text = self.text(css);
            if check(&text) {
                return text;
            }
            assert!(started.elapsed() < timeout, "waited {timeout:?} on '{css}', which says: {text}; page: {}", self.page());
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn click(&self, css: &str) {
        let element = self.wait_for(css, 1, Duration::from_secs(30)).remove(0);
        self.call("POST", &format!("/element/{element}/click"), json!({}));
    }

    /// Types into an input; for a file input, the text is the file's path.
    pub fn type_into(&self, css: &str, text: &str) {
        let element = self.wait_for(css, 1, Duration::from_secs(30)).remove(0);
        self.call("POST", &format!("/element/{element}/value"), json!({ "text": text }));
    }

    /// The first match's visible text, or "" when nothing matches.
    pub fn text(&self, css: &str) -> String {
        match self.all(css).first() {
            Some(element) => self.call("GET", &format!("/element/{element}/text"), Value::Null).as_str().unwrap_or_default().to_owned(),
            None => String::new(),
        }
    }

    pub fn script(&self, script: &str) -> Value {
        self.call("POST", "/execute/sync", json!({ "script": script, "args": [] }))
    }

    /// The page's URL and start of its markup, for failure messages.
    pub fn page(&self) -> String {
        let html =
            self.script("return location.href + ' ' + document.body.innerText.slice(0, 4000) + ' ' + performance.getEntries().map(e => e.name).join(', ')");
        html.as_str().unwrap_or_default().to_owned()
    }

    /// Lays the page out as a phone or a desktop of `width` CSS pixels would (Chromium's
    /// device emulation: a headless window has a minimum width).
    pub fn emulate_width(&self, width: u32, height: u32) {
        let mobile = width < 600;
        let params = json!({ "width": width, "height": height, "deviceScaleFactor": if mobile { 2 } else { 1 }, "mobile": mobile });
        self.call("POST", "/goog/cdp/execute", json!({ "cmd": "Emulation.setDeviceMetricsOverride", "params": params }));
    }

    pub fn screenshot(&self) -> Vec<u8> {
        let encoded = self.call("GET", "/screenshot", Value::Null);
        decode_base64(encoded.as_str().expect("base64 PNG"))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.agent.delete(&self.base).call();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn decode_base64(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let digits: Vec<u8> = text.bytes().filter(|c| !c.is_ascii_whitespace() && *c != b'=').map(value).collect();
    digits
        .chunks(4)
        .flat_map(|chunk| {
            let bits = chunk.iter().enumerate().fold(0u32, |acc, (i, &d)| acc | (u32::from(d) << (18 - 6 * i)));
            let bytes = bits.to_be_bytes();
            bytes[1..chunk.len()].to_vec()
        })
        .collect()
}
