//! The control protocol: newline-delimited JSON over a Unix stream socket, one request line
//! answered by one response line, several per connection if the client likes. A connection
//! answers its requests in order; a `wait_idle` holds its connection until it is answered, so
//! drains wait on connections of their own.
//!
//! ```text
//! → {"cmd":"set_routes","table":{"ship":"s1","generation":7,"ports":{"80":[...]}}}
//! ← {"result":"ok"}                 or  {"result":"stale","data":{"current":8}}
//! → {"cmd":"ping"}
//! ← {"result":"pong","data":{"pid":42,"generation":7}}
//! → {"cmd":"wait_idle","containers":["echo-3"],"timeout_ms":30000}
//! ← {"result":"idle"}               or  {"result":"busy","data":{"in_flight":2}}
//! → {"cmd":"status"}
//! ← {"result":"status","data":{"pid":42,...}}
//! → {"cmd":"listeners"}
//! ← {"result":"listeners","data":{"ports":[80,443]}}   + the two sockets, SCM_RIGHTS
//! ```
//!
//! `listeners` is answered with the listening sockets themselves, passed as file descriptors
//! (SCM_RIGHTS) on the answer line, in the order of `ports`: a control plane that holds them
//! keeps the ports open in the kernel while no proxy runs, so clients queue rather than being
//! refused, and hands them to the next proxy ([`crate::ProxyOptions::inherited`]). It should
//! drop its copy of a port the table no longer names, or that port keeps queueing.

use std::collections::BTreeMap;
use std::future::Future;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

use crate::RouteTable;

/// A request to the proxy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// Replace the whole route table, unless the proxy has a newer one; listen on new ports,
    /// stop listening on dropped ones.
    SetRoutes {
        /// The new table.
        table: RouteTable,
    },
    /// Report the table, listeners and counters.
    Status,
    /// Report the pid and the generation in force, and nothing costly: a liveness probe.
    Ping,
    /// Answer once none of the containers has a request in flight, or when the timeout passes.
    WaitIdle {
        /// Container names; one the proxy does not know has no request in flight.
        containers: Vec<String>,
        /// How long to wait at most, in milliseconds.
        timeout_ms: u64,
    },
    /// Stop accepting, let in-flight requests finish, exit.
    Shutdown,
    /// Pass the listening sockets to the caller (see the module docs).
    Listeners,
}

/// What the proxy is doing right now.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The proxy's process id.
    pub pid: u32,
    /// The generation of the table in force.
    #[serde(default)]
    pub generation: u64,
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
    /// Hosts whose certificate (or TLS-ALPN-01 challenge certificate) in the table could not be
    /// loaded, with why; the certificate loaded before for the host, if any, is still served.
    #[serde(default)]
    pub cert_errors: BTreeMap<String, String>,
}

/// The proxy's answer to one request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", content = "data", rename_all = "snake_case")]
// One answer per control request, moved once: boxing the large status would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum Response {
    /// Done.
    Ok,
    /// The answer to `Status`.
    Status(Status),
    /// The answer to `Ping`.
    Pong {
        /// The proxy's process id.
        pid: u32,
        /// The generation of the table in force.
        generation: u64,
    },
    /// `SetRoutes` offered a table older than the one in force; nothing changed.
    Stale {
        /// The generation of the table in force.
        current: u64,
    },
    /// `WaitIdle`: none of the containers has a request in flight.
    Idle,
    /// `WaitIdle`: the timeout passed with requests still in flight.
    Busy {
        /// Requests in flight to the containers, all together.
        in_flight: u64,
    },
    /// The answer to `Listeners`; the sockets travel with this line, in this order.
    Listeners {
        /// The public port of each socket.
        ports: Vec<u16>,
    },
    /// The request was refused; nothing changed.
    Error(String),
}

/// Why a call to the proxy failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The socket could not be connected to: no proxy runs there.
    #[error("cannot connect to the proxy at {socket}: {error}; is `starphleet proxy` running?")]
    Connect {
        /// The control socket.
        socket: PathBuf,
        /// What connecting said.
        error: std::io::Error,
    },
    /// The proxy did not answer in time.
    #[error("the proxy at {socket} did not answer within {after:?}")]
    TimedOut {
        /// The control socket.
        socket: PathBuf,
        /// How long the call waited.
        after: Duration,
    },
    /// Writing the request or reading the answer failed.
    #[error("talking to the proxy at {socket}: {error}")]
    Io {
        /// The control socket.
        socket: PathBuf,
        /// What the socket said.
        error: std::io::Error,
    },
    /// The proxy closed the connection before answering (it exited or shut down).
    #[error("the proxy at {socket} closed the connection without answering")]
    Closed {
        /// The control socket.
        socket: PathBuf,
    },
    /// The answer is not a response of this protocol.
    #[error("the proxy at {socket} answered something that is not a response: {error}")]
    BadAnswer {
        /// The control socket.
        socket: PathBuf,
        /// Why it does not parse.
        error: serde_json::Error,
    },
    /// The answer is a response, but not one to the request made.
    #[error("the proxy at {socket} answered {answer} to {request}")]
    Unexpected {
        /// The control socket.
        socket: PathBuf,
        /// What was asked.
        request: &'static str,
        /// What came back, debug-formatted.
        answer: String,
    },
    /// The proxy refused the request; nothing changed.
    #[error("the proxy refused {request}: {reason}")]
    Refused {
        /// What was asked.
        request: &'static str,
        /// The proxy's reason.
        reason: String,
    },
    /// The proxy has a newer table than the one offered, which it refused.
    #[error(
        "the proxy refused the route table: it has a newer one (generation {current}); \
         another control plane may be programming it; send generation {current} or higher"
    )]
    Stale {
        /// The generation in force.
        current: u64,
    },
    /// An earlier call on this connection failed or timed out, leaving it unusable.
    #[error("the control connection to the proxy at {socket} failed earlier; connect again")]
    Unusable {
        /// The control socket.
        socket: PathBuf,
    },
}

/// The proxy's answer to a ping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pong {
    /// The proxy's process id.
    pub pid: u32,
    /// The generation of the table in force.
    pub generation: u64,
}

/// What waiting for containers to go idle found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Idle {
    /// None of the containers has a request in flight.
    Idle,
    /// The timeout passed with requests still in flight.
    Busy {
        /// Requests in flight to the containers, all together.
        in_flight: u64,
    },
}

/// How long a call waits for the proxy before giving up on it.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// `is_running` must answer quickly even when something unresponsive holds the socket.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How much longer than its own timeout a `wait_idle` call waits for the proxy's answer.
const WAIT_MARGIN: Duration = Duration::from_secs(5);

/// Talks to a running proxy through its control socket, one connection per call.
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

    /// Replaces the proxy's route table; `ControlError::Stale` when the proxy has a newer one.
    pub async fn set_routes(&self, table: &RouteTable) -> Result<(), ControlError> {
        let request = Request::SetRoutes {
            table: table.clone(),
        };
        let answer = self.call(&request, CALL_TIMEOUT).await?;
        routes_set(&self.socket, answer)
    }

    /// The proxy's table, listeners and counters.
    pub async fn status(&self) -> Result<Status, ControlError> {
        match self.call(&Request::Status, CALL_TIMEOUT).await? {
            Response::Status(status) => Ok(status),
            other => Err(unexpected(&self.socket, "a status report", other)),
        }
    }

    /// The proxy's pid and generation, within `timeout`: cheap enough to probe liveness often.
    pub async fn ping(&self, timeout: Duration) -> Result<Pong, ControlError> {
        let answer = self.call(&Request::Ping, timeout).await?;
        pong(&self.socket, answer)
    }

    /// Waits until none of `containers` has a request in flight (`Idle::Idle`, at once if none
    /// has), or until `timeout` passes (`Idle::Busy`). The proxy pushes the answer the moment
    /// the last request ends; nothing polls.
    pub async fn wait_idle(
        &self,
        containers: &[String],
        timeout: Duration,
    ) -> Result<Idle, ControlError> {
        let request = Request::WaitIdle {
            containers: containers.to_vec(),
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        };
        let limit = timeout.saturating_add(WAIT_MARGIN);
        match self.call(&request, limit).await? {
            Response::Idle => Ok(Idle::Idle),
            Response::Busy { in_flight } => Ok(Idle::Busy { in_flight }),
            other => Err(unexpected(
                &self.socket,
                "a wait for idle containers",
                other,
            )),
        }
    }

    /// Asks the proxy to drain out and exit; returns once it has accepted.
    pub async fn shutdown(&self) -> Result<(), ControlError> {
        match self.call(&Request::Shutdown, CALL_TIMEOUT).await? {
            Response::Ok => Ok(()),
            other => Err(unexpected(&self.socket, "a shutdown", other)),
        }
    }

    /// Duplicates of the proxy's listening sockets, with their public ports. While they are
    /// held, the ports stay open even if the proxy dies: connections queue in the kernel until
    /// a proxy started with them ([`crate::ProxyOptions::inherited`]) accepts again.
    pub async fn listeners(&self) -> Result<Vec<(u16, OwnedFd)>, ControlError> {
        let socket = &self.socket;
        within(socket, CALL_TIMEOUT, async {
            let mut stream =
                UnixStream::connect(socket)
                    .await
                    .map_err(|error| ControlError::Connect {
                        socket: socket.to_owned(),
                        error,
                    })?;
            let io = |error| ControlError::Io {
                socket: socket.to_owned(),
                error,
            };
            let mut line = serde_json::to_vec(&Request::Listeners).expect("requests serialize");
            line.push(b'\n');
            stream.write_all(&line).await.map_err(io)?;
            let (answer, fds) = fdpass::receive_line(&stream).await.map_err(io)?;
            if answer.is_empty() {
                return Err(ControlError::Closed {
                    socket: socket.to_owned(),
                });
            }
            let answer: Response =
                serde_json::from_slice(&answer).map_err(|error| ControlError::BadAnswer {
                    socket: socket.to_owned(),
                    error,
                })?;
            match answer {
                Response::Listeners { ports } if ports.len() == fds.len() => {
                    Ok(ports.into_iter().zip(fds).collect())
                }
                other => Err(unexpected(socket, "the listening sockets", other)),
            }
        })
        .await
    }

    /// Whether a proxy answers on the socket within a second.
    pub async fn is_running(&self) -> bool {
        match self.ping(PROBE_TIMEOUT).await {
            Ok(_) => true,
            // A proxy that predates `ping` refuses it, but it is a proxy and it runs.
            Err(ControlError::Refused { .. }) => true,
            Err(_) => false,
        }
    }

    /// One persistent connection, for the one task that programs the proxy: it learns at once
    /// when the proxy goes away ([`ControlConnection::closed`]).
    pub async fn connect(&self) -> Result<ControlConnection, ControlError> {
        let wire = within(&self.socket, CALL_TIMEOUT, Wire::connect(&self.socket)).await?;
        Ok(ControlConnection {
            socket: self.socket.clone(),
            wire: Some(wire),
        })
    }

    async fn call(&self, request: &Request, limit: Duration) -> Result<Response, ControlError> {
        let socket = &self.socket;
        within(socket, limit, async {
            Wire::connect(socket).await?.exchange(socket, request).await
        })
        .await
    }
}

/// A persistent connection to the proxy, from [`ProxyClient::connect`]. Each call has a
/// timeout; after a call fails on the way (timeout, socket error, an answer that makes no
/// sense) or is dropped half-way, the connection is unusable and every later call returns
/// `ControlError::Unusable`. A refusal (`Refused`, `Stale`) leaves it usable.
#[derive(Debug)]
pub struct ControlConnection {
    socket: PathBuf,
    /// `None` once unusable: the stream may hold half an exchange.
    wire: Option<Wire>,
}

impl ControlConnection {
    /// Replaces the proxy's route table; `ControlError::Stale` when the proxy has a newer one.
    pub async fn set_routes(&mut self, table: &RouteTable) -> Result<(), ControlError> {
        let request = Request::SetRoutes {
            table: table.clone(),
        };
        let answer = self.call(&request, CALL_TIMEOUT).await?;
        self.keep_unless_unexpected(routes_set(&self.socket, answer))
    }

    /// The proxy's pid and generation, within `timeout`.
    pub async fn ping(&mut self, timeout: Duration) -> Result<Pong, ControlError> {
        let answer = self.call(&Request::Ping, timeout).await?;
        self.keep_unless_unexpected(pong(&self.socket, answer))
    }

    /// Resolves when the proxy closes the connection: it exited or is shutting down. At once
    /// if the connection is already unusable, which it is afterwards. Cancel-safe: wait on it
    /// in `select!` between calls, and the connection stays usable if it did not resolve.
    pub async fn closed(&mut self) {
        let Some(wire) = self.wire.as_mut() else {
            return;
        };
        // The proxy never speaks unasked: the end of the stream, an error or stray bytes all
        // mean this connection is done for.
        let _ = wire.read.fill_buf().await;
        self.wire = None;
    }

    async fn call(&mut self, request: &Request, limit: Duration) -> Result<Response, ControlError> {
        let Some(mut wire) = self.wire.take() else {
            return Err(ControlError::Unusable {
                socket: self.socket.clone(),
            });
        };
        let answer = within(&self.socket, limit, wire.exchange(&self.socket, request)).await?;
        self.wire = Some(wire);
        Ok(answer)
    }

    /// An answer that does not fit the request means the two ends disagree: stop using it.
    fn keep_unless_unexpected<T>(
        &mut self,
        result: Result<T, ControlError>,
    ) -> Result<T, ControlError> {
        if let Err(ControlError::Unexpected { .. }) = &result {
            self.wire = None;
        }
        result
    }
}

/// Both halves of a connected control socket.
#[derive(Debug)]
struct Wire {
    read: BufReader<OwnedReadHalf>,
    write: OwnedWriteHalf,
}

impl Wire {
    async fn connect(socket: &Path) -> Result<Wire, ControlError> {
        let stream = UnixStream::connect(socket)
            .await
            .map_err(|error| ControlError::Connect {
                socket: socket.to_owned(),
                error,
            })?;
        let (read, write) = stream.into_split();
        Ok(Wire {
            read: BufReader::new(read),
            write,
        })
    }

    /// Sends one request line and reads one answer line.
    async fn exchange(
        &mut self,
        socket: &Path,
        request: &Request,
    ) -> Result<Response, ControlError> {
        let io = |error| ControlError::Io {
            socket: socket.to_owned(),
            error,
        };
        let mut line = serde_json::to_vec(request).expect("requests serialize");
        line.push(b'\n');
        self.write.write_all(&line).await.map_err(io)?;
        let mut answer = String::new();
        self.read.read_line(&mut answer).await.map_err(io)?;
        if answer.is_empty() {
            return Err(ControlError::Closed {
                socket: socket.to_owned(),
            });
        }
        serde_json::from_str(&answer).map_err(|error| ControlError::BadAnswer {
            socket: socket.to_owned(),
            error,
        })
    }
}

/// Runs `call` for at most `limit`.
async fn within<T>(
    socket: &Path,
    limit: Duration,
    call: impl Future<Output = Result<T, ControlError>>,
) -> Result<T, ControlError> {
    tokio::time::timeout(limit, call)
        .await
        .map_err(|_| ControlError::TimedOut {
            socket: socket.to_owned(),
            after: limit,
        })?
}

fn routes_set(socket: &Path, answer: Response) -> Result<(), ControlError> {
    match answer {
        Response::Ok => Ok(()),
        Response::Stale { current } => Err(ControlError::Stale { current }),
        other => Err(unexpected(socket, "the route table", other)),
    }
}

fn pong(socket: &Path, answer: Response) -> Result<Pong, ControlError> {
    match answer {
        Response::Pong { pid, generation } => Ok(Pong { pid, generation }),
        other => Err(unexpected(socket, "a ping", other)),
    }
}

/// A refusal, or an answer to some other request.
fn unexpected(socket: &Path, request: &'static str, answer: Response) -> ControlError {
    match answer {
        Response::Error(reason) => ControlError::Refused { request, reason },
        other => ControlError::Unexpected {
            socket: socket.to_owned(),
            request,
            answer: format!("{other:?}"),
        },
    }
}

/// Sending and receiving file descriptors alongside an answer line (SCM_RIGHTS).
pub(crate) mod fdpass {
    use std::io::{IoSlice, IoSliceMut};
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

    use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
    use tokio::io::Interest;
    use tokio::net::UnixStream;

    /// The most descriptors one answer carries (the kernel's own limit per message).
    const MAX_FDS: usize = 253;

    /// Writes `line` with `fds` attached to its first bytes.
    pub async fn send_line(stream: &UnixStream, line: &[u8], fds: &[RawFd]) -> std::io::Result<()> {
        let mut sent = 0;
        while sent < line.len() {
            stream.writable().await?;
            // The descriptors go with the first bytes only.
            let fds = if sent == 0 { fds } else { &[] };
            let attempt = stream.try_io(Interest::WRITABLE, || {
                let rights = [ControlMessage::ScmRights(fds)];
                let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &rights };
                sendmsg::<()>(
                    stream.as_raw_fd(),
                    &[IoSlice::new(&line[sent..])],
                    cmsgs,
                    MsgFlags::MSG_NOSIGNAL,
                    None,
                )
                .map_err(std::io::Error::from)
            });
            match attempt {
                Ok(n) => sent += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Reads one line and every descriptor that came with it (close-on-exec).
    pub async fn receive_line(stream: &UnixStream) -> std::io::Result<(Vec<u8>, Vec<OwnedFd>)> {
        let mut line = Vec::new();
        let mut fds = Vec::new();
        loop {
            stream.readable().await?;
            let mut buf = [0u8; 4096];
            let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
            let attempt = stream.try_io(Interest::READABLE, || {
                let mut iov = [IoSliceMut::new(&mut buf)];
                let msg = recvmsg::<()>(
                    stream.as_raw_fd(),
                    &mut iov,
                    Some(&mut space),
                    MsgFlags::MSG_CMSG_CLOEXEC,
                )
                .map_err(std::io::Error::from)?;
                let mut got = Vec::new();
                for cmsg in msg.cmsgs().map_err(std::io::Error::from)? {
                    if let ControlMessageOwned::ScmRights(received) = cmsg {
                        // SAFETY: the kernel just created these descriptors for this process;
                        // nothing else owns them.
                        got.extend(
                            received
                                .into_iter()
                                .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                        );
                    }
                }
                if msg.flags.contains(MsgFlags::MSG_CTRUNC) {
                    return Err(std::io::Error::other("more sockets than fit in one answer"));
                }
                Ok((msg.bytes, got))
            });
            match attempt {
                Ok((0, _)) => return Ok((line, fds)),
                Ok((n, got)) => {
                    fds.extend(got);
                    line.extend_from_slice(&buf[..n]);
                    if line.ends_with(b"\n") {
                        line.pop();
                        return Ok((line, fds));
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format() {
        let set = Request::SetRoutes {
            table: RouteTable {
                ship: "s".into(),
                generation: 3,
                ..RouteTable::default()
            },
        };
        assert_eq!(
            serde_json::to_string(&set).unwrap(),
            r#"{"cmd":"set_routes","table":{"ship":"s","generation":3,"ports":{}}}"#
        );
        // Port keys survive the buffering of an internally tagged enum.
        let with_port = r#"{"cmd":"set_routes","table":{"ship":"s","ports":{"8080":[]}}}"#;
        let Request::SetRoutes { table } = serde_json::from_str(with_port).unwrap() else {
            panic!("set_routes");
        };
        assert_eq!(table.ports.keys().collect::<Vec<_>>(), [&8080]);
        let bad_port = r#"{"cmd":"set_routes","table":{"ship":"s","ports":{"http":[]}}}"#;
        let err = serde_json::from_str::<Request>(bad_port).unwrap_err();
        assert!(err.to_string().contains("a port number"), "{err}");
        // A table from a control plane that predates generations is generation 0.
        assert_eq!(
            serde_json::from_str::<Request>(
                r#"{"cmd":"set_routes","table":{"ship":"s","ports":{}}}"#
            )
            .unwrap(),
            Request::SetRoutes {
                table: RouteTable {
                    ship: "s".into(),
                    ..RouteTable::default()
                }
            }
        );
        assert_eq!(
            serde_json::to_string(&Request::Status).unwrap(),
            r#"{"cmd":"status"}"#
        );
        assert_eq!(
            serde_json::to_string(&Request::Ping).unwrap(),
            r#"{"cmd":"ping"}"#
        );
        let wait = Request::WaitIdle {
            containers: vec!["a-1".into(), "b-2".into()],
            timeout_ms: 1500,
        };
        let text = r#"{"cmd":"wait_idle","containers":["a-1","b-2"],"timeout_ms":1500}"#;
        assert_eq!(serde_json::to_string(&wait).unwrap(), text);
        assert_eq!(serde_json::from_str::<Request>(text).unwrap(), wait);
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"cmd":"shutdown"}"#).unwrap(),
            Request::Shutdown
        );

        let answers = [
            (Response::Ok, r#"{"result":"ok"}"#),
            (
                Response::Error("no".into()),
                r#"{"result":"error","data":"no"}"#,
            ),
            (
                Response::Pong {
                    pid: 42,
                    generation: 7,
                },
                r#"{"result":"pong","data":{"pid":42,"generation":7}}"#,
            ),
            (
                Response::Stale { current: 8 },
                r#"{"result":"stale","data":{"current":8}}"#,
            ),
            (Response::Idle, r#"{"result":"idle"}"#),
            (
                Response::Busy { in_flight: 2 },
                r#"{"result":"busy","data":{"in_flight":2}}"#,
            ),
        ];
        for (answer, text) in answers {
            assert_eq!(serde_json::to_string(&answer).unwrap(), text);
            assert_eq!(serde_json::from_str::<Response>(text).unwrap(), answer);
        }
        // A status from a proxy that predates generations reads as generation 0.
        let old = r#"{"result":"status","data":{"pid":1,"table":{"ship":"s","ports":{}},
            "listening":[],"in_flight":{},"requests":{},"bind_errors":{}}}"#;
        let Response::Status(status) = serde_json::from_str(old).unwrap() else {
            panic!("a status");
        };
        assert_eq!((status.pid, status.generation), (1, 0));
    }

    #[test]
    fn answers_become_results() {
        let socket = Path::new("/run/p.sock");
        assert!(routes_set(socket, Response::Ok).is_ok());
        assert!(matches!(
            routes_set(socket, Response::Stale { current: 4 }),
            Err(ControlError::Stale { current: 4 })
        ));
        let refused = routes_set(socket, Response::Error("port 0".into())).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "the proxy refused the route table: port 0"
        );
        let odd = pong(socket, Response::Idle).unwrap_err();
        assert!(matches!(odd, ControlError::Unexpected { .. }));
        assert_eq!(
            odd.to_string(),
            "the proxy at /run/p.sock answered Idle to a ping"
        );
    }
}
