//! `starphleet serve-static DIR`: the file server static sites run on, inside their container.
//!
//! GET and HEAD only; `index.html` for directories (and a relative redirect from `/dir` to
//! `dir/`, so it works behind any URL prefix); content types by extension; `ETag` and
//! `Last-Modified` with 304s; gzip when the client accepts it (a precompressed `FILE.gz`
//! if there is one, else compressed once and kept in memory); single byte ranges. Paths
//! with `..`, dotfiles (except `.well-known`) and symlinks leading out of DIR are refused.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use bytes::Bytes;
use futures::TryStreamExt;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::net::TcpListener;

type Body = BoxBody<Bytes, std::io::Error>;

/// Compressed bodies by (path, ETag), and their total size.
type GzipMemo = (HashMap<(PathBuf, String), Bytes>, usize);

/// Files up to this size are compressed on the fly; larger ones go out as they are.
const MAX_GZIP_BYTES: u64 = 8 << 20;

/// Smaller files gain nothing from compression.
const MIN_GZIP_BYTES: u64 = 256;

/// Most bytes of compressed files kept in memory; past it the memo starts over.
const GZIP_MEMO_BYTES: usize = 32 << 20;

/// Serves `dir` on `0.0.0.0:port` until SIGTERM or SIGINT.
pub fn run(dir: &Path, port: u16) -> Result<()> {
    let root = std::fs::canonicalize(dir)
        .with_context(|| format!("serve-static: {} is not a directory", dir.display()))?;
    anyhow::ensure!(
        root.is_dir(),
        "serve-static: {} is not a directory",
        dir.display()
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let addr = SocketAddr::from(([0, 0, 0, 0], port));
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("serve-static: listening on {addr}"))?;
        println!("serving {} on {addr}", root.display());
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = serve(listener, root) => r,
            _ = term.recv() => Ok(()),
            _ = tokio::signal::ctrl_c() => Ok(()),
        }
    })
}

/// The served tree and what is remembered about it.
struct Site {
    /// Canonical root: resolved paths must stay under it.
    root: PathBuf,
    /// Compressed bodies, never locked across an await.
    gzipped: Mutex<GzipMemo>,
}

/// Accepts connections on `listener` and serves `root` on each, forever.
async fn serve(listener: TcpListener, root: PathBuf) -> Result<()> {
    let site = Arc::new(Site {
        root,
        gzipped: Mutex::new((HashMap::new(), 0)),
    });
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(conn) => conn,
            // Out of file descriptors and the like: keep serving the open connections.
            Err(e) => {
                eprintln!("serve-static: accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let site = site.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let site = site.clone();
                async move { Ok::<_, Infallible>(handle(&site, &req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn empty() -> Body {
    Full::new(Bytes::new()).map_err(|e| match e {}).boxed()
}

fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into()).map_err(|e| match e {}).boxed()
}

fn plain(status: StatusCode, text: &str) -> Response<Body> {
    let mut r = Response::new(full(format!("{text}\n")));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Why a request path does not name a file to serve.
#[derive(Debug, PartialEq, Eq)]
enum BadPath {
    /// `..`, NUL or undecodable: refused outright.
    Refused,
    /// A dotfile: answered as if absent.
    Hidden,
}

/// The request path as components under the root.
fn components(path: &str) -> Result<Vec<PathBuf>, BadPath> {
    let decoded: Vec<u8> = percent_encoding::percent_decode_str(path).collect();
    let mut out = Vec::new();
    for part in decoded.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err(BadPath::Refused),
            p if p.contains(&0) => return Err(BadPath::Refused),
            p if p.starts_with(b".") && p != b".well-known" => return Err(BadPath::Hidden),
            p => out.push(PathBuf::from(std::ffi::OsStr::from_bytes(p))),
        }
    }
    Ok(out)
}

async fn handle(site: &Site, req: &Request<Incoming>) -> Response<Body> {
    let head = match *req.method() {
        Method::GET => false,
        Method::HEAD => true,
        _ => {
            let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD");
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return r;
        }
    };
    let mut response = respond(site, req).await;
    if head {
        // Same headers, no body: Content-Length stays what a GET would send.
        *response.body_mut() = empty();
    }
    response
}

async fn respond(site: &Site, req: &Request<Incoming>) -> Response<Body> {
    let path = req.uri().path();
    let parts = match components(path) {
        Ok(parts) => parts,
        Err(BadPath::Refused) => return plain(StatusCode::BAD_REQUEST, "bad path"),
        Err(BadPath::Hidden) => return not_found(site, req.headers()).await,
    };
    let mut file = site.root.clone();
    file.extend(parts);
    let Some(mut meta) = inside(&site.root, &file).await else {
        return not_found(site, req.headers()).await;
    };
    if meta.is_dir() {
        if !path.ends_with('/') {
            // Relative, so it works whatever prefix the proxy stripped.
            let last = path.rsplit('/').next().unwrap_or("");
            let query = req
                .uri()
                .query()
                .map(|q| format!("?{q}"))
                .unwrap_or_default();
            let mut r = plain(StatusCode::MOVED_PERMANENTLY, "moved");
            if let Ok(v) = HeaderValue::from_str(&format!("{last}/{query}")) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            return r;
        }
        file.push("index.html");
        match inside(&site.root, &file).await {
            Some(m) if m.is_file() => meta = m,
            _ => return not_found(site, req.headers()).await,
        }
    }
    if !meta.is_file() {
        return not_found(site, req.headers()).await;
    }
    serve_file(site, &file, &meta, req.headers(), StatusCode::OK).await
}

/// The metadata of `path` when it exists and resolves (symlinks too) under `root`.
async fn inside(root: &Path, path: &Path) -> Option<std::fs::Metadata> {
    let real = tokio::fs::canonicalize(path).await.ok()?;
    if !real.starts_with(root) {
        return None;
    }
    tokio::fs::metadata(&real).await.ok()
}

async fn not_found(site: &Site, headers: &HeaderMap) -> Response<Body> {
    let page = site.root.join("404.html");
    match inside(&site.root, &page).await {
        Some(meta) if meta.is_file() => {
            serve_file(site, &page, &meta, headers, StatusCode::NOT_FOUND).await
        }
        _ => plain(StatusCode::NOT_FOUND, "not found"),
    }
}

/// The content type of `path`, with a charset for text.
fn content_type(path: &Path) -> String {
    let mime = mime_guess::from_path(path).first_or_octet_stream();
    let essence = mime.essence_str();
    if mime.type_() == mime_guess::mime::TEXT || essence == "application/javascript" {
        format!("{essence}; charset=utf-8")
    } else {
        essence.to_string()
    }
}

fn compressible(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("");
    essence.starts_with("text/")
        || matches!(
            essence,
            "application/javascript"
                | "application/json"
                | "application/xml"
                | "application/wasm"
                | "image/svg+xml"
                | "application/manifest+json"
        )
}

/// Whether `Accept-Encoding` allows gzip (`gzip` or `*` with a non-zero q).
fn accepts_gzip(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    value.split(',').any(|item| {
        let mut parts = item.split(';');
        let coding = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = parts
            .find_map(|p| p.trim().strip_prefix("q="))
            .and_then(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        (coding == "gzip" || coding == "*") && q > 0.0
    })
}

/// `If-None-Match` (a list, or `*`) holds `etag`, compared weakly.
fn none_match(value: &str, etag: &str) -> bool {
    let strip = |t: &str| t.trim().trim_start_matches("W/").to_string();
    value.trim() == "*" || value.split(',').any(|t| strip(t) == strip(etag))
}

/// A single byte range `bytes=a-b`, `bytes=a-` or `bytes=-n` of a `len`-byte file:
/// `Some(Ok((start, end)))` inclusive, `Some(Err(()))` when unsatisfiable, `None` when the
/// header is absent or not one plain range (then the whole file is sent).
fn byte_range(value: &str, len: u64) -> Option<Result<(u64, u64), ()>> {
    let spec = value.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    let range = if a.is_empty() {
        let n: u64 = b.parse().ok()?;
        if n == 0 || len == 0 {
            return Some(Err(()));
        }
        (len.saturating_sub(n), len - 1)
    } else {
        let start: u64 = a.parse().ok()?;
        let end: Option<u64> = if b.is_empty() {
            None
        } else {
            Some(b.parse().ok()?)
        };
        if end.is_some_and(|end| end < start) {
            // Not a valid range at all: ignored, as RFC 9110 says.
            return None;
        }
        if start >= len {
            return Some(Err(()));
        }
        (start, end.unwrap_or(len - 1).min(len - 1))
    };
    Some(Ok(range))
}

async fn serve_file(
    site: &Site,
    path: &Path,
    meta: &std::fs::Metadata,
    headers: &HeaderMap,
    status: StatusCode,
) -> Response<Body> {
    let len = meta.len();
    let modified = meta.modified().unwrap_or(UNIX_EPOCH);
    let nanos = modified
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let etag = format!("\"{len:x}-{nanos:x}\"");
    let ctype = content_type(path);
    let gzip_ok = compressible(&ctype);
    let mut r = Response::new(empty());
    *r.status_mut() = status;
    let h = r.headers_mut();
    let set = |h: &mut HeaderMap, name: header::HeaderName, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            h.insert(name, v);
        }
    };
    set(h, header::CONTENT_TYPE, &ctype);
    set(h, header::LAST_MODIFIED, &httpdate::fmt_http_date(modified));
    // Revalidate on every use: a new deploy must show at once, and a 304 is cheap.
    set(h, header::CACHE_CONTROL, "no-cache");
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    if gzip_ok {
        set(h, header::VARY, "Accept-Encoding");
    }
    let get = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());

    let gzip = gzip_ok
        && status == StatusCode::OK
        && (MIN_GZIP_BYTES..=MAX_GZIP_BYTES).contains(&len)
        && get(header::RANGE).is_none()
        && accepts_gzip(headers);
    let etag = if gzip {
        format!("{}-gz\"", etag.trim_end_matches('"'))
    } else {
        etag
    };
    set(h, header::ETAG, &etag);
    if status == StatusCode::OK {
        let fresh = match get(header::IF_NONE_MATCH) {
            Some(inm) => none_match(inm, &etag),
            None => get(header::IF_MODIFIED_SINCE)
                .and_then(|v| httpdate::parse_http_date(v).ok())
                .is_some_and(|since| truncate_secs(modified) <= since),
        };
        if fresh {
            *r.status_mut() = StatusCode::NOT_MODIFIED;
            for name in [header::CONTENT_TYPE, header::VARY] {
                r.headers_mut().remove(name);
            }
            return r;
        }
    }

    if gzip {
        return match gzipped(site, path, &etag).await {
            Ok(body) => {
                let h = r.headers_mut();
                set(h, header::CONTENT_ENCODING, "gzip");
                set(h, header::CONTENT_LENGTH, &body.len().to_string());
                *r.body_mut() = full(body);
                r
            }
            Err(_) => plain(StatusCode::INTERNAL_SERVER_ERROR, "cannot read the file"),
        };
    }

    let mut range = (0, len.saturating_sub(1));
    if status == StatusCode::OK {
        set(r.headers_mut(), header::ACCEPT_RANGES, "bytes");
        let if_range_ok = get(header::IF_RANGE).is_none_or(|v| v.trim() == etag);
        if let (Some(value), true) = (get(header::RANGE), if_range_ok) {
            match byte_range(value, len) {
                Some(Ok(r2)) => {
                    range = r2;
                    *r.status_mut() = StatusCode::PARTIAL_CONTENT;
                    set(
                        r.headers_mut(),
                        header::CONTENT_RANGE,
                        &format!("bytes {}-{}/{len}", r2.0, r2.1),
                    );
                }
                Some(Err(())) => {
                    let mut bad = plain(StatusCode::RANGE_NOT_SATISFIABLE, "range not satisfiable");
                    set(
                        bad.headers_mut(),
                        header::CONTENT_RANGE,
                        &format!("bytes */{len}"),
                    );
                    return bad;
                }
                None => {}
            }
        }
    }
    let count = if len == 0 { 0 } else { range.1 - range.0 + 1 };
    set(r.headers_mut(), header::CONTENT_LENGTH, &count.to_string());
    match open_range(path, range.0, count).await {
        Ok(body) => {
            *r.body_mut() = body;
            r
        }
        Err(_) => plain(StatusCode::INTERNAL_SERVER_ERROR, "cannot read the file"),
    }
}

fn truncate_secs(t: SystemTime) -> SystemTime {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    UNIX_EPOCH + std::time::Duration::from_secs(secs)
}

/// `count` bytes of the file from `start`, streamed.
async fn open_range(path: &Path, start: u64, count: u64) -> std::io::Result<Body> {
    let mut file = tokio::fs::File::open(path).await?;
    if start > 0 {
        file.seek(std::io::SeekFrom::Start(start)).await?;
    }
    let stream = tokio_util::io::ReaderStream::new(file.take(count)).map_ok(Frame::data);
    Ok(BodyExt::boxed(StreamBody::new(stream)))
}

/// The gzip body of `path`: its precompressed `.gz` sibling when that is at least as new,
/// else compressed once and remembered under its ETag.
async fn gzipped(site: &Site, path: &Path, etag: &str) -> std::io::Result<Bytes> {
    let key = (path.to_path_buf(), etag.to_string());
    if let Some(body) = lock(&site.gzipped).0.get(&key) {
        return Ok(body.clone());
    }
    let mut gz = path.as_os_str().to_owned();
    gz.push(".gz");
    let gz = PathBuf::from(gz);
    let (orig, pre) = (
        tokio::fs::metadata(path).await?,
        inside(&site.root, &gz).await,
    );
    let body = match pre {
        Some(m) if m.is_file() && m.modified().ok() >= orig.modified().ok() => {
            Bytes::from(tokio::fs::read(&gz).await?)
        }
        _ => {
            let data = tokio::fs::read(path).await?;
            tokio::task::spawn_blocking(move || {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
                e.write_all(&data)?;
                e.finish().map(Bytes::from)
            })
            .await
            .map_err(std::io::Error::other)??
        }
    };
    let mut memo = lock(&site.gzipped);
    if memo.1 + body.len() > GZIP_MEMO_BYTES {
        memo.0.clear();
        memo.1 = 0;
    }
    memo.1 += body.len();
    memo.0.insert(key, body.clone());
    Ok(body)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// A site in a temp dir, served on a loopback port by a runtime on its own thread.
    struct Served {
        _dir: tempfile::TempDir,
        root: PathBuf,
        addr: SocketAddr,
    }

    fn serve_site(files: &[(&str, &[u8])]) -> Served {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("site");
        for (name, data) in files {
            let path = root.join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, data).unwrap();
        }
        std::fs::create_dir_all(&root).unwrap();
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let canonical = std::fs::canonicalize(&root).unwrap();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = TcpListener::from_std(std_listener).unwrap();
                serve(listener, canonical).await
            })
        });
        Served {
            _dir: dir,
            root,
            addr,
        }
    }

    fn agent() -> ureq::Agent {
        ureq::AgentBuilder::new()
            .redirects(0)
            .timeout(std::time::Duration::from_secs(10))
            .build()
    }

    impl Served {
        fn url(&self, path: &str) -> String {
            format!("http://{}{path}", self.addr)
        }

        /// (status, headers we look at, body) of a request through a real HTTP client.
        fn get(&self, path: &str, headers: &[(&str, &str)]) -> (u16, ureq::Response) {
            self.call("GET", path, headers)
        }

        fn call(
            &self,
            method: &str,
            path: &str,
            headers: &[(&str, &str)],
        ) -> (u16, ureq::Response) {
            let mut req = agent().request(method, &self.url(path));
            for (k, v) in headers {
                req = req.set(k, v);
            }
            match req.call() {
                Ok(r) => (r.status(), r),
                Err(ureq::Error::Status(code, r)) => (code, r),
                Err(e) => panic!("{method} {path}: {e}"),
            }
        }

        /// A raw request line, for paths a client would normalize.
        fn raw(&self, target: &str) -> String {
            let mut s = std::net::TcpStream::connect(self.addr).unwrap();
            s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
            write!(
                s,
                "GET {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
            )
            .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        }
    }

    fn body(r: ureq::Response) -> Vec<u8> {
        let mut out = Vec::new();
        r.into_reader().read_to_end(&mut out).unwrap();
        out
    }

    const PAGE: &[u8] = b"<!doctype html><h1>hello</h1>";

    #[test]
    fn content_types_and_index_pages() {
        let css = "body { color: red; }\n".repeat(40);
        let site = serve_site(&[
            ("index.html", PAGE),
            ("style.css", css.as_bytes()),
            ("app.js", b"console.log(1)"),
            ("data.json", b"{}"),
            ("logo.png", b"\x89PNG"),
            ("blob.unknownext", b"x"),
            ("docs/index.html", b"docs"),
        ]);
        for (path, want) in [
            ("/", "text/html; charset=utf-8"),
            ("/index.html", "text/html; charset=utf-8"),
            ("/style.css", "text/css; charset=utf-8"),
            ("/data.json", "application/json"),
            ("/logo.png", "image/png"),
            ("/blob.unknownext", "application/octet-stream"),
        ] {
            let (status, r) = site.get(path, &[]);
            assert_eq!(status, 200, "{path}");
            assert_eq!(r.header("content-type"), Some(want), "{path}");
        }
        let (_, r) = site.get("/app.js", &[]);
        assert!(r
            .header("content-type")
            .unwrap()
            .ends_with("javascript; charset=utf-8"));
        let (_, r) = site.get("/", &[]);
        assert_eq!(body(r), PAGE);
        let (status, r) = site.get("/docs/", &[]);
        assert_eq!((status, body(r)), (200, b"docs".to_vec()));
        // A directory without its slash is sent to it, relative to wherever it is mounted.
        let (status, r) = site.get("/docs?x=1", &[]);
        assert_eq!(status, 301);
        assert_eq!(r.header("location"), Some("docs/?x=1"));
        let (status, _) = site.get("/missing.html", &[]);
        assert_eq!(status, 404);
        let (status, r) = site.get("/with%20space.txt", &[]);
        assert_eq!(status, 404, "{}", r.status_text());
    }

    #[test]
    fn etag_and_last_modified_answer_304() {
        let site = serve_site(&[("a.txt", b"alpha")]);
        let (status, r) = site.get("/a.txt", &[]);
        assert_eq!(status, 200);
        let etag = r.header("etag").unwrap().to_string();
        let modified = r.header("last-modified").unwrap().to_string();
        assert_eq!(r.header("cache-control"), Some("no-cache"));

        let (status, r) = site.get("/a.txt", &[("If-None-Match", &etag)]);
        assert_eq!(status, 304);
        assert_eq!(r.header("etag"), Some(etag.as_str()));
        assert!(body(r).is_empty());
        let (status, _) = site.get(
            "/a.txt",
            &[("If-None-Match", &format!("W/{etag}, \"other\""))],
        );
        assert_eq!(status, 304, "weak comparison and lists");
        let (status, _) = site.get("/a.txt", &[("If-Modified-Since", &modified)]);
        assert_eq!(status, 304);
        let (status, _) = site.get(
            "/a.txt",
            &[("If-Modified-Since", "Mon, 01 Jan 2001 00:00:00 GMT")],
        );
        assert_eq!(status, 200);

        // A changed file has a new validator: the old one no longer matches.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(site.root.join("a.txt"), b"alpha, changed").unwrap();
        let (status, r) = site.get("/a.txt", &[("If-None-Match", &etag)]);
        assert_eq!(status, 200);
        assert_ne!(r.header("etag"), Some(etag.as_str()));
        assert_eq!(body(r), b"alpha, changed");
    }

    #[test]
    fn gzip_when_accepted_precompressed_when_present() {
        let text = "the same line again and again\n".repeat(200);
        let site = serve_site(&[("big.txt", text.as_bytes()), ("tiny.txt", b"hi")]);
        let gunzip = |data: &[u8]| {
            let mut out = String::new();
            flate2::read::GzDecoder::new(data)
                .read_to_string(&mut out)
                .unwrap();
            out
        };
        let (status, r) = site.get("/big.txt", &[("Accept-Encoding", "br, gzip;q=0.8")]);
        assert_eq!(status, 200);
        assert_eq!(r.header("content-encoding"), Some("gzip"));
        assert_eq!(r.header("vary"), Some("Accept-Encoding"));
        let gz_etag = r.header("etag").unwrap().to_string();
        let data = body(r);
        assert!(data.len() < text.len() / 10, "{} bytes", data.len());
        assert_eq!(gunzip(&data), text);
        let (status, _) = site.get(
            "/big.txt",
            &[("Accept-Encoding", "gzip"), ("If-None-Match", &gz_etag)],
        );
        assert_eq!(status, 304);

        for accept in [None, Some("gzip;q=0"), Some("identity")] {
            let headers: Vec<(&str, &str)> =
                accept.map(|a| ("Accept-Encoding", a)).into_iter().collect();
            let (_, r) = site.get("/big.txt", &headers);
            assert_eq!(r.header("content-encoding"), None, "{accept:?}");
            assert_ne!(r.header("etag"), Some(gz_etag.as_str()));
            assert_eq!(body(r), text.as_bytes());
        }
        let (_, r) = site.get("/tiny.txt", &[("Accept-Encoding", "gzip")]);
        assert_eq!(r.header("content-encoding"), None, "too small to gain");

        // A precompressed sibling at least as new is sent as it is.
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(b"precompressed").unwrap();
        std::fs::write(site.root.join("big.txt.gz"), e.finish().unwrap()).unwrap();
        std::fs::write(site.root.join("other.txt"), text.as_bytes()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(site.root.join("other.txt.gz"), b"").unwrap();
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(b"other, precompressed").unwrap();
        std::fs::write(site.root.join("other.txt.gz"), e.finish().unwrap()).unwrap();
        let (_, r) = site.get("/other.txt", &[("Accept-Encoding", "gzip")]);
        assert_eq!(gunzip(&body(r)), "other, precompressed");
    }

    #[test]
    fn paths_out_of_the_site_are_refused() {
        let site = serve_site(&[
            ("index.html", PAGE),
            (".env", b"SECRET=1"),
            (".well-known/x", b"ok"),
        ]);
        let outside = site.root.parent().unwrap().join("secret.txt");
        std::fs::write(&outside, "secret").unwrap();
        std::os::unix::fs::symlink(&outside, site.root.join("link.txt")).unwrap();
        for target in [
            "/../secret.txt",
            "/%2e%2e/secret.txt",
            "/a/../../secret.txt",
            "/%00",
        ] {
            let out = site.raw(target);
            assert!(out.starts_with("HTTP/1.1 400"), "{target}: {out}");
            assert!(!out.contains("secret"), "{target}: {out}");
        }
        let (status, _) = site.get("/link.txt", &[]);
        assert_eq!(status, 404, "a symlink out of the site is not followed");
        let (status, _) = site.get("/.env", &[]);
        assert_eq!(status, 404, "dotfiles are not served");
        let (status, r) = site.get("/.well-known/x", &[]);
        assert_eq!((status, body(r)), (200, b"ok".to_vec()));
    }

    #[test]
    fn head_ranges_methods_and_the_404_page() {
        let site = serve_site(&[("hello.txt", b"hello world"), ("404.html", b"<p>lost</p>")]);
        let (status, r) = site.call("HEAD", "/hello.txt", &[]);
        assert_eq!(status, 200);
        assert_eq!(r.header("content-length"), Some("11"));
        assert_eq!(r.header("accept-ranges"), Some("bytes"));
        assert!(body(r).is_empty());

        let (status, r) = site.get("/hello.txt", &[("Range", "bytes=0-4")]);
        assert_eq!(status, 206);
        assert_eq!(r.header("content-range"), Some("bytes 0-4/11"));
        assert_eq!(body(r), b"hello");
        let (_, r) = site.get("/hello.txt", &[("Range", "bytes=-5")]);
        assert_eq!(body(r), b"world");
        let (_, r) = site.get("/hello.txt", &[("Range", "bytes=6-")]);
        assert_eq!(body(r), b"world");
        let (status, r) = site.get("/hello.txt", &[("Range", "bytes=50-60")]);
        assert_eq!(status, 416);
        assert_eq!(r.header("content-range"), Some("bytes */11"));
        let (status, _) = site.get("/hello.txt", &[("Range", "bytes=0-1,3-4")]);
        assert_eq!(status, 200, "several ranges: the whole file");
        let (status, _) = site.get(
            "/hello.txt",
            &[("Range", "bytes=0-4"), ("If-Range", "\"stale\"")],
        );
        assert_eq!(status, 200, "a stale If-Range gets the whole file");

        let (status, r) = site.call("POST", "/hello.txt", &[]);
        assert_eq!(status, 405);
        assert_eq!(r.header("allow"), Some("GET, HEAD"));

        let (status, r) = site.get("/nope", &[]);
        assert_eq!(status, 404);
        assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
        assert_eq!(body(r), b"<p>lost</p>");
    }

    #[test]
    fn range_and_encoding_parsing() {
        assert_eq!(byte_range("bytes=0-0", 1), Some(Ok((0, 0))));
        assert_eq!(byte_range("bytes=5-100", 10), Some(Ok((5, 9))));
        assert_eq!(byte_range("bytes=-0", 10), Some(Err(())));
        assert_eq!(byte_range("bytes=10-", 10), Some(Err(())));
        assert_eq!(byte_range("bytes=4-2", 10), None);
        assert_eq!(byte_range("items=0-1", 10), None);
        assert_eq!(
            components("/a/./b/"),
            Ok(vec![PathBuf::from("a"), PathBuf::from("b")])
        );
        assert_eq!(components("/a/%2E%2E"), Err(BadPath::Refused));
        assert_eq!(components("/.git/config"), Err(BadPath::Hidden));
    }
}
