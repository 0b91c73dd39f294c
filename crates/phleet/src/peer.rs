//! A ship of the phleet as HQ's `ships` names it, and the HTTP client that asks it things.

use std::error::Error as _;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde::{Deserialize, Serialize};

use crate::token::Token;

/// How long a ship may take to answer before it is shown as unreachable.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(2);

/// The largest answer read from a ship (a status or a log backlog).
const MAX_BODY_BYTES: usize = 64 << 20;

/// How much of an error answer is quoted.
const MAX_QUOTE: usize = 300;

/// One ship of the phleet: a line `NAME URL` of HQ's `ships`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Peer {
    /// The ship's name.
    pub name: String,
    /// Its admin endpoint, e.g. `http://10.1.0.11:9797`.
    pub url: String,
}

impl Peer {
    /// A peer from its name and admin URL.
    pub fn new(name: impl Into<String>, url: impl Into<String>) -> Self {
        Peer {
            name: name.into(),
            url: url.into(),
        }
    }
}

/// Why a ship could not be asked: shown as the reason it is unreachable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    /// The URL in `ships` is not a usable admin URL.
    #[error("{url:?} is not an admin URL: {why} (write `NAME http://HOST:PORT` in HQ's ships)")]
    BadUrl {
        /// The URL.
        url: String,
        /// What is wrong with it.
        why: String,
    },
    /// Nothing listens there.
    #[error("connection refused by {addr} (is `starphleet ship` running there and listening on that address?)")]
    Refused {
        /// `host:port`.
        addr: String,
    },
    /// The connection could not be made for another reason (no route, DNS…).
    #[error("cannot connect to {addr}: {why}")]
    Connect {
        /// `host:port`.
        addr: String,
        /// Why.
        why: String,
    },
    /// No complete answer in time.
    #[error("no answer within {}", humantime::format_duration(*after))]
    TimedOut {
        /// The bound.
        after: Duration,
    },
    /// 401: the ship wants another token.
    #[error("401: wrong or missing token (every ship needs the same <state-dir>/phleet.token)")]
    Unauthorized,
    /// Any other non-2xx answer.
    #[error("{path} answered {code}: {body}")]
    Status {
        /// The path asked.
        path: String,
        /// The status code.
        code: u16,
        /// The start of the body (the ship's error message).
        body: String,
    },
    /// A 2xx answer that is not what a ship sends.
    #[error("bad answer to {path}: {why}")]
    BadAnswer {
        /// The path asked.
        path: String,
        /// What was wrong (bad JSON, too large…).
        why: String,
    },
    /// The exchange broke (connection reset, protocol error).
    #[error("talking to {addr}: {why}")]
    Http {
        /// `host:port`.
        addr: String,
        /// Why.
        why: String,
    },
}

/// The admin URL of `peer` joined with `path_and_query` (which starts with `/`).
pub(crate) fn peer_uri(peer: &Peer, path_and_query: &str) -> Result<Uri, PeerError> {
    let bad = |why: &str| PeerError::BadUrl {
        url: peer.url.clone(),
        why: why.to_string(),
    };
    let base: Uri = peer
        .url
        .trim()
        .parse()
        .map_err(|e: hyper::http::uri::InvalidUri| bad(&e.to_string()))?;
    match base.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(bad(
                "https admin URLs are not supported; use http:// (requests carry the phleet token)",
            ))
        }
        Some(other) => return Err(bad(&format!("unknown scheme {other}:"))),
        None => return Err(bad("it has no http:// scheme")),
    }
    let Some(authority) = base.authority() else {
        return Err(bad("it has no host"));
    };
    if base.query().is_some() {
        return Err(bad("it has a query string"));
    }
    let prefix = base.path().trim_end_matches('/');
    format!("http://{authority}{prefix}{path_and_query}")
        .parse()
        .map_err(|e: hyper::http::uri::InvalidUri| bad(&e.to_string()))
}

/// `host:port` of a URI, for messages.
fn addr_of(uri: &Uri) -> String {
    uri.authority()
        .map(|a| a.to_string())
        .unwrap_or_else(|| uri.to_string())
}

/// Every cause of an error, joined, for messages.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cur = s.source();
    }
    text
}

/// Maps a client error to why the ship is unreachable.
fn classify(e: &hyper_util::client::legacy::Error, uri: &Uri, timeout: Duration) -> PeerError {
    let addr = addr_of(uri);
    let mut cur = e.source();
    while let Some(s) = cur {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => return PeerError::Refused { addr },
                std::io::ErrorKind::TimedOut => return PeerError::TimedOut { after: timeout },
                _ => {}
            }
        }
        cur = s.source();
    }
    if e.is_connect() {
        PeerError::Connect {
            addr,
            why: chain(e),
        }
    } else {
        PeerError::Http {
            addr,
            why: chain(e),
        }
    }
}

/// The start of an error answer: its `error` field when it is the ships' JSON, else its text.
fn quote(body: &[u8]) -> String {
    let text = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string());
    match text.char_indices().nth(MAX_QUOTE) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

/// The client the phleet's ships are asked with: keep-alive connections, every request
/// bounded by one timeout (connect, headers and body together), the phleet token sent on
/// every request. Cheap to clone; clones share the connection pool.
#[derive(Clone)]
pub struct PeerClient {
    http: Client<HttpConnector, Full<Bytes>>,
    authorization: Option<HeaderValue>,
    timeout: Duration,
}

impl PeerClient {
    /// A client sending `token` (if any) and giving each ship [`PEER_TIMEOUT`].
    pub fn new(token: Option<&Token>) -> Self {
        Self::with_timeout(token, PEER_TIMEOUT)
    }

    /// A client with another per-request bound (tests, slow links).
    pub fn with_timeout(token: Option<&Token>, timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        connector.set_nodelay(true);
        // A followed log stream is idle for long stretches: TCP keepalive notices a ship
        // that vanished without closing (power loss, partition) within about 25 s.
        connector.set_keepalive(Some(Duration::from_secs(10)));
        connector.set_keepalive_interval(Some(Duration::from_secs(5)));
        connector.set_keepalive_retries(Some(3));
        let http = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        let authorization = token.map(|t| {
            HeaderValue::from_str(&t.authorization()).expect("a parsed token is printable ASCII")
        });
        PeerClient {
            http,
            authorization,
            timeout,
        }
    }

    /// The bound on each request.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn build(
        &self,
        method: Method,
        uri: Uri,
        headers: Option<&HeaderMap>,
        body: Bytes,
    ) -> Result<Request<Full<Bytes>>, PeerError> {
        let mut req = Request::builder().method(method).uri(uri.clone());
        if let Some(h) = headers {
            for (name, value) in h {
                req = req.header(name, value);
            }
        }
        if let Some(auth) = &self.authorization {
            req = req.header(AUTHORIZATION, auth.clone());
        }
        req.body(Full::new(body)).map_err(|e| PeerError::BadUrl {
            url: uri.to_string(),
            why: e.to_string(),
        })
    }

    /// Sends a request; returns the response once its headers are in, within the timeout,
    /// having turned non-2xx answers into errors. The body is left to the caller.
    pub(crate) async fn open(
        &self,
        method: Method,
        uri: Uri,
        headers: Option<&HeaderMap>,
        body: Bytes,
    ) -> Result<Response<Incoming>, PeerError> {
        let req = self.build(method, uri.clone(), headers, body)?;
        let path = uri.path().to_string();
        let exchange = async {
            let resp = self
                .http
                .request(req)
                .await
                .map_err(|e| classify(&e, &uri, self.timeout))?;
            check(resp, &path).await
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| PeerError::TimedOut {
                after: self.timeout,
            })?
    }

    /// Sends a request and reads the whole answer, all within the timeout.
    pub(crate) async fn fetch(
        &self,
        method: Method,
        uri: Uri,
        headers: Option<&HeaderMap>,
        body: Bytes,
    ) -> Result<Bytes, PeerError> {
        let path = uri.path().to_string();
        let addr = addr_of(&uri);
        let exchange = async {
            let req = self.build(method, uri.clone(), headers, body)?;
            let resp = self
                .http
                .request(req)
                .await
                .map_err(|e| classify(&e, &uri, self.timeout))?;
            let resp = check(resp, &path).await?;
            read_body(resp.into_body(), &path, &addr).await
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| PeerError::TimedOut {
                after: self.timeout,
            })?
    }

    /// `GET path` on `peer`, the whole answer within the timeout.
    pub(crate) async fn get(&self, peer: &Peer, path: &str) -> Result<Bytes, PeerError> {
        let uri = peer_uri(peer, path)?;
        self.fetch(Method::GET, uri, None, Bytes::new()).await
    }

    /// `GET path` on `peer`, parsed as JSON of type `T`.
    pub(crate) async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        peer: &Peer,
        path: &str,
    ) -> Result<T, PeerError> {
        let body = self.get(peer, path).await?;
        serde_json::from_slice(&body).map_err(|e| PeerError::BadAnswer {
            path: path.split('?').next().unwrap_or(path).to_string(),
            why: format!("not the JSON a ship sends: {e}"),
        })
    }
}

/// Reads a body up to [`MAX_BODY_BYTES`].
async fn read_body(body: Incoming, path: &str, addr: &str) -> Result<Bytes, PeerError> {
    match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(PeerError::BadAnswer {
            path: path.to_string(),
            why: format!("larger than {} MiB", MAX_BODY_BYTES >> 20),
        }),
        Err(e) => Err(PeerError::Http {
            addr: addr.to_string(),
            why: chain(&*e),
        }),
    }
}

/// Turns 401 and other non-2xx answers into errors.
async fn check(resp: Response<Incoming>, path: &str) -> Result<Response<Incoming>, PeerError> {
    let code = resp.status();
    if code.is_success() {
        return Ok(resp);
    }
    if code == StatusCode::UNAUTHORIZED {
        return Err(PeerError::Unauthorized);
    }
    // The error text is short; whatever of it arrives before the caller's deadline is quoted.
    let body = Limited::new(resp.into_body(), 64 << 10)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    Err(PeerError::Status {
        path: path.to_string(),
        code: code.as_u16(),
        body: quote(&body),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_admin_urls_and_refuses_bad_ones() {
        let p = |url: &str| Peer::new("north", url);
        assert_eq!(
            peer_uri(&p("http://10.1.0.11:9797"), "/status")
                .unwrap()
                .to_string(),
            "http://10.1.0.11:9797/status"
        );
        assert_eq!(
            peer_uri(&p("http://10.1.0.11:9797/"), "/logs?follow=1")
                .unwrap()
                .to_string(),
            "http://10.1.0.11:9797/logs?follow=1"
        );
        assert_eq!(
            peer_uri(&p("http://ship.example/admin/"), "/status")
                .unwrap()
                .to_string(),
            "http://ship.example/admin/status"
        );
        for bad in [
            "10.1.0.11:9797",
            "https://x:1",
            "ftp://x",
            "http://",
            "not a url",
            "http://x/?a=1",
        ] {
            let e = peer_uri(&p(bad), "/status").unwrap_err();
            assert!(matches!(e, PeerError::BadUrl { .. }), "{bad}: {e:?}");
            assert!(e.to_string().contains("ships"), "{e}");
        }
    }

    #[test]
    fn quotes_error_answers_briefly() {
        assert_eq!(
            quote(br#"{"error":"unknown admin path"}"#),
            "unknown admin path"
        );
        assert_eq!(quote(b"  plain text\n"), "plain text");
        let long = "x".repeat(1000);
        assert_eq!(quote(long.as_bytes()).chars().count(), MAX_QUOTE + 1);
    }

    #[test]
    fn reasons_read_well() {
        assert_eq!(
            PeerError::TimedOut {
                after: PEER_TIMEOUT
            }
            .to_string(),
            "no answer within 2s"
        );
        assert!(PeerError::Unauthorized
            .to_string()
            .contains("wrong or missing token"));
    }
}
