//! Reading files out of a headquarters checkout without ever leaving it.
//!
//! Anyone who can push to HQ controls its tree, and the ship reads it as root:
//! a symlink `shadow.orders -> /etc/shadow` must not make the ship quote
//! `/etc/shadow` in a diagnostic. So every path is opened one component at a
//! time relative to the previous folder's descriptor with `O_NOFOLLOW`, never
//! by name from the root, and only regular files of bounded size are read.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{fstatat, Mode, SFlag};

use crate::diagnostic::{quote, Diagnostic};

/// The largest file the ship reads from headquarters: 1 MiB. Orders and
/// settings are a few lines; anything bigger is a mistake, and every ship
/// reads HQ on every change.
pub const MAX_HQ_FILE_BYTES: u64 = 1 << 20;

/// How to fix a symlink where a file is read.
pub(crate) const SYMLINK_HELP: &str =
    "replace the symlink with the file itself; symlinks in headquarters are never followed";

/// How to fix a symlink found while searching for orders (to a file or a folder: not looked at).
pub(crate) const WALK_SYMLINK_HELP: &str =
    "replace the symlink with the file or folder itself; symlinks in headquarters are never followed";

/// The message of a symlink diagnostic.
pub(crate) const SYMLINK_MESSAGE: &str = "symlinks are not allowed in headquarters";

/// Flags for opening a folder inside HQ: a symlink in its place fails instead of being followed.
fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

/// Open the HQ root itself. It may be a symlink: that path is the operator's, not HQ content.
pub(crate) fn open_root(root: &Path) -> Result<OwnedFd, Diagnostic> {
    nix::fcntl::open(
        root,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| {
        Diagnostic::file(
            root,
            format!("cannot read headquarters folder: {}", io::Error::from(e)),
        )
    })
}

/// Open folder `name` inside `parent` without following a symlink; `rel` is its HQ path.
pub(crate) fn open_subdir(
    parent: BorrowedFd<'_>,
    name: &OsStr,
    rel: &Path,
) -> Result<OwnedFd, OpenDirError> {
    match openat(parent, name, dir_flags(), Mode::empty()) {
        Ok(fd) => Ok(fd),
        // O_DIRECTORY | O_NOFOLLOW on a symlink gives ENOTDIR (or ELOOP): look without following.
        Err(Errno::ENOTDIR | Errno::ELOOP) => match kind_at(parent, name) {
            Ok(Kind::Symlink) => Err(OpenDirError::Symlink(symlink_diagnostic(rel))),
            Ok(_) => Err(OpenDirError::NotADir),
            Err(e) => Err(OpenDirError::Io(e)),
        },
        Err(e) => Err(OpenDirError::Io(e)),
    }
}

/// Why a folder inside HQ could not be opened.
pub(crate) enum OpenDirError {
    /// It is a symlink: refused, with the diagnostic to show.
    Symlink(Diagnostic),
    /// Something other than a folder is there.
    NotADir,
    /// It does not exist or cannot be opened.
    Io(Errno),
}

/// What an entry is, without following it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    File,
    Dir,
    Symlink,
    /// FIFO, socket or device: never read.
    Other(&'static str),
}

/// `fstatat(AT_SYMLINK_NOFOLLOW)` of `name` in `dir`.
pub(crate) fn kind_at(dir: BorrowedFd<'_>, name: &OsStr) -> Result<Kind, Errno> {
    let st = fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW)?;
    Ok(kind_of_mode(st.st_mode))
}

/// Classify a `st_mode`.
fn kind_of_mode(mode: nix::libc::mode_t) -> Kind {
    match SFlag::from_bits_truncate(mode) & SFlag::S_IFMT {
        SFlag::S_IFREG => Kind::File,
        SFlag::S_IFDIR => Kind::Dir,
        SFlag::S_IFLNK => Kind::Symlink,
        SFlag::S_IFIFO => Kind::Other("a named pipe"),
        SFlag::S_IFSOCK => Kind::Other("a socket"),
        SFlag::S_IFCHR | SFlag::S_IFBLK => Kind::Other("a device"),
        _ => Kind::Other("an unknown kind of file"),
    }
}

/// The diagnostic for a symlink at `rel` (relative to HQ).
pub(crate) fn symlink_diagnostic(rel: &Path) -> Diagnostic {
    Diagnostic::file(rel, SYMLINK_MESSAGE).with_help(SYMLINK_HELP)
}

/// The diagnostic for a file over [`MAX_HQ_FILE_BYTES`]; `at_least` when it grew while read.
fn too_big(rel: &Path, size: u64, at_least: bool) -> Diagnostic {
    Diagnostic::file(
        rel,
        format!(
            "file is {}{size} bytes; headquarters files may be at most {MAX_HQ_FILE_BYTES} bytes (1 MiB)",
            if at_least { "at least " } else { "" }
        ),
    )
    .with_help(
        "orders and settings are a few lines each: check that the right file is committed under \
         this name, and keep anything large out of headquarters",
    )
}

/// The diagnostic for a FIFO, socket, device or folder where a file was expected.
fn not_regular(rel: &Path, what: &str) -> Diagnostic {
    Diagnostic::file(rel, format!("not a regular file ({what})"))
        .with_help("headquarters files must be plain files committed to git")
}

/// A `cannot read file` diagnostic.
fn cannot_read(rel: &Path, e: impl Into<io::Error>) -> Diagnostic {
    Diagnostic::file(rel, format!("cannot read file: {}", e.into()))
}

/// The components of `rel`, if it names something strictly inside the root.
fn inside_components(rel: &Path) -> Option<Vec<&OsStr>> {
    let parts: Option<Vec<&OsStr>> = rel
        .components()
        .map(|c| match c {
            Component::Normal(name) => Some(name),
            _ => None,
        })
        .collect();
    parts.filter(|p| !p.is_empty())
}

/// Open `rel` under the HQ root open at `root` and check it is a regular file of at most
/// [`MAX_HQ_FILE_BYTES`], without reading it: the file and its size, or `Ok(None)` if it
/// (or a folder above it) is absent.
fn open_beneath(root: BorrowedFd<'_>, rel: &Path) -> Result<Option<(File, u64)>, Diagnostic> {
    let Some(parts) = inside_components(rel) else {
        return Err(Diagnostic::file(
            rel,
            format!(
                "{} is not a path inside headquarters",
                quote(&rel.to_string_lossy())
            ),
        )
        .with_help("name a file relative to the headquarters root, without `..`"));
    };
    let (name, folders) = parts.split_last().expect("at least one component");
    let mut held: Option<OwnedFd> = None;
    let mut prefix = PathBuf::new();
    for folder in folders {
        prefix.push(folder);
        let parent = held.as_ref().map_or(root, |fd| fd.as_fd());
        match open_subdir(parent, folder, &prefix) {
            Ok(fd) => held = Some(fd),
            Err(OpenDirError::Symlink(d)) => {
                return Err(Diagnostic {
                    message: format!(
                        "{SYMLINK_MESSAGE}: cannot read {} through it",
                        quote(&rel.to_string_lossy())
                    ),
                    ..d
                })
            }
            // A file where a folder would be means the path does not exist.
            Err(OpenDirError::NotADir | OpenDirError::Io(Errno::ENOENT)) => return Ok(None),
            Err(OpenDirError::Io(e)) => return Err(cannot_read(rel, e)),
        }
    }
    let dir = held.as_ref().map_or(root, |fd| fd.as_fd());
    // Look first, so a FIFO or device is never even opened.
    match kind_at(dir, name) {
        Ok(Kind::File) => {}
        Ok(Kind::Symlink) => return Err(symlink_diagnostic(rel)),
        Ok(Kind::Dir) => return Err(not_regular(rel, "a folder")),
        Ok(Kind::Other(what)) => return Err(not_regular(rel, what)),
        Err(Errno::ENOENT) => return Ok(None),
        Err(e) => return Err(cannot_read(rel, e)),
    }
    // O_NOFOLLOW and O_NONBLOCK: if it was swapped for a symlink or a FIFO since, fail, do not wait.
    let flags = OFlag::O_RDONLY
        | OFlag::O_NOFOLLOW
        | OFlag::O_NONBLOCK
        | OFlag::O_NOCTTY
        | OFlag::O_CLOEXEC;
    let fd = match openat(dir, *name, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::ELOOP) => return Err(symlink_diagnostic(rel)),
        Err(Errno::ENOENT) => return Ok(None),
        Err(e) => return Err(cannot_read(rel, e)),
    };
    let file = File::from(fd);
    let meta = file.metadata().map_err(|e| cannot_read(rel, e))?;
    if !meta.is_file() {
        return Err(not_regular(rel, "it changed while being read"));
    }
    if meta.len() > MAX_HQ_FILE_BYTES {
        return Err(too_big(rel, meta.len(), false));
    }
    Ok(Some((file, meta.len())))
}

/// The size of `rel` under the HQ root open at `root`, checked as [`read_beneath`] would
/// check it but never read (for private keys); `Ok(None)` if it is absent.
pub(crate) fn size_beneath(root: BorrowedFd<'_>, rel: &Path) -> Result<Option<u64>, Diagnostic> {
    Ok(open_beneath(root, rel)?.map(|(_, size)| size))
}

/// Read `rel` under the HQ root open at `root`; `Ok(None)` if it (or a folder above it) is absent.
pub(crate) fn read_beneath(
    root: BorrowedFd<'_>,
    rel: &Path,
) -> Result<Option<Vec<u8>>, Diagnostic> {
    let Some((file, size)) = open_beneath(root, rel)? else {
        return Ok(None);
    };
    let mut bytes = Vec::with_capacity(size as usize);
    // One byte past the limit tells a file that grew since fstat from one that fits.
    file.take(MAX_HQ_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| cannot_read(rel, e))?;
    if bytes.len() as u64 > MAX_HQ_FILE_BYTES {
        return Err(too_big(rel, bytes.len() as u64, true));
    }
    Ok(Some(bytes))
}

/// Decode a file as UTF-8 text, or explain why not (pointing at the first bad byte).
fn decode_text(rel: &Path, bytes: Vec<u8>) -> Result<String, Diagnostic> {
    String::from_utf8(bytes).map_err(|e| {
        let bytes = e.as_bytes();
        let good = e.utf8_error().valid_up_to();
        let before = String::from_utf8_lossy(&bytes[..good]);
        let line_no = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        let rest = &bytes[good..];
        let line_end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
        let line = String::from_utf8_lossy(&bytes[..good + line_end]);
        let text = line[line_start..].trim_end_matches('\r').to_string();
        Diagnostic::at(
            rel,
            line_no,
            column,
            1,
            &text,
            format!("file is not valid UTF-8 (byte 0x{:02x})", bytes[good]),
        )
        .with_help("save the file as UTF-8 text")
    })
}

/// Read the bytes of `rel` (e.g. `certs/api.key`) from the HQ checkout at `root`, never
/// following a symlink in any component and refusing anything but a regular file of at
/// most [`MAX_HQ_FILE_BYTES`]. `Ok(None)` if it, or a folder above it, does not exist.
///
/// No diagnostic quotes the content, so this is the one to use for keys.
pub fn read_hq_bytes(root: &Path, rel: &Path) -> Result<Option<Vec<u8>>, Diagnostic> {
    let root = open_root(root)?;
    read_beneath(root.as_fd(), rel)
}

/// [`read_beneath`] as UTF-8 text.
pub(crate) fn read_text_beneath(
    root: BorrowedFd<'_>,
    rel: &Path,
) -> Result<Option<String>, Diagnostic> {
    read_beneath(root, rel)?
        .map(|bytes| decode_text(rel, bytes))
        .transpose()
}

/// [`read_hq_bytes`] as UTF-8 text (e.g. the `ships` file); invalid UTF-8 is a diagnostic
/// showing the offending line.
pub fn read_hq_file(root: &Path, rel: &Path) -> Result<Option<String>, Diagnostic> {
    let root = open_root(root)?;
    read_text_beneath(root.as_fd(), rel)
}
