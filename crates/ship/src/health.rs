//! The health gate: a version gets traffic only once it answers.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// How often a starting version is probed: frequent, so a fast app is live within milliseconds.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(20);
/// How long a version may take to become healthy unless its order says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// One probe: TCP connect, or `GET path` answering 2xx when a path is given.
pub async fn probe(addr: SocketAddr, path: Option<&str>) -> Result<()> {
    let stream = tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(addr)).await??;
    let Some(path) = path else { return Ok(()) };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header(hyper::header::HOST, addr.to_string())
        .header(hyper::header::USER_AGENT, "starphleet-healthcheck")
        .body(Empty::<Bytes>::new())?;
    let resp = tokio::time::timeout(Duration::from_secs(2), sender.send_request(req)).await??;
    if !resp.status().is_success() {
        bail!("GET {path} answered {}", resp.status());
    }
    Ok(())
}

/// Probes until healthy, `alive` says the process is gone, or `timeout` passes.
pub async fn wait_healthy(
    addr: SocketAddr,
    path: Option<&str>,
    timeout: Duration,
    alive: impl Fn() -> bool,
) -> Result<Duration> {
    let start = Instant::now();
    loop {
        let last_error = match probe(addr, path).await {
            Ok(()) => return Ok(start.elapsed()),
            Err(e) => e.to_string(),
        };
        if !alive() {
            bail!("the container exited before it became healthy");
        }
        if start.elapsed() >= timeout {
            let what = match path {
                Some(p) => format!("GET http://{addr}{p} answering 2xx"),
                None => format!("a TCP connection to {addr}"),
            };
            bail!(
                "not healthy after {:.0?}: waited for {what} (last probe: {last_error}); does the app listen on $PORT?",
                timeout
            );
        }
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
}
