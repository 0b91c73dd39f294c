//! Tailing one growing file (a container's stdout/stderr, a build log) into the store.
//!
//! Exactly once across ship restarts: every stored record carries the file position after
//! its line (`"src":[inode,offset]`), and the position is also saved in
//! `<store>/.tail/<hash of path>.json` under the service's store lock right after each batch.
//! On start the newer of the two wins (by record time: offsets go down when a file is
//! truncated), so a batch stored just before a crash is neither lost nor stored again, and a
//! line torn by a crash is cut from the store and read again.
//!
//! Collected bytes are freed from the source file by punching holes in it (its size and
//! every offset stay the same, its disk blocks go): the app keeps appending to the same file
//! for as long as it runs, and the file never fills the disk. Reading the file by hand shows
//! NUL bytes where collected lines were; `starphleet logs` is the way to read them.
//!
//! When the store's disk is full, a poll's lines are dropped (counted by the store in
//! [`crate::StoreStats::dropped_records`]) and the tailer moves on past them rather than
//! retrying them forever; its position is saved again with the next batch that is stored,
//! and only bytes before a saved position are ever freed from the source.

use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::record::{now_ns, Record, RecordMeta};
use crate::store::{Batch, LogStore, Mark, SourceKey, StoreError};

/// Why a tailer could not read its file or store its lines.
#[derive(Debug, thiserror::Error)]
pub enum TailError {
    /// The tailed file (or the tailer's position directory) could not be opened or read.
    #[error("{action} {path}: {error}")]
    Io {
        /// What was being done, e.g. `reading`.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// What the system said.
        error: std::io::Error,
    },
    /// The lines read could not be stored (not for a full disk: those are dropped and
    /// counted); the tailer did not move on, so the next poll tries them again.
    #[error("storing lines of {path}: {error}")]
    Store {
        /// The tailed file.
        path: PathBuf,
        /// Why the store refused them.
        error: StoreError,
    },
}

/// Maps an I/O error to [`TailError::Io`] naming what was done to which path.
fn io_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> TailError + 'a {
    move |error| TailError::Io {
        action,
        path: path.to_path_buf(),
        error,
    }
}

/// Longest line kept whole; longer lines keep this many bytes plus [`TRUNCATED`].
pub const MAX_LINE_BYTES: usize = 16 * 1024;

/// Most bytes one tailer reads per poll, so one flooding source cannot starve the others.
pub const POLL_BYTES: usize = 256 * 1024;

/// Read buffers bigger than this are given back once a poll needs less.
const SCRATCH_KEEP: usize = 64 * 1024;

/// Appended to a line cut at [`MAX_LINE_BYTES`].
pub const TRUNCATED: &str = "…[truncated]";

/// Most bytes of encoded records per poll: short lines grow ~20x as JSON records, and a
/// batch must stay well under a segment.
const MAX_BATCH_BYTES: usize = 1 << 20;

/// Collected bytes are freed from the source once this many have piled up.
const PUNCH_EVERY: u64 = 1 << 20;

/// Hole punching works on whole file-system blocks; 4 KiB divides every common block size.
const BLOCK: u64 = 4096;

/// A tailer's saved position.
#[derive(Serialize, Deserialize)]
struct Position {
    path: PathBuf,
    ino: u64,
    offset: u64,
    skip: bool,
    /// Time of the last record stored, to tell which of this and a store mark is newer.
    #[serde(default)]
    time_ns: u64,
}

/// Tails one growing file into records of one source; see the module docs.
///
/// Each line's time is when [`Tailer::poll`] read it (the app does not timestamp its
/// output), made strictly increasing so the file's order survives any merge.
pub struct Tailer {
    store: LogStore,
    path: PathBuf,
    meta: RecordMeta,
    /// `"ship":…,"stream":…,"line":` — the JSON every line of this source shares.
    prefix: Vec<u8>,
    state_path: PathBuf,
    file: Option<File>,
    writable: bool,
    ino: u64,
    offset: u64,
    /// Inside an over-long line whose head was already stored: drop bytes up to its newline.
    skip: bool,
    punched: u64,
    last_ns: u64,
    /// Lines are being dropped for a full disk (logged once when it starts and ends).
    dropping: bool,
    buf: Vec<u8>,
    out: Vec<u8>,
}

/// What one poll did.
pub(crate) struct Polled {
    pub records: usize,
    /// It read a whole [`POLL_BYTES`] or filled a batch: more is probably waiting.
    pub full: bool,
    /// Lines were dropped because the store's disk is full: better not poll again at once.
    pub dropped: bool,
}

/// What storing one read did.
struct Stored {
    records: usize,
    /// Bytes of the read consumed (stored or dropped).
    consumed: usize,
    /// They were dropped: the store's disk is full.
    dropped: bool,
}

impl Tailer {
    /// Starts tailing `source` (which may not exist yet) from where the last tailer of the
    /// same file stopped, or from its beginning.
    pub fn new(
        store: &LogStore,
        source: impl Into<PathBuf>,
        meta: RecordMeta,
    ) -> Result<Self, TailError> {
        let path = source.into();
        let dir = store.dir().join(".tail");
        std::fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
        let digest = Sha256::digest(path.as_os_str().as_encoded_bytes());
        let state_path = dir.join(format!("{}.json", hex::encode(&digest[..16])));
        let saved: Option<Position> = std::fs::read(&state_path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .filter(|p: &Position| p.path == path);
        let mut t = Tailer {
            store: store.clone(),
            prefix: encode_prefix(&meta),
            path,
            meta,
            state_path,
            file: None,
            writable: false,
            ino: 0,
            offset: 0,
            skip: false,
            punched: 0,
            last_ns: 0,
            dropping: false,
            buf: Vec::new(),
            out: Vec::new(),
        };
        if t.open()? {
            if let Some(p) = saved.filter(|p| p.ino == t.ino) {
                (t.offset, t.skip, t.last_ns) = (p.offset, p.skip, p.time_ns);
            }
            // A batch stored just before a crash may be newer than the saved position.
            let key = t.source_key();
            if let Some(m) = store.take_recovered(&key).filter(|m| m.time_ns > t.last_ns) {
                (t.offset, t.skip, t.last_ns) = (m.off, m.skip, m.time_ns);
            }
            t.skip_holes();
        }
        Ok(t)
    }

    /// The file being tailed.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stamps lines read from now on with `version` (poll first: lines already in the file
    /// belong to the version before, e.g. in a build log shared by successive builds).
    pub fn set_version(&mut self, version: impl Into<String>) {
        self.meta.version = version.into();
        self.prefix = encode_prefix(&self.meta);
    }

    /// Reads up to [`POLL_BYTES`] of new complete lines and stores them; returns how many
    /// records were stored. A last line without its newline waits for it. Lines the store's
    /// full disk cannot take are dropped (and counted by the store), not returned as an error.
    pub fn poll(&mut self) -> Result<usize, TailError> {
        Ok(self.poll_once(false)?.records)
    }

    /// Collects everything left, including a last line without newline, and forgets the
    /// saved position: for a source that is finished (its container is gone) and is about to
    /// be deleted. Returns how many records were stored.
    pub fn close(mut self) -> Result<usize, TailError> {
        self.finish()
    }

    /// [`Tailer::close`] without giving up the tailer, so a failed attempt can be retried.
    pub(crate) fn finish(&mut self) -> Result<usize, TailError> {
        let mut records = 0;
        loop {
            let polled = self.poll_once(false)?;
            records += polled.records;
            if !polled.full {
                break;
            }
        }
        records += self.poll_once(true)?.records;
        match std::fs::remove_file(&self.state_path) {
            Err(e) if e.kind() != ErrorKind::NotFound => {
                Err(io_err("removing the tail position", &self.state_path)(e))
            }
            _ => Ok(records),
        }
    }

    /// One bounded read-and-store step; `flush` also takes a last line without newline.
    pub(crate) fn poll_once(&mut self, flush: bool) -> Result<Polled, TailError> {
        let idle = Polled {
            records: 0,
            full: false,
            dropped: false,
        };
        if self.file.is_none() && !self.open()? {
            return Ok(idle);
        }
        let file = self.file.as_ref().expect("opened above");
        let size = file
            .metadata()
            .map_err(io_err("checking", &self.path))?
            .len();
        if size < self.offset {
            tracing::warn!(
                "{} shrank from {} to {size} bytes: reading it again from the start",
                self.path.display(),
                self.offset
            );
            (self.offset, self.skip, self.punched) = (0, false, 0);
        }
        if size == self.offset {
            // Nothing new (a held last line would lie between offset and size).
            return self.at_end(flush);
        }
        let n = self.read(((size - self.offset) as usize).min(POLL_BYTES))?;
        let read_all = n == POLL_BYTES;
        let stored = self.store_lines(n, flush && !read_all)?;
        if self.buf.capacity() > SCRATCH_KEEP && n < SCRATCH_KEEP {
            // A burst is over: hundreds of quiet sources keep no big buffers.
            (self.buf, self.out) = (Vec::new(), Vec::new());
        }
        if stored.consumed == 0 && !read_all {
            // Nothing new but perhaps a held last line: was the file replaced meanwhile?
            return self.at_end(flush);
        }
        // Stopped short of what was read (batch full): more is waiting too.
        let full = read_all || stored.consumed < n;
        Ok(Polled {
            records: stored.records,
            full,
            dropped: stored.dropped,
        })
    }

    /// At the end of the file: a replaced file (new inode at the path) is finished off and the
    /// new one started from its beginning.
    fn at_end(&mut self, flush: bool) -> Result<Polled, TailError> {
        let idle = Polled {
            records: 0,
            full: false,
            dropped: false,
        };
        let replaced = match std::fs::metadata(&self.path) {
            Ok(m) => m.ino() != self.ino,
            Err(e) if e.kind() == ErrorKind::NotFound => false,
            Err(e) => return Err(io_err("checking", &self.path)(e)),
        };
        if !replaced {
            return Ok(idle);
        }
        // The old file gets no more lines: its unfinished last line (shorter than
        // MAX_LINE_BYTES, so one read holds it) is complete as it is.
        let n = self.read(POLL_BYTES)?;
        let finished = self.store_lines(n, true)?;
        tracing::info!("{} was replaced: tailing the new file", self.path.display());
        self.file = None;
        (self.offset, self.skip, self.punched) = (0, false, 0);
        if self.open()? {
            self.save_position();
        }
        let more = if flush { self.poll_once(true)? } else { idle };
        Ok(Polled {
            records: finished.records + more.records,
            full: false,
            dropped: finished.dropped || more.dropped,
        })
    }

    /// Opens the file at the path; false if there is none yet.
    fn open(&mut self) -> Result<bool, TailError> {
        // Read-write to free collected bytes; read-only if that is refused.
        let file = match OpenOptions::new().read(true).write(true).open(&self.path) {
            Ok(f) => Some((f, true)),
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            Err(_) => match File::open(&self.path) {
                Ok(f) => Some((f, false)),
                Err(e) if e.kind() == ErrorKind::NotFound => None,
                Err(e) => return Err(io_err("opening", &self.path)(e)),
            },
        };
        let Some((file, writable)) = file else {
            return Ok(false);
        };
        self.ino = file
            .metadata()
            .map_err(io_err("checking", &self.path))?
            .ino();
        self.writable = writable;
        self.file = Some(file);
        Ok(true)
    }

    /// If the position is in a punched-out hole (the saved position was lost while the store
    /// evicted the marks), jumps to the next data and drops the partial line there.
    fn skip_holes(&mut self) {
        let Some(file) = &self.file else {
            return;
        };
        // SAFETY: lseek on a valid fd has no memory-safety preconditions.
        let data = unsafe {
            libc::lseek(
                file.as_raw_fd(),
                self.offset as libc::off_t,
                libc::SEEK_DATA,
            )
        };
        if data > self.offset as libc::off_t {
            tracing::warn!(
                "{}: position {} is in already-collected space; resuming at {data}",
                self.path.display(),
                self.offset
            );
            (self.offset, self.skip) = (data as u64, true);
        }
    }

    /// Reads up to `max` (at most [`POLL_BYTES`]) from the position into `buf`.
    fn read(&mut self, max: usize) -> Result<usize, TailError> {
        let file = self.file.as_ref().expect("caller opened it");
        let max = max.min(POLL_BYTES);
        self.buf.resize(max, 0);
        let mut n = 0;
        while n < max {
            match file.read_at(&mut self.buf[n..], self.offset + n as u64) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(io_err("reading", &self.path)(e)),
            }
        }
        Ok(n)
    }

    /// Turns the first `n` bytes of `buf` into records, stores them and advances (also past
    /// lines dropped for a full disk).
    fn store_lines(&mut self, n: usize, flush: bool) -> Result<Stored, TailError> {
        let live = self.store.has_followers();
        let mut records = Vec::new();
        let now = now_ns();
        let (mut min_ns, mut max_ns, mut count) = (u64::MAX, 0, 0u64);
        let mut pos = 0;
        let mut skip = self.skip;
        self.out.clear();
        while pos < n && self.out.len() < MAX_BATCH_BYTES {
            let rest = &self.buf[pos..n];
            let newline = memchr::memchr(b'\n', rest);
            if skip {
                match newline {
                    Some(i) => {
                        pos += i + 1;
                        skip = false;
                        continue;
                    }
                    None => {
                        pos = n;
                        break;
                    }
                }
            }
            let (line, consumed, cut) = match newline {
                Some(i) => (&rest[..i], i + 1, i > MAX_LINE_BYTES),
                None if rest.len() > MAX_LINE_BYTES => (rest, rest.len(), true),
                None if flush => (rest, rest.len(), false),
                None => break,
            };
            pos += consumed;
            // The head of an over-long line is stored now; its tail is dropped up to its newline.
            skip = newline.is_none() && cut;
            let text = line_text(line, cut);
            let t = now.max(self.last_ns + 1);
            self.last_ns = t;
            (min_ns, max_ns) = (min_ns.min(t), max_ns.max(t));
            count += 1;
            let mark = Mark {
                off: self.offset + pos as u64,
                skip,
                time_ns: t,
            };
            encode_line(&mut self.out, &self.prefix, &text, self.ino, mark);
            if live {
                records.push(Record {
                    time_ns: t,
                    line: text.into_owned(),
                    ship: self.meta.ship.clone(),
                    service: self.meta.service.clone(),
                    version: self.meta.version.clone(),
                    container: self.meta.container.clone(),
                    kind: self.meta.kind,
                    stream: self.meta.stream.clone(),
                });
            }
        }
        if pos == 0 {
            return Ok(Stored {
                records: 0,
                consumed: 0,
                dropped: false,
            });
        }
        let new_offset = self.offset + pos as u64;
        let batch = Batch {
            service: &self.meta.service,
            data: &self.out,
            count,
            min_ns,
            max_ns,
        };
        let position = Position {
            path: self.path.clone(),
            ino: self.ino,
            offset: new_offset,
            skip,
            time_ns: self.last_ns,
        };
        let state_path = &self.state_path;
        match self.store.write(&batch, || save(state_path, &position)) {
            Ok(()) => {}
            Err(e) if e.is_disk_full() => {
                // Dropped and counted by the store: move on, or the same lines would be
                // retried for as long as the disk stays full. Their bytes are freed from the
                // source too, or the source would keep the disk full for good (a collector
                // restarted before a later save skips the hole: see `skip_holes`).
                if !self.dropping {
                    tracing::warn!(
                        "log store full: dropping lines of {} until there is room ({e})",
                        self.path.display()
                    );
                    self.dropping = true;
                }
                (self.offset, self.skip) = (new_offset, skip);
                self.punch();
                return Ok(Stored {
                    records: 0,
                    consumed: pos,
                    dropped: true,
                });
            }
            Err(error) => {
                return Err(TailError::Store {
                    path: self.path.clone(),
                    error,
                })
            }
        }
        if self.dropping {
            tracing::info!(
                "log store has room again: storing lines of {}",
                self.path.display()
            );
            self.dropping = false;
        }
        (self.offset, self.skip) = (new_offset, skip);
        self.store.publish(records.into_iter());
        self.punch();
        Ok(Stored {
            records: count as usize,
            consumed: pos,
            dropped: false,
        })
    }

    fn save_position(&self) {
        save(
            &self.state_path,
            &Position {
                path: self.path.clone(),
                ino: self.ino,
                offset: self.offset,
                skip: self.skip,
                time_ns: self.last_ns,
            },
        );
    }

    /// Frees the disk blocks of collected bytes (whole blocks only), keeping every offset.
    fn punch(&mut self) {
        let Some(file) = self.file.as_ref().filter(|_| self.writable) else {
            return;
        };
        let end = self.offset / BLOCK * BLOCK;
        if end < self.punched + PUNCH_EVERY {
            return;
        }
        // SAFETY: fallocate on a valid fd has no memory-safety preconditions.
        let rc = unsafe {
            libc::fallocate(
                file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                self.punched as libc::off_t,
                (end - self.punched) as libc::off_t,
            )
        };
        if rc == 0 {
            self.punched = end;
        } else {
            // The file system cannot do it: stop trying rather than fail every poll.
            tracing::warn!(
                "cannot free collected bytes of {}: {}",
                self.path.display(),
                std::io::Error::last_os_error()
            );
            self.writable = false;
        }
    }

    fn source_key(&self) -> SourceKey {
        SourceKey {
            service: self.meta.service.clone(),
            container: self.meta.container.clone(),
            stream: self.meta.stream.clone(),
            ino: self.ino,
        }
    }
}

/// Writes the position atomically (temp file + rename). A failure is only logged: the marks
/// in the store carry the same information.
fn save(path: &Path, position: &Position) {
    let tmp = path.with_extension("tmp");
    let result = serde_json::to_vec(position)
        .map_err(std::io::Error::from)
        .and_then(|json| std::fs::write(&tmp, json))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = result {
        tracing::warn!("saving tail position {}: {e}", path.display());
    }
}

/// A line's text: invalid UTF-8 replaced, cut at a character boundary with a marker.
fn line_text(line: &[u8], cut: bool) -> std::borrow::Cow<'_, str> {
    if !cut {
        return String::from_utf8_lossy(line);
    }
    let mut end = MAX_LINE_BYTES.min(line.len());
    // Back up over UTF-8 continuation bytes so no character is split.
    while end > 0 && end < line.len() && line[end] & 0xC0 == 0x80 {
        end -= 1;
    }
    let mut text = String::from_utf8_lossy(&line[..end]).into_owned();
    text.push_str(TRUNCATED);
    text.into()
}

/// The JSON of the fields every record of `meta` shares, ending just before the line.
fn encode_prefix(meta: &RecordMeta) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    for (key, value) in [
        ("ship", meta.ship.as_str()),
        ("service", &meta.service),
        ("version", &meta.version),
        ("container", &meta.container),
        ("kind", meta.kind.as_str()),
        ("stream", &meta.stream),
    ] {
        out.push(b'"');
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(b"\":");
        serde_json::to_writer(&mut out, value).expect("writing to a Vec cannot fail");
        out.push(b',');
    }
    out.extend_from_slice(b"\"line\":");
    out
}

/// One stored line: `{"time_ns":…,<prefix><line>,"src":[ino,off(,1)]}\n`.
fn encode_line(out: &mut Vec<u8>, prefix: &[u8], text: &str, ino: u64, mark: Mark) {
    let mut num = itoa::Buffer::new();
    out.extend_from_slice(b"{\"time_ns\":");
    out.extend_from_slice(num.format(mark.time_ns).as_bytes());
    out.push(b',');
    out.extend_from_slice(prefix);
    serde_json::to_writer(&mut *out, text).expect("writing to a Vec cannot fail");
    out.extend_from_slice(b",\"src\":[");
    out.extend_from_slice(num.format(ino).as_bytes());
    out.push(b',');
    out.extend_from_slice(num.format(mark.off).as_bytes());
    if mark.skip {
        out.extend_from_slice(b",1");
    }
    out.extend_from_slice(b"]}\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Kind;

    #[test]
    fn encoded_lines_are_records() {
        let meta = RecordMeta {
            ship: "s\"1".into(),
            service: "team/api".into(),
            version: "v1".into(),
            container: "c1".into(),
            kind: Kind::App,
            stream: "stdout".into(),
        };
        let mut out = Vec::new();
        let mark = Mark {
            off: 42,
            skip: true,
            time_ns: 7,
        };
        encode_line(&mut out, &encode_prefix(&meta), "hé \"x\"", 9, mark);
        assert!(out.ends_with(b",\"src\":[9,42,1]}\n"));
        let r: Record = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            r,
            Record {
                time_ns: 7,
                line: "hé \"x\"".into(),
                ..Record::now(&meta, "")
            }
        );
    }

    #[test]
    fn long_lines_are_cut_on_a_character_boundary() {
        let line = "é".repeat(MAX_LINE_BYTES);
        let text = line_text(line.as_bytes(), true);
        assert!(text.ends_with(TRUNCATED));
        let kept = text.strip_suffix(TRUNCATED).unwrap();
        assert!(kept.len() <= MAX_LINE_BYTES && kept.chars().all(|c| c == 'é'));
    }
}
