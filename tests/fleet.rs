//! The fleet view end to end: the HTTP endpoint of a real `psmon run`
//! (metrics read by Prometheus' own Python parser, linted by promtool and
//! scraped by a real Prometheus, /healthz, /status, the
//! status page in Debian's Chromium driven over WebDriver, TLS with test
//! certificates made by openssl, slow and many clients) and the durable
//! event push to a receiver that is down, then up.

mod support;

use std::{
    collections::HashMap,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use support::*;

/// A directory with one entry watching a private victim, restarted for
/// real, and psagent.conf as given.
struct Fleet {
    dir: TempDir,
    victim: PathBuf,
    port: u16,
}

impl Fleet {
    fn new(tag: &str, agent: &str) -> Fleet {
        let dir = TempDir::new_in(Path::new("/tmp"), tag);
        let conf = dir.0.join("conf");
        std::fs::create_dir_all(&conf).unwrap();
        let victim = victim_copy(&dir.0, &format!("{tag}d"));
        let port = free_port();
        std::fs::write(
            conf.join("app.toml"),
            format!(
                "[[entry]]\npath = \"{v}\"\nrestart = \"{v} sleep >/dev/null 2>&1 &\"\nretry = 50\ngrace = 600\n",
                v = victim.display()
            ),
        )
        .unwrap();
        std::fs::write(
            conf.join("psagent.conf"),
            format!("HEARTBEAT_PORT = {port}\nRETRY_INTERVAL = 1\n{agent}"),
        )
        .unwrap();
        Fleet { dir, victim, port }
    }

    fn conf(&self) -> PathBuf {
        self.dir.0.join("conf")
    }

    fn address(&self) -> SocketAddr {
        format!("127.0.0.1:{}", self.port).parse().unwrap()
    }

    /// The victim started, psmon started, the victim Up.
    fn start(&self) -> (u32, Psmon) {
        let pid = reap_later(spawn_fresh(Command::new(&self.victim).arg("sleep")));
        let mut psmon = Psmon::start(&self.conf(), "auto");
        psmon.wait_for(") Up", |m| m["pid"] == pid);
        saw_or_wait(&mut psmon, "HTTP endpoint listening");
        // The first scan's Up can come before the source is open, and the
        // source's metrics with it.
        saw_or_wait(&mut psmon, "watching process events");
        (pid, psmon)
    }

    /// Kills the victim's instance `pid`; the pid of the one that replaces it.
    fn kill_and_wait_back(&self, pid: u32, psmon: &mut Psmon) -> u32 {
        kill9_pid(pid);
        let up = psmon.wait_for(") Up", |m| m["pid"] != pid);
        up["pid"].as_u64().unwrap() as u32
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        kill_all(&self.victim);
    }
}

/// A message already seen, or the next one that says `text`.
fn saw_or_wait(psmon: &mut Psmon, text: &str) -> Value {
    let seen = psmon
        .seen
        .iter()
        .find(|m| m["message"].as_str().is_some_and(|s| s.contains(text)))
        .cloned();
    seen.unwrap_or_else(|| psmon.wait(text))
}

/// One plain HTTP GET: (status, body).
fn get(address: SocketAddr, path: &str) -> (u16, String) {
    get_with(address, path, "")
}

/// One HTTP GET with these header lines (each ending in CRLF).
fn get_with(address: SocketAddr, path: &str, headers: &str) -> (u16, String) {
    let (head, body) = get_raw(address, path, headers);
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, String::from_utf8_lossy(&body).into_owned())
}

/// One GET with these extra header lines: the response's head and body.
fn get_raw(address: SocketAddr, path: &str, headers: &str) -> (String, Vec<u8>) {
    let mut s = TcpStream::connect(address).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: t\r\n{headers}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(out.len());
    let body = out.split_off((split + 4).min(out.len()));
    (String::from_utf8_lossy(&out).into_owned(), body)
}

/// What Prometheus 2.42 sends: OpenMetrics first, the text format after.
const PROMETHEUS_ACCEPT: &str = "Accept: application/openmetrics-text;version=1.0.0,\
    application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1\r\n";

/// `/metrics` as Prometheus' OpenMetrics parser (python3-prometheus-client)
/// reads it: sample name + labels → value.
fn scrape(address: SocketAddr) -> HashMap<String, f64> {
    let (code, text) = get_with(address, "/metrics", PROMETHEUS_ACCEPT);
    assert_eq!(code, 200, "{text}");
    let parser = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
        out[f"{s.name}{{{labels}}}"] = s.value
print(json.dumps(out))
"#;
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", parser])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 with python3-prometheus-client (.ci/run installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "Prometheus' parser refused /metrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn entry_sample(samples: &HashMap<String, f64>, name: &str, path: &Path) -> f64 {
    let key = format!("{name}{{path={},pfile=app}}", path.display());
    *samples
        .get(&key)
        .unwrap_or_else(|| panic!("no {key} in {samples:?}"))
}

/// A kill shows in the counters as it happened: one Down, one restart,
/// Up again, one detection and one restart-start observation.
#[test]
fn metrics_count_what_happened() {
    if !needs_root("watching processes with the ebpf source") {
        return;
    }
    let f = Fleet::new("metrics", "");
    let (pid, mut psmon) = f.start();
    let before = scrape(f.address());
    assert_eq!(entry_sample(&before, "psmon_entry_up", &f.victim), 1.0);
    assert_eq!(
        entry_sample(&before, "psmon_entry_restarts_total", &f.victim),
        0.0
    );
    assert_eq!(
        entry_sample(&before, "psmon_entry_instances", &f.victim),
        1.0
    );
    assert_eq!(before["psmon_build_info{version=0.1.0}"], 1.0);
    assert!(before["process_resident_memory_bytes{}"] > 1e6);
    assert_eq!(before["psmon_source_up{source=ebpf}"], 1.0);

    f.kill_and_wait_back(pid, &mut psmon);
    let after = scrape(f.address());
    assert_eq!(
        entry_sample(&after, "psmon_entry_restarts_total", &f.victim),
        1.0
    );
    assert_eq!(
        entry_sample(&after, "psmon_entry_downs_total", &f.victim),
        1.0
    );
    assert_eq!(
        entry_sample(&after, "psmon_entry_restart_failures_total", &f.victim),
        0.0
    );
    assert_eq!(entry_sample(&after, "psmon_entry_up", &f.victim), 1.0);
    assert_eq!(
        entry_sample(&after, "psmon_entry_restart_attempts", &f.victim),
        1.0
    );
    assert_eq!(after["psmon_detection_seconds_count{}"], 1.0);
    assert_eq!(after["psmon_restart_start_seconds_count{}"], 1.0);
    let detection = after["psmon_detection_seconds_sum{}"];
    assert!(detection > 0.0 && detection < 1.0, "{detection}");
    assert!(after["psmon_source_events_total{source=ebpf}"] >= 2.0);

    // /healthz and /status answer from the same psmon.
    assert_eq!(
        get(f.address(), "/healthz"),
        (200, "ok: source ebpf\n".into())
    );
    let (code, status) = get(f.address(), "/status");
    assert_eq!(code, 200);
    let status: Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["pid"], psmon.child.id());
    assert_eq!(status["entries"][0]["state"], "up");
}

/// `promtool check metrics` (Debian's prometheus package) reads what a
/// client that does not ask for OpenMetrics gets, and finds nothing to say;
/// a real Prometheus scraping psmon sees the restart a kill caused.
#[test]
fn promtool_lints_the_text_format_and_a_real_prometheus_scrapes_it() {
    if !needs_root("watching processes with the ebpf source") {
        return;
    }
    for tool in ["/usr/bin/promtool", "/usr/bin/prometheus"] {
        assert!(
            Path::new(tool).exists(),
            "{tool} is missing: install the Debian package prometheus (.ci/run does)"
        );
    }
    // A push receiver that is not there: the push metrics are exposed too.
    let f = Fleet::new("promtool", "PUSH_URL = http://127.0.0.1:9/\n");
    let (pid, mut psmon) = f.start();
    f.kill_and_wait_back(pid, &mut psmon);

    let (code, text) = get(f.address(), "/metrics");
    assert_eq!(code, 200);
    // The shipped alert rules speak of metrics psmon has.
    let rules = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../conf/prometheus/psmon.rules.yml"),
    )
    .unwrap();
    for name in rules
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("psmon_"))
    {
        assert!(
            text.contains(&format!("\n{name}{{")) || text.contains(&format!("\n{name} ")),
            "the alert rules use {name}, which /metrics does not have:\n{text}"
        );
    }
    let mut lint = Command::new("/usr/bin/promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    lint.stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = lint.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool: {said}\n{text}"
    );
    assert!(
        text.contains("# TYPE psmon_entry_restarts_total counter"),
        "{text}"
    );

    // Compressed for a client that accepts gzip (Prometheus does, below),
    // and what the real gzip unpacks is the exposition.
    let (head, packed) = get_raw(
        f.address(),
        "/metrics",
        &format!("{PROMETHEUS_ACCEPT}Accept-Encoding: gzip\r\n"),
    );
    assert!(
        head.to_ascii_lowercase().contains("content-encoding: gzip"),
        "{head}"
    );
    let mut gunzip = Command::new("gzip")
        .arg("-dc")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    gunzip.stdin.take().unwrap().write_all(&packed).unwrap();
    let unpacked = gunzip.wait_with_output().unwrap();
    assert!(unpacked.status.success(), "gzip -dc failed on the body");
    let unpacked = String::from_utf8(unpacked.stdout).unwrap();
    assert!(
        unpacked.contains("# TYPE psmon_entry_restarts counter") && unpacked.ends_with("# EOF\n"),
        "{unpacked}"
    );
    assert!(
        packed.len() < unpacked.len() / 3,
        "{} of {} bytes",
        packed.len(),
        unpacked.len()
    );

    // A real Prometheus, scraping every second (it asks for gzip).
    let port = free_port();
    let config = f.dir.0.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: psmon\n    static_configs:\n      - targets: ['{}']\n",
            f.address()
        ),
    )
    .unwrap();
    let prometheus = Command::new("/usr/bin/prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            f.dir.0.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _prometheus = KillOnDrop(prometheus);
    let query = format!(
        "http://127.0.0.1:{port}/api/v1/query?query=psmon_entry_restarts_total%7Bpath%3D%22{}%22%7D",
        f.victim.display().to_string().replace('/', "%2F")
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    let value = loop {
        if let Ok(answer) = http_json("GET", &query, None) {
            if let Some(v) = answer["data"]["result"][0]["value"][1].as_str() {
                break v.to_string();
            }
            last = answer.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never had the sample: {last}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(value, "1", "one restart, as Prometheus scraped it");
}

/// The shipped alert rules load, and their unit tests pass
/// (`promtool check rules`, `promtool test rules`).
#[test]
fn the_shipped_alert_rules_pass_their_tests() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../conf/prometheus");
    for args in [
        &["check", "rules", "psmon.rules.yml"][..],
        &["test", "rules", "psmon.rules.test.yml"][..],
    ] {
        let out = Command::new("/usr/bin/promtool")
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("promtool: install the Debian package prometheus (.ci/run does)");
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A child killed and reaped when the test ends, passed or not.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A hundred connections held open and a client reading a byte a second
/// do not keep psmon from restarting a killed process, nor from answering
/// once they are gone.
/// A watched path with a quote, a backslash and a newline in it: the
/// scrape stays valid and the label says the path as it is.
#[test]
fn label_values_are_escaped() {
    let dir = TempDir::new_in(Path::new("/tmp"), "labels");
    let conf = dir.0.join("conf");
    std::fs::create_dir_all(&conf).unwrap();
    let victim = victim_copy(&dir.0, "we\"ird\\d\nx");
    let port = free_port();
    // A TOML basic string: the path's quote, backslash and newline escaped.
    let quoted = serde_json::to_string(victim.to_str().unwrap()).unwrap();
    std::fs::write(
        conf.join("app.toml"),
        format!("[[entry]]\npath = {quoted}\n"),
    )
    .unwrap();
    std::fs::write(
        conf.join("psagent.conf"),
        format!("HEARTBEAT_PORT = {port}\n"),
    )
    .unwrap();
    let mut psmon = Psmon::start(&conf, "poll");
    saw_or_wait(&mut psmon, "HTTP endpoint listening");
    let address: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let samples = scrape(address);
    let key = format!("psmon_entry_up{{path={},pfile=app}}", victim.display());
    assert_eq!(samples.get(&key), Some(&0.0), "{key} in {samples:?}");
}

#[test]
fn slow_and_many_clients_do_not_delay_a_restart() {
    if !needs_root("watching processes with the ebpf source") {
        return;
    }
    let f = Fleet::new("slow", "");
    let (pid, mut psmon) = f.start();
    let held: Vec<TcpStream> = (0..100)
        .filter_map(|_| TcpStream::connect(f.address()).ok())
        .collect();
    // A slow reader: asks for /metrics, then reads one byte a second.
    let mut slow = TcpStream::connect(f.address()).unwrap();
    write!(slow, "GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let reader = std::thread::spawn(move || {
        let mut byte = [0u8];
        for _ in 0..5 {
            if slow.read(&mut byte).unwrap_or(0) == 0 {
                break;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    });
    let begun = Instant::now();
    let back = f.kill_and_wait_back(pid, &mut psmon);
    eprintln!(
        "kill → Up with 100 idle connections and a slow reader: {:?}",
        begun.elapsed()
    );
    assert_ne!(back, pid);
    drop(held);
    reader.join().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(get(f.address(), "/healthz").0, 200);
}

/// Test certificates: a CA, a server certificate for 127.0.0.1 signed by
/// it, and a client certificate signed by it.
fn certificates(dir: &Path) {
    let sh = |script: &str| {
        let out = Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "{script}: {out:?}");
    };
    sh(
        "openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 2 -subj /CN=psmon-test-ca 2>/dev/null",
    );
    sh(
        "openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=127.0.0.1 2>/dev/null",
    );
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    sh(
        "openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt -days 2 -extfile san.ext 2>/dev/null",
    );
    sh(
        "openssl req -newkey rsa:2048 -nodes -keyout client.key -out client.csr -subj /CN=scraper 2>/dev/null",
    );
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    sh(
        "openssl x509 -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out client.crt -days 2 -extfile client.ext 2>/dev/null",
    );
}

fn curl(args: &[&str]) -> (bool, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .expect("curl");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// With ps_ssl.conf the endpoint speaks TLS only; with CLIENT_CA a client
/// without a certificate signed by it is refused. A key that does not go
/// with the certificate is a `psmon check` error, and at run time keeps
/// the endpoint off while monitoring runs on.
#[test]
fn tls_from_ps_ssl_conf() {
    if !needs_root("watching processes with the ebpf source") {
        return;
    }
    let f = Fleet::new("tls", "");
    let certs = f.dir.0.join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    certificates(&certs);
    let c = |name: &str| certs.join(name).display().to_string();
    std::fs::write(
        f.conf().join("ps_ssl.conf"),
        format!(
            "CERTIFICATE = {}\nKEY = {}\nCLIENT_CA = {}\n",
            c("server.crt"),
            c("server.key"),
            c("ca.crt")
        ),
    )
    .unwrap();
    let (pid, psmon) = f.start();
    assert!(
        psmon.seen.iter().any(|m| m["message"]
            .as_str()
            .is_some_and(|s| s.contains("listening on https://"))),
        "{:?}",
        psmon.seen
    );
    let url = format!("https://127.0.0.1:{}/healthz", f.port);
    let (ok, said) = curl(&[
        "--cacert",
        &c("ca.crt"),
        "--cert",
        &c("client.crt"),
        "--key",
        &c("client.key"),
        &url,
    ]);
    assert!(ok && said == "ok: source ebpf\n", "{said}");
    let (ok, said) = curl(&["--cacert", &c("ca.crt"), &url]);
    assert!(
        !ok,
        "a client without a certificate must be refused: {said}"
    );
    let (ok, _) = curl(&[&format!("http://127.0.0.1:{}/healthz", f.port)]);
    assert!(!ok, "plain HTTP must not be served");
    drop(psmon);

    // The client key in place of the server's: it does not go with the certificate.
    std::fs::write(
        f.conf().join("ps_ssl.conf"),
        format!(
            "CERTIFICATE = {}\nKEY = {}\n",
            c("server.crt"),
            c("client.key")
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_psmon"))
        .args(["check", "--insecure-config"])
        .arg(f.conf())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("ps_ssl.conf:2:1:") && stderr.contains("does not go with"),
        "{stderr}"
    );

    // The same victim, taken over by a psmon whose endpoint stays off.
    let mut psmon = Psmon::start(&f.conf(), "auto");
    let off = psmon.wait("the HTTP endpoint stays off");
    assert!(
        off["message"]
            .as_str()
            .unwrap()
            .contains("monitoring goes on"),
        "{off}"
    );
    saw_or_wait(&mut psmon, "watching process events");
    let back = f.kill_and_wait_back(pid, &mut psmon);
    assert_ne!(back, pid);
}

/// The page, in Debian's Chromium (headless, driven by chromedriver over
/// WebDriver): it lists the entry with its pid, and after a kill shows
/// the new pid and the Down without being reloaded.
#[test]
fn the_status_page_in_a_real_browser() {
    if !needs_root("watching processes with the ebpf source") {
        return;
    }
    if !needs("/usr/bin/chromium", "chromium") || !needs("/usr/bin/chromedriver", "chromium-driver")
    {
        return;
    }
    let f = Fleet::new("page", "");
    let (pid, mut psmon) = f.start();
    let driver_port = free_port();
    let mut driver = Command::new("/usr/bin/chromedriver")
        .arg(format!("--port={driver_port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let browser = WebDriver::new(driver_port, &f.dir.0.join("profile"));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        browser.go(&format!("http://127.0.0.1:{}/", f.port));
        let pids_of = |browser: &WebDriver| {
            browser.run(&format!(
                "const row = [...document.querySelectorAll('#entries tr')].find(r => r.dataset.path === {});\
                 return row ? row.querySelector('td.pids').textContent + '|' + row.querySelector('.state').textContent : '';",
                json!(f.victim.display().to_string())
            ))
        };
        let shown = browser.until(|b| {
            let v = pids_of(b);
            (v == json!(format!("{pid}|up"))).then_some(v)
        });
        assert_eq!(shown, json!(format!("{pid}|up")));
        let back = f.kill_and_wait_back(pid, &mut psmon);
        // The same page, refreshed by itself: the new pid and the Down.
        browser.until(|b| {
            let v = pids_of(b);
            (v == json!(format!("{back}|up"))).then_some(v)
        });
        let events = browser.run("return document.getElementById('events').textContent;");
        let events = events.as_str().unwrap_or_default().to_string();
        assert!(events.contains(&format!("pid={pid}] Down")), "{events}");
        let navigations = browser.run("return performance.getEntriesByType('navigation').length;");
        assert_eq!(navigations, json!(1), "the page must not reload itself");
    }));
    browser.quit();
    let _ = driver.kill();
    let _ = driver.wait();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

/// A W3C WebDriver session with headless Chromium.
struct WebDriver {
    base: String,
    session: String,
}

impl WebDriver {
    fn new(port: u16, profile: &Path) -> WebDriver {
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                         "--no-first-run", "--disable-background-networking",
                         "--disable-component-update", "--disable-sync",
                         "--disable-dev-shm-usage",
                         format!("--user-data-dir={}", profile.display())]
            }
        }}});
        loop {
            match http_json("POST", &format!("{base}/session"), Some(&caps)) {
                Ok(v) if v["value"]["sessionId"].is_string() => {
                    let session = v["value"]["sessionId"].as_str().unwrap().to_string();
                    return WebDriver { base, session };
                }
                other => {
                    assert!(Instant::now() < deadline, "no WebDriver session: {other:?}");
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    }

    fn url(&self, tail: &str) -> String {
        format!("{}/session/{}{tail}", self.base, self.session)
    }

    fn go(&self, url: &str) {
        http_json("POST", &self.url("/url"), Some(&json!({ "url": url }))).unwrap();
    }

    fn run(&self, script: &str) -> Value {
        let v = http_json(
            "POST",
            &self.url("/execute/sync"),
            Some(&json!({"script": script, "args": []})),
        )
        .unwrap();
        v["value"].clone()
    }

    /// Polls `f` until it gives a value (15 s at most).
    fn until(&self, f: impl Fn(&WebDriver) -> Option<Value>) -> Value {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(v) = f(self) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "the page never showed it; it shows: {}",
                self.run("return document.body.innerText;")
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn quit(&self) {
        let _ = http_json("DELETE", &self.url(""), None);
    }
}

/// A JSON request over plain HTTP (WebDriver's protocol).
fn http_json(method: &str, url: &str, body: Option<&Value>) -> Result<Value, String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(60)))
        .http_status_as_error(false)
        .build()
        .into();
    let response = match (method, body) {
        ("POST", Some(b)) => agent
            .post(url)
            .content_type("application/json")
            .send(b.to_string()),
        ("DELETE", _) => agent.delete(url).call(),
        _ => agent.get(url).call(),
    };
    let text = response
        .map_err(|e| e.to_string())?
        .body_mut()
        .read_to_string()
        .map_err(|e| e.to_string())?;
    serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))
}

/// A receiver of pushed events: answers 200 to each POST and keeps its body.
struct Receiver {
    got: Arc<Mutex<Vec<Value>>>,
}

impl Receiver {
    fn start(port: u16) -> Receiver {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let keep = Arc::clone(&got);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let keep = Arc::clone(&keep);
                std::thread::spawn(move || serve_posts(stream, &keep));
            }
        });
        Receiver { got }
    }

    fn events(&self) -> Vec<Value> {
        self.got.lock().unwrap().clone()
    }
}

fn serve_posts(stream: TcpStream, keep: &Mutex<Vec<Value>>) {
    serve(stream, keep, |_| psmon_testkit::OK);
}

/// Serves requests on `stream`: each body that is JSON goes to `keep`;
/// each request is answered with `answer(request line)`.
fn serve(stream: TcpStream, keep: &Mutex<Vec<Value>>, answer: impl Fn(&str) -> &'static str) {
    psmon_testkit::serve_http(stream, |line, body| {
        if let Ok(v) = serde_json::from_slice::<Value>(body) {
            keep.lock().unwrap().push(v);
        }
        answer(line)
    });
}

/// A receiver that moved (301 to another path, which would answer a GET
/// with 200): no event counts as delivered, every one stays queued, and
/// the operator is told why.
#[test]
fn a_redirecting_receiver_delivers_nothing() {
    let receiver_port = free_port();
    let listener = TcpListener::bind(("127.0.0.1", receiver_port)).unwrap();
    let requests = Arc::new(Mutex::new(Vec::new()));
    let keep = Arc::clone(&requests);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let keep = Arc::clone(&keep);
            std::thread::spawn(move || {
                serve(stream, &keep, |line| {
                    if line.starts_with("POST /old") {
                        "HTTP/1.1 301 Moved Permanently\r\nLocation: /new\r\nContent-Length: 0\r\n\r\n"
                    } else {
                        psmon_testkit::OK
                    }
                })
            });
        }
    });
    let f = Fleet::new(
        "redirect",
        &format!("PUSH_URL = http://127.0.0.1:{receiver_port}/old\n"),
    );
    let (_pid, mut psmon) = f.start();
    let failed = psmon.wait("event push to");
    let said = failed["message"].as_str().unwrap();
    assert!(said.contains("301") && said.contains("/new"), "{said}");
    let m = scrape(f.address());
    assert_eq!(m["psmon_push_delivered_events_total{}"], 0.0, "{m:?}");
    assert!(m["psmon_push_waiting_events{}"] >= 1.0, "{m:?}");
    assert!(
        !requests.lock().unwrap().is_empty(),
        "the POST carried the event"
    );
}

/// The receiver is down while five events happen; psmon is restarted;
/// then the receiver comes up: all five arrive, in order, none twice.
#[test]
fn pushed_events_survive_a_down_receiver_and_a_psmon_restart() {
    if !needs_root("watching processes with the ebpf source") {
        return;
    }
    let receiver_port = free_port();
    let f = Fleet::new(
        "push",
        &format!("PUSH_URL = http://127.0.0.1:{receiver_port}/psmon-events\n"),
    );
    let (pid, mut psmon) = f.start(); // 1: Up
    saw_or_wait(&mut psmon, "event push to");
    let second = f.kill_and_wait_back(pid, &mut psmon); // 2: Down, 3: Up
    let third = f.kill_and_wait_back(second, &mut psmon); // 4: Down, 5: Up
    drop(psmon);
    let queue = std::fs::read_to_string(f.dir.0.join("state/push/queue.jsonl")).unwrap();
    assert_eq!(queue.lines().count(), 5, "{queue}");

    let mut psmon = Psmon::start(&f.conf(), "auto");
    psmon.wait("watching process events");
    let receiver = Receiver::start(receiver_port);
    let deadline = Instant::now() + Duration::from_secs(15);
    while receiver.events().len() < 5 {
        assert!(
            Instant::now() < deadline,
            "got only {:?}",
            receiver.events()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(1500));
    let got = receiver.events();
    let seen: Vec<(String, u64)> = got
        .iter()
        .take(5)
        .map(|e| {
            (
                e["kind"].as_str().unwrap().to_string(),
                e["pid"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    let expected = [
        ("up", pid),
        ("down", pid),
        ("up", second),
        ("down", second),
        ("up", third),
    ];
    assert_eq!(
        seen,
        expected
            .iter()
            .map(|(k, p)| (k.to_string(), u64::from(*p)))
            .collect::<Vec<_>>(),
        "{got:#?}"
    );
    let ids: std::collections::HashSet<&str> =
        got.iter().filter_map(|e| e["id"].as_str()).collect();
    assert_eq!(ids.len(), got.len(), "an event arrived twice: {got:#?}");
    for e in &got {
        assert!(
            e["host"].is_string() && e["time"].is_string() && e["message"].is_string(),
            "{e}"
        );
        assert_eq!(e["path"], f.victim.display().to_string());
    }
    // An operator action is pushed too.
    psmon.signal(nix::sys::signal::Signal::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(15);
    let audit = loop {
        let events = receiver.events();
        if let Some(e) = events.iter().find(|e| e["kind"] == "audit") {
            break e.clone();
        }
        assert!(Instant::now() < deadline, "no audit event: {events:#?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(audit["action"], "reload", "{audit}");
    assert_eq!(audit["via"], "sighup", "{audit}");
    assert_eq!(audit["pid"], std::process::id(), "{audit}");
    // What this psmon delivered (the five from before its restart among
    // them) and that nothing waits, in /metrics.
    let m = scrape(f.address());
    assert!(m["psmon_push_delivered_events_total{}"] >= 6.0, "{m:?}");
    assert_eq!(m["psmon_push_waiting_events{}"], 0.0, "{m:?}");
    assert_eq!(m["psmon_push_dropped_events_total{}"], 0.0, "{m:?}");
}
