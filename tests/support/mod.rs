//! Helpers of the browser test: a chromedriver started (and killed) by the test, headless
//! Chromium sessions with a fresh profile each, and DOM polling with a deadline.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use chat_testkit::{find_executable as find_exe, free_port};

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

/// How long any one expected thing may take to show up on a page.
pub const DEADLINE: Duration = Duration::from_secs(10);

const INSTALL: &str = "the browser test needs Chromium and its WebDriver: apt-get install chromium chromium-driver";

/// A chromedriver process on a free local port; killed (with the browsers it started) on drop.
pub struct Chromedriver {
    child: Child,
    url: String,
    chromium: PathBuf,
    profiles: Vec<PathBuf>,
}

impl Chromedriver {
    /// Starts chromedriver and waits until it accepts connections. Panics, saying what to
    /// install, when Chromium or chromedriver is missing: this test never skips.
    pub fn start() -> Chromedriver {
        let chromium = find_exe(&["chromium", "chromium-browser", "google-chrome"])
            .unwrap_or_else(|| panic!("chromium not found in PATH; {INSTALL}"));
        let driver = find_exe(&["chromedriver"]).unwrap_or_else(|| panic!("chromedriver not found in PATH; {INSTALL}"));
        let port = free_port();
        let mut child = Command::new(&driver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}; {INSTALL}", driver.display()));
        // chromedriver says when it listens; its stdout is read (and drained) by a thread.
        let stdout = child.stdout.take().expect("piped stdout");
        let (started, listening) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut started = Some(started);
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.contains("started successfully") {
                    if let Some(started) = started.take() {
                        let _ = started.send(());
                    }
                }
            }
        });
        let this = Chromedriver { child, url: format!("http://127.0.0.1:{port}"), chromium, profiles: Vec::new() };
        if let Err(e) = listening.recv_timeout(DEADLINE) {
            panic!("chromedriver did not report listening on port {port} within {DEADLINE:?} ({e}); {INSTALL}");
        }
        this
    }

    /// A new headless Chromium session with a fresh profile and a desktop-sized window.
    pub async fn browser(&mut self) -> Client {
        // Unique across the drivers of this process too: tests run in parallel.
        static PROFILES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = PROFILES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let profile = std::env::temp_dir().join(format!("chat-browser-test-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&profile);
        std::fs::create_dir_all(&profile).expect("create a Chromium profile directory");
        self.profiles.push(profile.clone());
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1100,760",
        ]
        .into_iter()
        .map(String::from)
        .chain([format!("--user-data-dir={}", profile.display())])
        .collect::<Vec<_>>();
        let mut caps = serde_json::Map::new();
        caps.insert("browserName".into(), json!("chrome"));
        caps.insert("goog:chromeOptions".into(), json!({"binary": self.chromium, "args": args}));
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&self.url)
            .await
            .unwrap_or_else(|e| panic!("cannot start a Chromium session through chromedriver: {e}"))
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for profile in &self.profiles {
            let _ = std::fs::remove_dir_all(profile);
        }
    }
}

/// Waits until `css` matches an element of the page, polling the DOM until [`DEADLINE`].
pub async fn wait_for(page: &Client, css: &str) -> Element {
    page.wait()
        .at_most(DEADLINE)
        .every(Duration::from_millis(25))
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css:?} did not show up within {DEADLINE:?}: {e}"))
}

/// Waits until the JavaScript expression `expr` is truthy on the page; returns its value.
pub async fn wait_until(page: &Client, expr: &str) -> Value {
    chat_testkit::eventually(&format!("{expr:?} to hold on the page"), DEADLINE, || async {
        let value = page.execute(&format!("return ({expr});"), vec![]).await.expect("run a script on the page");
        (!matches!(value, Value::Null | Value::Bool(false))).then_some(value)
    })
    .await
}

/// The messages a page shows for `room`, in order, as `(seq, text)`.
pub async fn messages(page: &Client, room: &str) -> Vec<(u64, String)> {
    let script = "return [...document.querySelectorAll(`li.msg[data-room=\"${arguments[0]}\"]`)]\
                  .map(li => [Number(li.dataset.seq), li.querySelector('.text').textContent]);";
    let value = page.execute(script, vec![json!(room)]).await.expect("read the message list");
    serde_json::from_value(value).expect("a list of [seq, text]")
}
