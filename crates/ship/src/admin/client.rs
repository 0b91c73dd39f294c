//! The CLI's side of the admin endpoint: requests over the socket in the state dir.

use hyper::body::Bytes;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;

/// Why a request to the ship failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens on the socket: the ship is not running.
    #[error("no ship answers on {}: {source}", socket.display())]
    NotRunning {
        /// The socket.
        socket: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The ship did not answer within the time a command waits.
    #[error("the ship on {} did not answer within {after:?}", socket.display())]
    Timeout {
        /// The socket.
        socket: std::path::PathBuf,
        /// How long it waited.
        after: std::time::Duration,
    },
    /// The HTTP exchange failed.
    #[error("talking to the ship: {0}")]
    Http(#[from] hyper::Error),
    /// The request could not be built.
    #[error("building the request: {0}")]
    Request(#[from] hyper::http::Error),
}

/// How long a command waits for the ship's answer (a followed stream waits for its first line).
const ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

async fn connect(
    socket: &std::path::Path,
) -> Result<hyper::client::conn::http1::SendRequest<http_body_util::Empty<Bytes>>, ClientError> {
    let stream = tokio::time::timeout(ANSWER_TIMEOUT, tokio::net::UnixStream::connect(socket))
        .await
        .map_err(|_| ClientError::Timeout {
            socket: socket.to_path_buf(),
            after: ANSWER_TIMEOUT,
        })?
        .map_err(|source| ClientError::NotRunning {
            socket: socket.to_path_buf(),
            source,
        })?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

/// Asks the ship behind `admin.sock` for `path` (a GET) and returns the body.
pub async fn get(socket: &std::path::Path, path: &str) -> Result<String, ClientError> {
    Ok(request(socket, Method::GET, path).await?.1)
}

/// Sends one request to the ship behind `admin.sock`; returns the status code and body.
pub async fn request(
    socket: &std::path::Path,
    method: Method,
    path: &str,
) -> Result<(u16, String), ClientError> {
    use http_body_util::BodyExt;
    let mut sender = connect(socket).await?;
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "starphleet")
        .body(http_body_util::Empty::<Bytes>::new())?;
    let exchange = async {
        let resp = sender.send_request(req).await?;
        let code = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok::<_, ClientError>((code, body))
    };
    let (code, body) = tokio::time::timeout(ANSWER_TIMEOUT, exchange)
        .await
        .map_err(|_| ClientError::Timeout {
            socket: socket.to_path_buf(),
            after: ANSWER_TIMEOUT,
        })??;
    Ok((code, String::from_utf8_lossy(&body).into_owned()))
}

/// Sends `GET path` to the ship behind `admin.sock` and hands each line of the (streamed)
/// body to `on_line` as it arrives; returns the status code.
pub async fn stream_lines(
    socket: &std::path::Path,
    path: &str,
    mut on_line: impl FnMut(&str),
) -> Result<u16, ClientError> {
    use http_body_util::BodyExt;
    let mut sender = connect(socket).await?;
    let req = Request::get(path)
        .header("host", "starphleet")
        .body(http_body_util::Empty::<Bytes>::new())?;
    let resp = tokio::time::timeout(ANSWER_TIMEOUT, sender.send_request(req))
        .await
        .map_err(|_| ClientError::Timeout {
            socket: socket.to_path_buf(),
            after: ANSWER_TIMEOUT,
        })??;
    let code = resp.status().as_u16();
    let mut body = resp.into_body();
    let mut pending: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            pending.extend_from_slice(&data);
            while let Some(nl) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=nl).collect();
                on_line(String::from_utf8_lossy(&line[..line.len() - 1]).as_ref());
            }
        }
    }
    if !pending.is_empty() {
        on_line(String::from_utf8_lossy(&pending).as_ref());
    }
    Ok(code)
}
