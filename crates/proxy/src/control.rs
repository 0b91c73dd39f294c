//! The control protocol: newline-delimited JSON over a Unix stream socket, one request line
//! answered by one response line, several per connection if the client likes.
//!
//! ```text
//! → {"cmd":"set_routes","table":{"ship":"s1","ports":{"80":[...]}}}
//! ← {"result":"ok"}
//! → {"cmd":"status"}
//! ← {"result":"status","data":{"pid":42,...}}
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::RouteTable;

/// A request to the proxy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", content = "table", rename_all = "snake_case")]
pub enum Request {
    /// Replace the whole route table; listen on new ports, stop listening on dropped ones.
    SetRoutes(RouteTable),
    /// Report the table, listeners and counters.
    Status,
    /// Stop accepting, let in-flight requests finish, exit.
    Shutdown,
}

/// What the proxy is doing right now.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The proxy's process id.
    pub pid: u32,
    /// The table in force.
    pub table: RouteTable,
    /// Ports being listened on.
    pub listening: Vec<u16>,
    /// Requests in flight per container; a container not listed has none.
    pub in_flight: BTreeMap<String, u64>,
    /// Requests served per service since the proxy started.
    pub requests: BTreeMap<String, u64>,
    /// Ports of the table that could not be bound, with why; retried on the next `SetRoutes`.
    pub bind_errors: BTreeMap<u16, String>,
    /// Counters of every route in the table.
    #[serde(default)]
    pub routes: Vec<crate::RouteCounters>,
}

/// The proxy's answer to one request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", content = "data", rename_all = "snake_case")]
pub enum Response {
    /// Done.
    Ok,
    /// The answer to `Status`.
    Status(Status),
    /// The request was refused; nothing changed.
    Error(String),
}

/// How long a call waits for the proxy before giving up on it.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// `is_running` must answer quickly even when something unresponsive holds the socket.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Talks to a running proxy through its control socket.
#[derive(Clone, Debug)]
pub struct ProxyClient {
    socket: PathBuf,
}

impl ProxyClient {
    /// A client for the proxy listening on `socket`.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        ProxyClient {
            socket: socket.into(),
        }
    }

    /// Replaces the proxy's route table.
    pub async fn set_routes(&self, table: &RouteTable) -> anyhow::Result<()> {
        match self.call(&Request::SetRoutes(table.clone())).await? {
            Response::Ok => Ok(()),
            Response::Error(e) => bail!("the proxy refused the route table: {e}"),
            other => bail!("unexpected answer from the proxy: {other:?}"),
        }
    }

    /// The proxy's table, listeners and counters.
    pub async fn status(&self) -> anyhow::Result<Status> {
        self.status_within(CALL_TIMEOUT).await
    }

    /// Asks the proxy to drain out and exit; returns once it has accepted.
    pub async fn shutdown(&self) -> anyhow::Result<()> {
        match self.call(&Request::Shutdown).await? {
            Response::Ok => Ok(()),
            Response::Error(e) => bail!("the proxy refused to shut down: {e}"),
            other => bail!("unexpected answer from the proxy: {other:?}"),
        }
    }

    /// Whether a proxy answers on the socket.
    pub async fn is_running(&self) -> bool {
        self.status_within(PROBE_TIMEOUT).await.is_ok()
    }

    async fn status_within(&self, limit: Duration) -> anyhow::Result<Status> {
        match self.call_within(&Request::Status, limit).await? {
            Response::Status(status) => Ok(status),
            Response::Error(e) => bail!("the proxy refused to report its status: {e}"),
            other => bail!("unexpected answer from the proxy: {other:?}"),
        }
    }

    async fn call(&self, request: &Request) -> anyhow::Result<Response> {
        self.call_within(request, CALL_TIMEOUT).await
    }

    async fn call_within(&self, request: &Request, limit: Duration) -> anyhow::Result<Response> {
        let socket = self.socket.display();
        tokio::time::timeout(limit, self.exchange(request))
            .await
            .with_context(|| format!("the proxy at {socket} did not answer within {limit:?}"))?
            .with_context(|| format!("talking to the proxy at {socket}"))
    }

    async fn exchange(&self, request: &Request) -> anyhow::Result<Response> {
        let mut stream = UnixStream::connect(&self.socket).await?;
        let mut line = serde_json::to_vec(request)?;
        line.push(b'\n');
        stream.write_all(&line).await?;
        let mut answer = String::new();
        BufReader::new(stream).read_line(&mut answer).await?;
        if answer.is_empty() {
            bail!("the proxy closed the connection without answering");
        }
        Ok(serde_json::from_str(&answer)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format() {
        let set = Request::SetRoutes(RouteTable {
            ship: "s".into(),
            ports: BTreeMap::new(),
        });
        assert_eq!(
            serde_json::to_string(&set).unwrap(),
            r#"{"cmd":"set_routes","table":{"ship":"s","ports":{}}}"#
        );
        assert_eq!(
            serde_json::to_string(&Request::Status).unwrap(),
            r#"{"cmd":"status"}"#
        );
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"cmd":"shutdown"}"#).unwrap(),
            Request::Shutdown
        );
        assert_eq!(
            serde_json::to_string(&Response::Ok).unwrap(),
            r#"{"result":"ok"}"#
        );
        assert_eq!(
            serde_json::to_string(&Response::Error("no".into())).unwrap(),
            r#"{"result":"error","data":"no"}"#
        );
    }
}
