//! What psmon's end-to-end tests (`tests/`) and its benchmarks (`cargo
//! xtask bench`) share: how a `psmon run` under test is started and its
//! operator messages read, and a receiver for psmon's event push.

use std::{
    ffi::OsStr,
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    path::Path,
    process::{ChildStderr, Command, Stdio},
    sync::mpsc,
};

use serde_json::Value;

/// `psmon run` on the configuration in `conf`, through `wrapper` (e.g.
/// `nsenter` into a cluster node) when one is given: files taken as they
/// are, JSON messages on stderr (piped), the log in `conf/log`. The
/// caller adds what else it needs and spawns it.
pub fn psmon_run(
    wrapper: &[impl AsRef<OsStr>],
    psmon: &Path,
    conf: &Path,
    source: &str,
) -> Command {
    let mut command = match wrapper.split_first() {
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg(psmon);
            c
        }
        None => Command::new(psmon),
    };
    command
        .args([
            "run",
            "--insecure-config",
            "--log-format",
            "json",
            "--source",
            source,
        ])
        .arg("--conf")
        .arg(conf)
        .arg("--log-dir")
        .arg(conf.join("log"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

/// psmon's messages, one a line of its stderr, read on a thread of their
/// own. psmon's own diagnostics (tracing) are text lines: they come as
/// `{"message": LINE, "text": true}`, so they can be waited for too.
pub fn messages(stderr: ChildStderr) -> mpsc::Receiver<Value> {
    let (tx, messages) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let v = serde_json::from_str::<Value>(&line)
                .unwrap_or_else(|_| serde_json::json!({ "message": line, "text": true }));
            if tx.send(v).is_err() {
                break;
            }
        }
    });
    messages
}

/// The 200 an event receiver answers with.
pub const OK: &str = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";

/// Serves HTTP/1.1 requests on `stream` until the client hangs up: each
/// is handed to `each` (its request line and body), which says what to
/// answer.
pub fn serve_http(stream: TcpStream, mut each: impl FnMut(&str, &[u8]) -> &'static str) {
    let Ok(read) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read);
    let mut writer = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut length = 0usize;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((k, v)) = header.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0u8; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        if writer.write_all(each(&line, &body).as_bytes()).is_err() {
            return;
        }
    }
}
