//! The HTTP endpoint on `HEARTBEAT_PORT`: `/healthz`, `/status` (the JSON
//! of `psmon status --json`), `/metrics` (Prometheus), `/events` (recent
//! operator messages) and `/`, a status page for a person.
//!
//! It runs on a thread and a tokio runtime of its own, so that no client,
//! however slow or numerous, and no TLS handshake or scrape encoding takes
//! time from the supervisor's thread. It reads [`Telemetry`], which the
//! supervisor updates without waiting, and asks the supervisor only for
//! `/healthz` (a ping) and `/status` (at most once a second, shared by
//! every client). Connections are bounded ([`MAX_CONNECTIONS`]; more are
//! closed at once), a request's head must come within [`HEAD_TIMEOUT`]
//! and fit in 16 KiB, and no connection lives past [`CONNECTION_TIMEOUT`].

pub mod metrics;
mod negotiate;
mod text_format;

use std::{
    collections::VecDeque,
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header,
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::control::{Asked, ControlRequest};

pub use metrics::Metrics;

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 64;
/// A request's head (line and headers) must arrive within this.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// No connection, kept alive or not, lives longer.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// `/healthz`: the supervisor must answer a ping within this.
pub const LOOP_DEADLINE: Duration = Duration::from_secs(1);
/// `/status` is asked of the supervisor at most this often.
const STATUS_EVERY: Duration = Duration::from_secs(1);
/// Operator messages kept for `/events` and the page.
const RECENT: usize = 100;

/// What the supervisor shares with the endpoint.
#[derive(Debug, Default)]
pub struct Telemetry {
    /// What `/metrics` shows.
    pub metrics: Arc<Metrics>,
    recent: Mutex<VecDeque<Value>>,
}

impl Telemetry {
    /// Keeps an operator message for `/events` (the oldest goes past `RECENT`).
    pub fn said(&self, message: Value) {
        let mut recent = self.recent.lock().unwrap();
        if recent.len() == RECENT {
            recent.pop_front();
        }
        recent.push_back(message);
    }

    fn recent(&self) -> Vec<Value> {
        self.recent.lock().unwrap().iter().cloned().collect()
    }
}

/// Where and how to serve.
pub struct Setup {
    /// Where to listen.
    pub address: SocketAddr,
    /// TLS, when ps_ssl.conf asks for it.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// What the supervisor shares.
    pub telemetry: Arc<Telemetry>,
    /// The supervisor's requests channel (as the control socket's).
    pub asked: mpsc::Sender<Asked>,
    /// Says why the endpoint is off, or where it listens.
    pub say: Box<dyn Fn(bool, String) + Send>,
}

/// Starts the endpoint on its own thread; it stops when `token` is cancelled.
pub fn start(
    setup: Setup,
    token: CancellationToken,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("psmon-endpoint".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    (setup.say)(false, format!("the HTTP endpoint is off: no runtime: {e}"));
                    return;
                }
            };
            runtime.block_on(serve(setup, token));
        })
}

/// Binds (again every `retry` while the address is taken) and serves.
async fn serve(setup: Setup, token: CancellationToken) {
    let Setup {
        address,
        tls,
        telemetry,
        asked,
        say,
    } = setup;
    let retry = Duration::from_secs(5);
    let mut said_busy = false;
    let listener = loop {
        match tokio::net::TcpListener::bind(address).await {
            Ok(l) => break l,
            Err(e) => {
                if !said_busy {
                    say(
                        false,
                        format!(
                            "the HTTP endpoint cannot listen on {address}: {e}; monitoring goes on, binding is tried again every {} s",
                            retry.as_secs()
                        ),
                    );
                    said_busy = true;
                }
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = tokio::time::sleep(retry) => {}
                }
            }
        }
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    say(
        true,
        format!("HTTP endpoint listening on {scheme}://{address} (/healthz /status /metrics /)"),
    );
    let shared = Arc::new(Shared {
        telemetry,
        asked,
        registry: Default::default(),
        status: tokio::sync::Mutex::new(None),
    });
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let connections = tokio_util::task::TaskTracker::new();
    loop {
        let (stream, _peer) = tokio::select! {
            _ = token.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(_) => {
                    // Out of descriptors, most likely: let some close.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Over the bound: closed at once, nothing read.
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let shared = Arc::clone(&shared);
        let acceptor = acceptor.clone();
        let token = token.clone();
        connections.spawn(async move {
            let _slot = slot;
            let served = async {
                match acceptor {
                    Some(acceptor) => {
                        if let Ok(Ok(s)) =
                            tokio::time::timeout(HEAD_TIMEOUT, acceptor.accept(stream)).await
                        {
                            connection(TokioIo::new(s), shared).await;
                        }
                    }
                    None => connection(TokioIo::new(stream), shared).await,
                }
            };
            tokio::select! {
                _ = token.cancelled() => {}
                _ = tokio::time::timeout(CONNECTION_TIMEOUT, served) => {}
            }
        });
    }
    connections.close();
    let _ = tokio::time::timeout(Duration::from_secs(1), connections.wait()).await;
}

struct Shared {
    telemetry: Arc<Telemetry>,
    asked: mpsc::Sender<Asked>,
    registry: std::sync::OnceLock<prometheus_client::registry::Registry>,
    /// The last status asked of the supervisor, and when.
    status: tokio::sync::Mutex<Option<(Instant, Bytes)>>,
}

async fn connection<I>(io: I, shared: Arc<Shared>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = service_fn(move |request| {
        let shared = Arc::clone(&shared);
        async move { Ok::<_, Infallible>(answer(request, &shared).await) }
    });
    let _ = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .max_buf_size(16 * 1024)
        .serve_connection(io, service)
        .await;
}

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CACHE_CONTROL, "no-store")
        .body(Full::new(body.into()))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

const TEXT: &str = "text/plain; charset=utf-8";
const JSON: &str = "application/json";
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

async fn answer(request: Request<Incoming>, shared: &Shared) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, TEXT, "only GET\n");
    }
    match request.uri().path() {
        "/" | "/index.html" => reply(StatusCode::OK, "text/html; charset=utf-8", PAGE),
        "/healthz" => healthz(shared).await,
        "/status" => status(shared).await,
        "/events" => reply(
            StatusCode::OK,
            JSON,
            Value::from(shared.telemetry.recent()).to_string(),
        ),
        "/metrics" => metrics(&request, shared),
        _ => reply(
            StatusCode::NOT_FOUND,
            TEXT,
            "not found: try /healthz, /status, /metrics, /events or /\n",
        ),
    }
}

/// The metrics in the format the client asks for, gzip-compressed when it
/// accepts that (as Prometheus does).
fn metrics(request: &Request<Incoming>, shared: &Shared) -> Response<Full<Bytes>> {
    let registry = shared
        .registry
        .get_or_init(|| shared.telemetry.metrics.registry());
    let openmetrics = metrics::encode(registry);
    let header = |name| request.headers().get(name).and_then(|v| v.to_str().ok());
    let (content_type, body) = if negotiate::wants_openmetrics(header(header::ACCEPT)) {
        (OPENMETRICS, openmetrics)
    } else {
        (
            text_format::CONTENT_TYPE,
            text_format::from_openmetrics(&openmetrics),
        )
    };
    let packed = negotiate::accepts_gzip(header(header::ACCEPT_ENCODING))
        .then(|| negotiate::gzip(body.as_bytes()).ok())
        .flatten();
    let gzipped = packed.is_some();
    let mut response = reply(
        StatusCode::OK,
        content_type,
        packed.map_or_else(|| Bytes::from(body), Bytes::from),
    );
    let headers = response.headers_mut();
    headers.insert(
        header::VARY,
        header::HeaderValue::from_static("Accept, Accept-Encoding"),
    );
    if gzipped {
        headers.insert(
            header::CONTENT_ENCODING,
            header::HeaderValue::from_static("gzip"),
        );
    }
    response
}

/// Asks the supervisor; `None` when it does not answer within `within`.
async fn ask(
    shared: &Shared,
    command: ControlRequest,
    within: Duration,
) -> Option<Result<Value, String>> {
    let (reply, answer) = oneshot::channel();
    let asked = Asked {
        command,
        peer: None,
        refused: None,
        reply,
    };
    tokio::time::timeout(within, async {
        shared.asked.send(asked).await.ok()?;
        answer.await.ok()
    })
    .await
    .ok()
    .flatten()
}

/// 200 while the source is open and the supervisor answers within a
/// second; 503 with the reason otherwise.
async fn healthz(shared: &Shared) -> Response<Full<Bytes>> {
    match ask(shared, ControlRequest::Ping, LOOP_DEADLINE).await {
        None => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            TEXT,
            format!(
                "unhealthy: psmon's event loop did not answer within {} s\n",
                LOOP_DEADLINE.as_secs()
            ),
        ),
        Some(Err(e)) => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            TEXT,
            format!("unhealthy: {e}\n"),
        ),
        Some(Ok(v)) => match v["source"].as_str() {
            Some(source) => reply(StatusCode::OK, TEXT, format!("ok: source {source}\n")),
            None => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                TEXT,
                format!(
                    "unhealthy: no event source is open ({}); /proc scans go on\n",
                    v["source_down"].as_str().unwrap_or("not opened yet")
                ),
            ),
        },
    }
}

/// The supervisor's status, asked at most once a second for every client.
async fn status(shared: &Shared) -> Response<Full<Bytes>> {
    let mut cached = shared.status.lock().await;
    if let Some((at, body)) = cached.as_ref()
        && at.elapsed() < STATUS_EVERY
    {
        return reply(StatusCode::OK, JSON, body.clone());
    }
    let command = ControlRequest::Status { pfile: None };
    match ask(shared, command, Duration::from_secs(5)).await {
        Some(Ok(v)) => {
            let body = Bytes::from(v.to_string());
            *cached = Some((Instant::now(), body.clone()));
            reply(StatusCode::OK, JSON, body)
        }
        Some(Err(e)) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            JSON,
            json!({ "error": e }).to_string(),
        ),
        None => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            JSON,
            json!({ "error": "psmon's event loop did not answer within 5 s" }).to_string(),
        ),
    }
}

/// The status page: one file, no external assets.
const PAGE: &str = include_str!("page.html");

#[cfg(test)]
mod tests;
