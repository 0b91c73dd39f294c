//! The health gate: a version gets traffic only once it answers.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// How often a starting version is probed: frequent, so a fast app is live within milliseconds.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(20);
/// How long a version may take to become healthy unless its order says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long one `GET healthcheck` may take.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a version is not healthy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HealthError {
    /// It never answered within its time.
    #[error("not healthy after {after:.0?}: waited for {waited_for} (last probe: {last}); does the app listen on $PORT?")]
    Timeout {
        /// The time it had.
        after: Duration,
        /// What would have made it healthy.
        waited_for: String,
        /// What the last probe saw.
        last: String,
    },
    /// Its process exited while it was probed.
    #[error("the container exited before it became healthy")]
    Exited,
    /// An unpublished service whose process was already gone.
    #[error("the container exited at once")]
    ExitedAtOnce,
}

/// One probe: TCP connect, or `GET path` answering 2xx when a path is given. `Err` says what
/// the probe saw.
pub async fn probe(addr: SocketAddr, path: Option<&str>) -> Result<(), String> {
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => return Err(format!("connect timed out after {CONNECT_TIMEOUT:?}")),
    };
    let Some(path) = path else { return Ok(()) };
    let answer = async {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = hyper::Request::get(path)
            .header(hyper::header::HOST, addr.to_string())
            .header(hyper::header::USER_AGENT, "starphleet-healthcheck")
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        sender.send_request(req).await.map_err(|e| e.to_string())
    };
    let resp = tokio::time::timeout(ANSWER_TIMEOUT, answer)
        .await
        .map_err(|_| format!("GET {path} did not answer within {ANSWER_TIMEOUT:?}"))??;
    if !resp.status().is_success() {
        return Err(format!("GET {path} answered {}", resp.status()));
    }
    Ok(())
}

/// Probes until healthy, `alive` says the process is gone, or `timeout` passes.
pub async fn wait_healthy(
    addr: SocketAddr,
    path: Option<&str>,
    timeout: Duration,
    alive: impl Fn() -> bool,
) -> Result<Duration, HealthError> {
    let start = Instant::now();
    loop {
        let last = match probe(addr, path).await {
            Ok(()) => return Ok(start.elapsed()),
            Err(e) => e,
        };
        if !alive() {
            return Err(HealthError::Exited);
        }
        if start.elapsed() >= timeout {
            let waited_for = match path {
                Some(p) => format!("GET http://{addr}{p} answering 2xx"),
                None => format!("a TCP connection to {addr}"),
            };
            return Err(HealthError::Timeout {
                after: timeout,
                waited_for,
                last,
            });
        }
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
}
