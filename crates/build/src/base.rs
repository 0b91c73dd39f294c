//! Base root filesystems from tarballs (`base URL_OR_PATH [--sha256 HEX]`).
//!
//! A base is fetched once (`http(s)://`, `file://`, or a path in the app's tree), checked
//! against its sha256 when one is given, and unpacked into `<bases>/<sha256>/` under a
//! temporary name that is renamed into place when complete, so a base dir that exists is
//! whole. Containers of apps with a base run on it instead of the host's `/usr`.

use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};

/// How long connecting to a base's server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a base could not be made ready.
#[derive(Debug, thiserror::Error)]
pub enum BaseError {
    /// The `base` line names something that cannot be a base source.
    #[error("base {base:?}: {problem}")]
    Source {
        /// The source as written.
        base: String,
        /// What is wrong and how to fix it.
        problem: String,
    },
    /// Downloading the tarball failed.
    #[error("downloading base {url}: {cause}")]
    Download {
        /// The URL.
        url: String,
        /// What went wrong (a status, a timeout, a TLS or network error).
        cause: String,
    },
    /// The tarball is not the one the `--sha256` names.
    #[error("base {base}: its sha256 is {actual}, but `--sha256` says {expected}; fix the sha256 or the source")]
    Mismatch {
        /// The source.
        base: String,
        /// The sha256 given.
        expected: String,
        /// The sha256 of what was fetched.
        actual: String,
    },
    /// The tarball could not be unpacked.
    #[error("unpacking base {base}: {cause}; it must be a .tar, .tar.gz or .tar.zst of a root filesystem")]
    Unpack {
        /// The source.
        base: String,
        /// What tar or the decompressor said.
        cause: std::io::Error,
    },
    /// A file operation on the base store failed.
    #[error("{what} {}: {cause}", path.display())]
    Io {
        /// What was attempted.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        cause: std::io::Error,
    },
}

type Result<T> = std::result::Result<T, BaseError>;

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BaseError {
    let path = path.to_path_buf();
    move |cause| BaseError::Io { what, path, cause }
}

/// An unpacked base, ready to be a container's root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Base {
    /// `<bases>/<sha256>`.
    pub dir: PathBuf,
    /// The sha256 of the tarball.
    pub sha256: String,
    /// False when it was already there.
    pub fetched: bool,
}

enum Origin {
    Http(String),
    File(PathBuf),
}

/// Makes the base named by `source` ready under `bases`; `app_dir` is the app's exported
/// tree (for sources that are paths in the repository); `timeout` bounds a download.
pub fn ensure_base(
    bases: &Path,
    source: &str,
    sha256: Option<&str>,
    app_dir: &Path,
    timeout: Duration,
) -> Result<Base> {
    let bad = |problem: String| BaseError::Source {
        base: source.to_string(),
        problem,
    };
    let expected = match sha256 {
        Some(hex) if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Some(hex.to_ascii_lowercase())
        }
        Some(hex) => {
            return Err(bad(format!(
                "--sha256 {hex:?} is not 64 hex digits (the output of sha256sum)"
            )))
        }
        None => None,
    };
    if let Some(sha) = &expected {
        let dir = bases.join(sha);
        if dir.is_dir() {
            return Ok(Base {
                dir,
                sha256: sha.clone(),
                fetched: false,
            });
        }
    }
    let origin = origin(source, app_dir).map_err(bad)?;
    std::fs::create_dir_all(bases).map_err(io_err("creating", bases))?;
    // A URL without a sha256 is fetched once: what it gave is remembered by URL.
    let remembered = bases
        .join("sources")
        .join(hex::encode(Sha256::digest(source)));
    if let (Origin::Http(_), None) = (&origin, &expected) {
        if let Ok(sha) = std::fs::read_to_string(&remembered) {
            let dir = bases.join(sha.trim());
            if dir.is_dir() {
                return Ok(Base {
                    dir,
                    sha256: sha.trim().to_string(),
                    fetched: false,
                });
            }
        }
    }

    let download = bases.join(format!(".download-{}.tmp", unique()));
    let _cleanup = RemoveOnDrop(download.clone());
    let tarball = match &origin {
        Origin::Http(url) => {
            fetch(url, &download, timeout)?;
            download.clone()
        }
        Origin::File(path) => path.clone(),
    };
    let actual = hash_file(&tarball)?;
    if let Some(want) = &expected {
        if *want != actual {
            return Err(BaseError::Mismatch {
                base: source.to_string(),
                expected: want.clone(),
                actual,
            });
        }
    }
    let dir = bases.join(&actual);
    if !dir.is_dir() {
        let staging = bases.join(format!(".{actual}.{}.tmp", unique()));
        let _staged = RemoveOnDrop(staging.clone());
        unpack(&tarball, &staging).map_err(|cause| BaseError::Unpack {
            base: source.to_string(),
            cause,
        })?;
        match std::fs::rename(&staging, &dir) {
            Ok(()) => {}
            // Another build unpacked the same tarball first: its copy is as good.
            Err(_) if dir.is_dir() => {}
            Err(e) => return Err(io_err("publishing base", &dir)(e)),
        }
    }
    if let Origin::Http(_) = origin {
        write_atomic(&remembered, actual.as_bytes())?;
    }
    Ok(Base {
        dir,
        sha256: actual,
        fetched: true,
    })
}

/// Where `source` comes from; the error says why it cannot be a base.
fn origin(source: &str, app_dir: &Path) -> std::result::Result<Origin, String> {
    if source.starts_with("http://") || source.starts_with("https://") {
        return Ok(Origin::Http(source.to_string()));
    }
    if let Some(path) = source.strip_prefix("file://") {
        let path = PathBuf::from(path);
        if !path.is_absolute() {
            return Err(
                "a file:// URL needs an absolute path, e.g. file:///srv/bases/debian.tar.zst"
                    .into(),
            );
        }
        if !path.is_file() {
            return Err(format!("{} does not exist on the ship", path.display()));
        }
        return Ok(Origin::File(path));
    }
    if source.contains("://") {
        return Err("only http://, https:// and file:// URLs, or a path in the app's repository, can be a base".into());
    }
    let rel = Path::new(source);
    if !rel
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err("a path in the app's repository must be relative and stay inside it (no `..`); use file:// for a file on the ship".into());
    }
    let path = app_dir.join(rel);
    if !path.is_file() {
        return Err(format!("{source} is not a file in the app's repository"));
    }
    Ok(Origin::File(path))
}

/// Downloads `url` into `dest` within `timeout`.
fn fetch(url: &str, dest: &Path, timeout: Duration) -> Result<()> {
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(CONNECT_TIMEOUT)
        .timeout(timeout)
        .build();
    let failed = |cause: String| BaseError::Download {
        url: url.to_string(),
        cause,
    };
    let response = agent.get(url).call().map_err(|e| match e {
        ureq::Error::Status(code, r) => {
            failed(format!("the server answered {code} {}", r.status_text()))
        }
        ureq::Error::Transport(t) => failed(t.to_string()),
    })?;
    let mut file = File::create(dest).map_err(io_err("creating", dest))?;
    std::io::copy(&mut response.into_reader(), &mut file)
        .map_err(|e| failed(format!("reading the body: {e}")))?;
    file.sync_all().map_err(io_err("writing", dest))
}

fn hash_file(path: &Path) -> Result<String> {
    let mut file = File::open(path).map_err(io_err("reading", path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).map_err(io_err("reading", path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Unpacks a plain, gzip or zstd tarball (told apart by their magic bytes) into `dest`.
fn unpack(tarball: &Path, dest: &Path) -> std::io::Result<()> {
    let mut file = BufReader::new(File::open(tarball)?);
    let mut magic = [0u8; 4];
    let n = read_up_to(&mut file, &mut magic)?;
    let head = std::io::Cursor::new(magic[..n].to_vec());
    let stream = head.chain(file);
    let reader: Box<dyn Read> = match magic {
        [0x1f, 0x8b, ..] => Box::new(flate2::read::GzDecoder::new(stream)),
        [0x28, 0xb5, 0x2f, 0xfd] => Box::new(zstd::stream::read::Decoder::new(stream)?),
        _ => Box::new(stream),
    };
    std::fs::create_dir_all(dest)?;
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_unpack_xattrs(false);
    // Entries that would land outside `dest` (`..`, links) are refused by tar itself.
    archive.unpack(dest)?;
    // The runtime generates files into /etc; a base without one still gets it.
    std::fs::create_dir_all(dest.join("etc"))
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
    }
    let tmp = path.with_extension(format!("{}.tmp", unique()));
    let mut f = File::create(&tmp).map_err(io_err("writing", &tmp))?;
    f.write_all(data).map_err(io_err("writing", &tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io_err("writing", path))
}

/// A name part unique within this machine for as long as it matters.
fn unique() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Removes a path (file or dir) when dropped, if it is still there.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if self.0.is_dir() {
            let _ = std::fs::remove_dir_all(&self.0);
        } else {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tarball of `files` (path, contents, mode), compressed as `kind` says.
    fn tarball(files: &[(&str, &str, u32)], kind: &str) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, text, mode) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(text.len() as u64);
            header.set_mode(*mode);
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(1_700_000_000);
            header.set_cksum();
            builder
                .append_data(&mut header, path, text.as_bytes())
                .unwrap();
        }
        let raw = builder.into_inner().unwrap();
        match kind {
            "gz" => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(&raw).unwrap();
                e.finish().unwrap()
            }
            "zst" => zstd::encode_all(&raw[..], 1).unwrap(),
            _ => raw,
        }
    }

    fn sha(data: &[u8]) -> String {
        hex::encode(Sha256::digest(data))
    }

    #[test]
    fn every_compression_unpacks_once_by_sha256() {
        let tmp = tempfile::tempdir().unwrap();
        let app = tmp.path().join("app");
        std::fs::create_dir_all(&app).unwrap();
        let bases = tmp.path().join("bases");
        for kind in ["tar", "gz", "zst"] {
            let data = tarball(
                &[("bin/tool", "#!/bin/sh\n", 0o755), (kind, kind, 0o644)],
                kind,
            );
            let name = format!("base.{kind}");
            std::fs::write(app.join(&name), &data).unwrap();
            let base = ensure_base(&bases, &name, None, &app, Duration::from_secs(5)).unwrap();
            assert!(base.fetched);
            assert_eq!(base.sha256, sha(&data));
            assert_eq!(base.dir, bases.join(sha(&data)));
            assert_eq!(std::fs::read_to_string(base.dir.join(kind)).unwrap(), kind);
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(base.dir.join("bin/tool"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o755);
            assert!(base.dir.join("etc").is_dir());

            let pinned = Some(base.sha256.as_str());
            let again =
                ensure_base(&bases, "gone.tar", pinned, &app, Duration::from_secs(5)).unwrap();
            assert!(
                !again.fetched,
                "a pinned base that is there is not looked for"
            );
            assert_eq!(again.dir, base.dir);
        }
        let names: Vec<String> = std::fs::read_dir(&bases)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 3, "no temporary files are left: {names:?}");
    }

    #[test]
    fn a_wrong_sha256_or_a_bad_source_is_refused_and_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let app = tmp.path().join("app");
        std::fs::create_dir_all(&app).unwrap();
        let bases = tmp.path().join("bases");
        std::fs::write(app.join("b.tar"), tarball(&[("x", "x", 0o644)], "tar")).unwrap();
        let wrong = "0".repeat(64);
        let err =
            ensure_base(&bases, "b.tar", Some(&wrong), &app, Duration::from_secs(5)).unwrap_err();
        assert!(matches!(err, BaseError::Mismatch { .. }), "{err}");
        assert!(err.to_string().contains(&wrong), "{err}");
        assert_eq!(std::fs::read_dir(&bases).unwrap().count(), 0);

        for (source, says) in [
            ("../outside.tar", "stay inside it"),
            ("/etc/passwd", "stay inside it"),
            ("missing.tar", "is not a file in the app's repository"),
            ("file://relative.tar", "absolute path"),
            ("ftp://host/x.tar", "only http://"),
        ] {
            let err = ensure_base(&bases, source, None, &app, Duration::from_secs(5)).unwrap_err();
            assert!(err.to_string().contains(says), "{source}: {err}");
        }
        let err =
            ensure_base(&bases, "b.tar", Some("abc"), &app, Duration::from_secs(5)).unwrap_err();
        assert!(err.to_string().contains("64 hex digits"), "{err}");

        std::fs::write(app.join("junk.tar.gz"), [0x1f, 0x8b, 1, 2, 3]).unwrap();
        let err =
            ensure_base(&bases, "junk.tar.gz", None, &app, Duration::from_secs(5)).unwrap_err();
        assert!(matches!(err, BaseError::Unpack { .. }), "{err}");
        assert_eq!(
            std::fs::read_dir(&bases).unwrap().count(),
            0,
            "nothing half-unpacked is left"
        );
    }

    #[test]
    fn an_http_base_is_downloaded_once() {
        let tmp = tempfile::tempdir().unwrap();
        let bases = tmp.path().join("bases");
        let data = tarball(&[("etc/os-release", "ID=test\n", 0o644)], "gz");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let served = std::sync::Arc::new(AtomicU64::new(0));
        let (body, count) = (data.clone(), served.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let mut conn = conn.unwrap();
                let mut buf = [0u8; 2048];
                let n = conn.read(&mut buf).unwrap();
                let request = String::from_utf8_lossy(&buf[..n]).into_owned();
                if request.starts_with("GET /missing") {
                    let _ = conn.write_all(
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    );
                    continue;
                }
                count.fetch_add(1, Ordering::SeqCst);
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(head.as_bytes());
                let _ = conn.write_all(&body);
            }
        });
        let url = format!("http://{addr}/base.tar.gz");
        for _ in 0..2 {
            let base =
                ensure_base(&bases, &url, None, tmp.path(), Duration::from_secs(10)).unwrap();
            assert_eq!(base.sha256, sha(&data));
            assert_eq!(
                std::fs::read_to_string(base.dir.join("etc/os-release")).unwrap(),
                "ID=test\n"
            );
        }
        assert_eq!(served.load(Ordering::SeqCst), 1, "fetched once");
        let err = ensure_base(
            &bases,
            &format!("http://{addr}/missing.tar"),
            None,
            tmp.path(),
            Duration::from_secs(10),
        )
        .unwrap_err();
        assert!(err.to_string().contains("answered 404"), "{err}");
    }
}
