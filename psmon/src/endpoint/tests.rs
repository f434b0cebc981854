//! The endpoint over real TCP, with a scripted supervisor on the other
//! end of its request channel.

use std::{
    io::{Read, Write},
    net::TcpStream,
};

use super::*;

/// How the scripted supervisor answers a ping.
#[derive(Clone, Copy)]
enum Loop {
    SourceOpen,
    SourceDown,
    Stuck,
}

struct Running {
    address: SocketAddr,
    token: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
    _supervisor: std::thread::JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.token.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn start_with(behaviour: Loop) -> Running {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let address: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (asked, mut rx) = mpsc::channel::<Asked>(8);
    let supervisor = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut held = Vec::new();
            while let Some(a) = rx.recv().await {
                let answer = match (&a.command, behaviour) {
                    (_, Loop::Stuck) => {
                        held.push(a);
                        continue;
                    }
                    (ControlRequest::Ping, Loop::SourceOpen) => {
                        Ok(json!({"pid": 1, "source": "ebpf"}))
                    }
                    (ControlRequest::Ping, Loop::SourceDown) => Ok(
                        json!({"pid": 1, "source": null, "source_down": "the ring buffer failed"}),
                    ),
                    (ControlRequest::Status { .. }, _) => Ok(json!({"pid": 1, "entries": []})),
                    _ => Err("unexpected".to_string()),
                };
                let _ = a.reply.send(answer);
            }
        });
    });
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let token = CancellationToken::new();
    let setup = Setup {
        address,
        tls: None,
        telemetry: Arc::new(Telemetry::default()),
        asked,
        say: Box::new(move |ok, _| {
            let _ = ready_tx.send(ok);
        }),
    };
    let thread = start(setup, token.clone()).unwrap();
    assert!(ready_rx.recv_timeout(Duration::from_secs(5)).unwrap());
    Running {
        address,
        token,
        thread: Some(thread),
        _supervisor: supervisor,
    }
}

/// One request; (status code, body).
fn get(address: SocketAddr, request: &str) -> (u16, String) {
    let mut s = TcpStream::connect(address).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

fn get_path(address: SocketAddr, path: &str) -> (u16, String) {
    get(
        address,
        &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    )
}

#[test]
fn healthz_follows_the_source_and_the_loop() {
    let r = start_with(Loop::SourceOpen);
    assert_eq!(
        get_path(r.address, "/healthz"),
        (200, "ok: source ebpf\n".into())
    );
    let r = start_with(Loop::SourceDown);
    let (code, body) = get_path(r.address, "/healthz");
    assert_eq!(code, 503);
    assert!(
        body.contains("no event source is open (the ring buffer failed)"),
        "{body}"
    );
    let r = start_with(Loop::Stuck);
    let (code, body) = get_path(r.address, "/healthz");
    assert_eq!(code, 503);
    assert!(body.contains("did not answer within 1 s"), "{body}");
}

#[test]
fn serves_the_page_metrics_and_refuses_the_rest() {
    let r = start_with(Loop::SourceOpen);
    let (code, page) = get_path(r.address, "/");
    assert_eq!(code, 200);
    assert!(page.contains("<title>psmon</title>"));
    // Nothing from elsewhere: it must work on an air-gapped host.
    for external in ["src=\"http", "href=\"http", "src=\"//", "@import", "url("] {
        assert!(!page.contains(external), "{external}");
    }
    // OpenMetrics to a client that asks for it (as Prometheus does), the
    // text format 0.0.4 to one that does not.
    let (code, metrics) = get(
        r.address,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(code, 200);
    assert!(metrics.contains("psmon_build_info{version="), "{metrics}");
    assert!(metrics.contains("# TYPE psmon_build info"), "{metrics}");
    assert!(
        metrics.contains("process_resident_memory_bytes"),
        "{metrics}"
    );
    assert!(metrics.trim_end().ends_with("# EOF"), "{metrics}");
    let (code, text) = get_path(r.address, "/metrics");
    assert_eq!(code, 200);
    assert!(text.contains("# TYPE psmon_build_info gauge"), "{text}");
    assert!(
        !text.contains("# EOF") && !text.contains("# UNIT"),
        "{text}"
    );
    assert_eq!(get_path(r.address, "/status").0, 200);
    assert_eq!(get_path(r.address, "/nothing").0, 404);
    let (code, _) = get(
        r.address,
        "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi",
    );
    assert_eq!(code, 405);
    // A head larger than 16 KiB is refused, not buffered.
    let huge = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let (code, _) = get(r.address, &huge);
    assert_ne!(code, 200);
}

/// Past MAX_CONNECTIONS held open, a new connection is closed at once;
/// once they go, it is served again.
#[test]
fn connections_are_bounded() {
    let r = start_with(Loop::SourceOpen);
    let held: Vec<TcpStream> = (0..MAX_CONNECTIONS)
        .map(|_| TcpStream::connect(r.address).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let (code, _) = get_path(r.address, "/healthz");
    assert_eq!(code, 0, "the connection past the bound must be closed");
    drop(held);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(get_path(r.address, "/healthz").0, 200);
}
