//! The log store: `<dir>/<service>/<segment>.jsonl`, one JSON [`Record`] per line.
//!
//! Each service appends to its own active segment; a segment is sealed (renamed to carry the
//! time span of its records, `<id>.<min_ns>-<max_ns>.jsonl`) when the next batch would make
//! it exceed [`Limits::segment_bytes`]. Before a batch is written, the oldest segments are
//! deleted until the service and the whole store stay under their caps, so disk use never
//! goes over them. Segment ids are global and increasing, so "oldest" is one comparison.
//!
//! Each service has its own lock, taken for one batch at a time and never together with
//! another service's: a service that floods the store only ever waits for itself.
//!
//! A full disk (ENOSPC, EDQUOT) is survived: the store frees its oldest segment and tries
//! once more, then drops the batch (counted in [`StoreStats::dropped_records`], flagged in
//! [`StoreStats::disk_full`]) without leaving a torn line, and the next write that fits goes
//! in as usual.
//!
//! A directory is open in one store at a time, across processes and within one. Across
//! processes a POSIX record lock on `<dir>/.lock` (`fcntl(F_SETLK)`) excludes a second ship:
//! unlike `flock`, it belongs to the process, so a child forked by any thread (which holds
//! copies of every fd until it execs) never holds it and a store can be reopened at once.
//! Such a lock does not exclude the process itself, and closing any fd of the file releases
//! it, so a registry of the directories open in this process is checked first: the lock file
//! is only ever opened by the one store that holds it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::hash::{Hash, Hasher};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::record::{Kind, Record};

/// How many live records a slow follower may fall behind before it is told it missed some.
const LIVE_CAPACITY: usize = 16 * 1024;

/// Records this close before a follow started are checked against the backlog for doubles.
const FOLLOW_OVERLAP_NS: u64 = 10_000_000_000;

/// Why the store could not be opened, read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process (another ship on the same state dir) has the store open.
    #[error(
        "the log store {dir} is already open by {holder} (another ship on this state dir?): \
         stop that ship, or give this one its own state dir",
        holder = holder(.pid)
    )]
    Locked {
        /// The store's directory.
        dir: PathBuf,
        /// The process holding it, if it could be found.
        pid: Option<u32>,
    },
    /// This process has the store open already.
    #[error(
        "the log store {dir} is already open in this process: \
         share that LogStore (clones are cheap) instead of opening it again"
    )]
    AlreadyOpen {
        /// The store's directory.
        dir: PathBuf,
    },
    /// A file or directory of the store could not be created, read, renamed or removed.
    #[error("{action} {path}: {error}")]
    Io {
        /// What was being done, e.g. `creating`.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// What the system said.
        error: std::io::Error,
    },
    /// A batch of records could not be written; nothing of it was kept.
    #[error("writing {count} log records to {path}: {error}")]
    Write {
        /// Records in the batch.
        count: u64,
        /// The segment written to.
        path: PathBuf,
        /// What the system said.
        error: std::io::Error,
    },
}

impl StoreError {
    /// Whether the disk (or the user's quota) is full: such a batch is dropped and counted
    /// in [`StoreStats::dropped_records`], and writing resumes once there is room.
    pub fn is_disk_full(&self) -> bool {
        match self {
            StoreError::Io { error, .. } | StoreError::Write { error, .. } => {
                matches!(error.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
            }
            StoreError::Locked { .. } | StoreError::AlreadyOpen { .. } => false,
        }
    }
}

/// The holder of a lock, for [`StoreError::Locked`].
fn holder(pid: &Option<u32>) -> String {
    match pid {
        Some(pid) => format!("process {pid}"),
        None => "another process".into(),
    }
}

/// Maps an I/O error to [`StoreError::Io`] naming what was done to which path.
fn io_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |error| StoreError::Io {
        action,
        path: path.to_path_buf(),
        error,
    }
}

/// Size caps of the store (settings with defaults). A segment is clamped to half the service
/// cap; caps under a few MiB make little sense, as one tailer batch can be up to 1 MiB.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// A segment is sealed and a new one started past this size (default 8 MiB).
    pub segment_bytes: u64,
    /// Oldest segments of a service are deleted to keep it under this (default 64 MiB).
    pub service_bytes: u64,
    /// Oldest segments of any service are deleted to keep the store under this (default 1 GiB).
    pub total_bytes: u64,
    /// Oldest segments are deleted while the store's filesystem has less free than this, so
    /// logs never take the last of a disk the ship needs for state, builds and git (default
    /// `None`: 10 % of the filesystem, at most 64 MiB).
    pub keep_free_bytes: Option<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            segment_bytes: 8 << 20,
            service_bytes: 64 << 20,
            total_bytes: 1 << 30,
            keep_free_bytes: None,
        }
    }
}

/// How often the free space of the store's filesystem is looked at, at most.
const FREE_CHECK_EVERY_NS: u64 = 200_000_000;

/// (free bytes for unprivileged writers, total bytes) of the filesystem holding `dir`.
fn fs_space(dir: &Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs fills a struct we own from a valid NUL-terminated path.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    (unsafe { libc::statvfs(path.as_ptr(), &mut st) } == 0).then(|| {
        let unit = st.f_frsize as u64;
        (st.f_bavail as u64 * unit, st.f_blocks as u64 * unit)
    })
}

/// Which records a query returns; every field narrows it, `Default` matches everything.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Query {
    /// Only this service (`Some("")` = ship-wide events only).
    pub service: Option<String>,
    /// Only records at or after this UTC ns.
    pub since_ns: Option<u64>,
    /// Only records at or before this UTC ns.
    pub until_ns: Option<u64>,
    /// Only lines containing this text (case-sensitive, like grep -F).
    pub grep: Option<String>,
    /// Only this kind.
    pub kind: Option<Kind>,
    /// At most this many records: the newest ones.
    pub limit: Option<usize>,
}

impl Query {
    /// Whether `r` passes every filter but the limit.
    pub fn matches(&self, r: &Record) -> bool {
        self.service.as_ref().is_none_or(|s| *s == r.service)
            && self.kind.is_none_or(|k| k == r.kind)
            && self.since_ns.is_none_or(|t| r.time_ns >= t)
            && self.until_ns.is_none_or(|t| r.time_ns <= t)
            && self
                .grep
                .as_ref()
                .is_none_or(|g| r.line.contains(g.as_str()))
    }

    fn overlaps(&self, min_ns: u64, max_ns: u64) -> bool {
        self.since_ns.is_none_or(|t| max_ns >= t) && self.until_ns.is_none_or(|t| min_ns <= t)
    }
}

/// Counters for the ship's status and metrics.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Bytes of all segments.
    pub disk_bytes: u64,
    /// Bytes per service, sorted by service.
    pub service_bytes: Vec<(String, u64)>,
    /// Records written since the store was opened.
    pub records: u64,
    /// Batches that could not be written (disk full, I/O errors) since the store was opened.
    pub write_errors: u64,
    /// The most recent write error.
    pub last_error: Option<String>,
    /// Records dropped because the disk was full, since the store was opened.
    #[serde(default)]
    pub dropped_records: u64,
    /// The last write failed for a full disk (set by it, cleared by the next write that
    /// succeeds).
    #[serde(default)]
    pub disk_full: bool,
    /// The filesystem had less free space than the store keeps free at the last look, so old
    /// records were deleted to make room.
    #[serde(default)]
    pub space_low: bool,
}

/// The append-only, size-capped, per-service log store. Cheap to clone (shared); a directory
/// is open in one store at a time (a second [`LogStore::open`] of it fails, in this process
/// or another, until every clone of the first is dropped).
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    limits: Limits,
    services: RwLock<HashMap<String, Arc<Mutex<ServiceLog>>>>,
    next_id: AtomicU64,
    total: AtomicU64,
    records: AtomicU64,
    write_errors: AtomicU64,
    last_error: Mutex<Option<String>>,
    dropped_records: AtomicU64,
    disk_full: AtomicBool,
    /// When the filesystem's free space was last looked at (ns).
    free_checked_ns: AtomicU64,
    /// Bytes written since then.
    written_since_check: AtomicU64,
    /// The last look found less free space than the store keeps free.
    space_low: AtomicBool,
    live: broadcast::Sender<Record>,
    /// Where each source's last stored line ended, found in the active segments at open.
    recovered: Mutex<HashMap<SourceKey, Mark>>,
    /// Held while open: two writers would corrupt each other's segments. Last, so it is
    /// released after every segment file is closed.
    _lock: DirLock,
}

/// Store directories open in this process, by (device, inode): a POSIX record lock does not
/// exclude its own process.
static OPEN_DIRS: Mutex<Vec<(u64, u64)>> = Mutex::new(Vec::new());

/// A store directory held: listed in [`OPEN_DIRS`], and `<dir>/.lock` locked with
/// `fcntl(F_SETLK)` (owned by the process, so no forked child ever holds it).
struct DirLock {
    /// The locked file; closed before the directory leaves [`OPEN_DIRS`], since a later open
    /// of the same file must not find this fd (closing it would drop the new holder's lock).
    file: Option<File>,
    id: (u64, u64),
}

impl DirLock {
    /// Takes `dir` (which exists) for this store, or says who has it.
    fn take(dir: &Path) -> Result<DirLock, StoreError> {
        let meta = std::fs::metadata(dir).map_err(io_err("reading", dir))?;
        let id = (meta.dev(), meta.ino());
        {
            let mut open = lock(&OPEN_DIRS);
            if open.contains(&id) {
                // Checked before the lock file is opened: closing that fd again would release
                // the lock the open store holds.
                return Err(StoreError::AlreadyOpen {
                    dir: dir.to_path_buf(),
                });
            }
            open.push(id);
        }
        // The entry is ours from here on; dropping `held` releases it on every error path.
        let mut held = DirLock { file: None, id };
        let path = dir.join(".lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_err("opening", &path))?;
        let mut want = whole_file_lock(libc::F_WRLCK);
        // SAFETY: fcntl(F_SETLK) on a valid fd reads the flock struct it is given.
        if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLK, &want) } != 0 {
            let error = std::io::Error::last_os_error();
            if !matches!(error.raw_os_error(), Some(libc::EACCES | libc::EAGAIN)) {
                return Err(StoreError::Io {
                    action: "locking",
                    path,
                    error,
                });
            }
            // SAFETY: fcntl(F_GETLK) on a valid fd writes into the flock struct it is given.
            let found = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETLK, &mut want) } == 0;
            let pid = (found && want.l_type != libc::F_UNLCK as libc::c_short && want.l_pid > 0)
                .then_some(want.l_pid as u32);
            return Err(StoreError::Locked {
                dir: dir.to_path_buf(),
                pid,
            });
        }
        held.file = Some(file);
        Ok(held)
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        // Closing the fd releases the lock.
        drop(self.file.take());
        lock(&OPEN_DIRS).retain(|id| *id != self.id);
    }
}

/// A `struct flock` of `kind` covering the whole file.
fn whole_file_lock(kind: libc::c_int) -> libc::flock {
    // SAFETY: flock is plain old data; all-zero is a valid value (offset 0, length 0 = all).
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl
}

/// Identifies one tailed file's records in the store.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct SourceKey {
    pub service: String,
    pub container: String,
    pub stream: String,
    pub ino: u64,
}

/// A tailed file's position after one record: stored with the record (`"src":[ino,off]`,
/// `[ino,off,1]` while skipping the rest of an over-long line).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Mark {
    pub off: u64,
    pub skip: bool,
    /// The record's time: the latest mark wins (offsets go down when a file is truncated).
    pub time_ns: u64,
}

/// One service's segments, oldest first; the last is the active one while `active` is set.
struct ServiceLog {
    dir: PathBuf,
    segments: VecDeque<Segment>,
    active: Option<File>,
    bytes: u64,
}

#[derive(Clone, Debug)]
struct Segment {
    id: u64,
    path: PathBuf,
    bytes: u64,
    min_ns: u64,
    max_ns: u64,
}

/// What is written in one go: whole JSON lines of one service.
pub(crate) struct Batch<'a> {
    pub service: &'a str,
    pub data: &'a [u8],
    pub count: u64,
    pub min_ns: u64,
    pub max_ns: u64,
}

/// The fields of a stored line that recovery needs.
#[derive(Deserialize)]
struct ScanLine {
    time_ns: u64,
    #[serde(default)]
    container: String,
    #[serde(default)]
    stream: String,
    #[serde(default)]
    src: Option<Vec<u64>>,
}

impl LogStore {
    /// Opens (creating) the store at `dir`: finds its segments, repairs a line torn by a crash
    /// at the end of each active segment, and recovers where each tailed source stopped.
    /// Fails with [`StoreError::Locked`] or [`StoreError::AlreadyOpen`] while another store
    /// has the directory open.
    pub fn open(dir: &Path, limits: Limits) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
        let dir_lock = DirLock::take(dir)?;
        let limits =
            Limits {
                // A segment must fit at least twice in the service cap, and a service in the total.
                service_bytes: limits.service_bytes.min(limits.total_bytes),
                segment_bytes: limits
                    .segment_bytes
                    .min(limits.service_bytes.min(limits.total_bytes) / 2)
                    .max(1),
                total_bytes: limits.total_bytes,
                keep_free_bytes: Some(limits.keep_free_bytes.unwrap_or_else(|| {
                    fs_space(dir).map_or(0, |(_, size)| (size / 10).min(64 << 20))
                })),
            };
        let mut services = HashMap::new();
        let mut recovered = HashMap::new();
        let mut max_id = 0;
        let mut total = 0;
        for entry in std::fs::read_dir(dir).map_err(io_err("reading", dir))? {
            let entry = entry.map_err(io_err("reading", dir))?;
            let name = entry.file_name();
            let Some(service) = name.to_str().and_then(unescape) else {
                continue;
            };
            let path = entry.path();
            if !entry
                .file_type()
                .map_err(io_err("reading", &path))?
                .is_dir()
            {
                continue;
            }
            let log = ServiceLog::open(&path, &service, &mut recovered)?;
            max_id = max_id.max(log.segments.back().map_or(0, |s| s.id));
            total += log.bytes;
            services.insert(service, Arc::new(Mutex::new(log)));
        }
        Ok(LogStore {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                limits,
                services: RwLock::new(services),
                next_id: AtomicU64::new(max_id + 1),
                total: AtomicU64::new(total),
                records: AtomicU64::new(0),
                write_errors: AtomicU64::new(0),
                last_error: Mutex::new(None),
                dropped_records: AtomicU64::new(0),
                disk_full: AtomicBool::new(false),
                free_checked_ns: AtomicU64::new(0),
                written_since_check: AtomicU64::new(0),
                space_low: AtomicBool::new(false),
                live: broadcast::channel(LIVE_CAPACITY).0,
                recovered: Mutex::new(recovered),
                _lock: dir_lock,
            }),
        })
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Appends records, each to its service; a service's records go in as one batch.
    ///
    /// A failed write is counted in [`StoreStats`] and returned, never a panic: the other
    /// services' batches are still written, and nothing half-written is left. A batch that
    /// did not fit a full disk is dropped and counted (see [`StoreError::is_disk_full`]).
    pub fn append(&self, records: &[Record]) -> Result<(), StoreError> {
        let mut order: Vec<&str> = Vec::new();
        for r in records {
            if !order.contains(&r.service.as_str()) {
                order.push(&r.service);
            }
        }
        let mut first_error = None;
        let mut data = Vec::new();
        for service in order {
            data.clear();
            let (mut min_ns, mut max_ns, mut count) = (u64::MAX, 0, 0);
            for r in records.iter().filter(|r| r.service == service) {
                let written = if r.line.len() > crate::MAX_LINE_BYTES {
                    serde_json::to_writer(&mut data, &capped(r))
                } else {
                    serde_json::to_writer(&mut data, r)
                };
                written.expect("a record of strings and numbers always serialises to a Vec");
                data.push(b'\n');
                min_ns = min_ns.min(r.time_ns);
                max_ns = max_ns.max(r.time_ns);
                count += 1;
            }
            let batch = Batch {
                service,
                data: &data,
                count,
                min_ns,
                max_ns,
            };
            match self.write(&batch, || ()) {
                Ok(()) => self.publish(records.iter().filter(|r| r.service == service).map(|r| {
                    if r.line.len() > crate::MAX_LINE_BYTES {
                        capped(r)
                    } else {
                        r.clone()
                    }
                })),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Live records as they are stored, for following; see also [`LogStore::follow`].
    pub fn subscribe(&self) -> broadcast::Receiver<Record> {
        self.inner.live.subscribe()
    }

    /// Bytes of all segments on disk.
    pub fn disk_usage(&self) -> u64 {
        self.inner.total.load(Ordering::Relaxed)
    }

    /// Counters and per-service sizes.
    pub fn stats(&self) -> StoreStats {
        let mut service_bytes: Vec<(String, u64)> = self
            .service_logs()
            .into_iter()
            .map(|(name, log)| (name, lock(&log).bytes))
            .collect();
        service_bytes.sort();
        StoreStats {
            disk_bytes: self.disk_usage(),
            service_bytes,
            records: self.inner.records.load(Ordering::Relaxed),
            write_errors: self.inner.write_errors.load(Ordering::Relaxed),
            last_error: lock(&self.inner.last_error).clone(),
            dropped_records: self.inner.dropped_records.load(Ordering::Relaxed),
            disk_full: self.inner.disk_full.load(Ordering::Relaxed),
            space_low: self.inner.space_low.load(Ordering::Relaxed),
        }
    }

    /// Closes `service`'s open segment (sealing it), so a removed service holds no file
    /// open; its records stay queryable and under the caps, and a later write to it starts
    /// a new segment. Nothing happens for a service without an open segment.
    pub fn close_service(&self, service: &str) {
        let Some(log) = self
            .inner
            .services
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(service)
            .cloned()
        else {
            return;
        };
        let mut log = lock(&log);
        if log.active.take().is_some() {
            if let Some(seg) = log.segments.back_mut() {
                if let Err(e) = seal(seg) {
                    // Still closed; reopening the store seals it.
                    tracing::warn!("closing the log of {service:?}: {e}");
                }
            }
        }
    }

    /// Records matching `q`, merged across the service's containers and versions (or across
    /// all services) in time order, newest last; with a limit, the newest `limit`.
    pub fn query(&self, q: &Query) -> Result<Vec<Record>, StoreError> {
        let mut segments: Vec<(String, Segment)> = Vec::new();
        for (name, log) in self.service_logs() {
            if q.service.as_ref().is_some_and(|s| *s != name) {
                continue;
            }
            let log = lock(&log);
            segments.extend(
                log.segments
                    .iter()
                    .filter(|s| s.bytes > 0 && q.overlaps(s.min_ns, s.max_ns))
                    .map(|s| (name.clone(), s.clone())),
            );
        }
        // Newest spans first, so a limited query can stop once older segments cannot matter.
        segments.sort_by_key(|s| std::cmp::Reverse(s.1.max_ns));
        let needle = q.grep.as_deref().filter(|g| !needs_json_escape(g));
        let mut found: Vec<(u64, u64, usize, Record)> = Vec::new();
        for (service, seg) in segments {
            if let Some(limit) = q.limit {
                if limit == 0 {
                    break;
                }
                if found.len() >= limit {
                    let mut times: Vec<u64> = found.iter().map(|f| f.0).collect();
                    let kth = times.len() - limit;
                    let (_, threshold, _) = times.select_nth_unstable(kth);
                    if seg.max_ns < *threshold {
                        break;
                    }
                }
            }
            let Some(data) = self.read_segment(&service, &seg)? else {
                continue;
            };
            for (i, raw) in data.split(|&b| b == b'\n').enumerate() {
                if raw.is_empty()
                    || needle.is_some_and(|n| memchr::memmem::find(raw, n.as_bytes()).is_none())
                {
                    continue;
                }
                // A line that does not parse was torn by a crash or a full disk: skip it.
                let Ok(r) = serde_json::from_slice::<Record>(raw) else {
                    continue;
                };
                if q.matches(&r) {
                    found.push((r.time_ns, seg.id, i, r));
                }
            }
        }
        found.sort_unstable_by_key(|f| (f.0, f.1, f.2));
        let skip = q.limit.map_or(0, |l| found.len().saturating_sub(l));
        Ok(found.into_iter().skip(skip).map(|f| f.3).collect())
    }

    /// The stored records matching `q` and, after them, every new one: nothing in between is
    /// lost, and a record is never both in the backlog and followed.
    pub fn follow(&self, q: &Query) -> Result<(Vec<Record>, Follow), StoreError> {
        // Subscribe before querying, so a record stored in between is in at least one of them.
        let live = self.subscribe();
        let start = crate::now_ns().saturating_sub(FOLLOW_OVERLAP_NS);
        let backlog = self.query(q)?;
        let seen = backlog
            .iter()
            .filter(|r| r.time_ns >= start)
            .map(record_hash)
            .collect();
        let filter = Query {
            limit: None,
            ..q.clone()
        };
        Ok((backlog, Follow { live, filter, seen }))
    }

    /// Writes one batch under its service's lock, after making room under the caps; `after`
    /// runs under the same lock once the batch is written (a tailer saves its offset there, so
    /// no other writer can seal the segment between the two). A batch that fails for a full
    /// disk even after the oldest segment was freed is dropped and counted.
    pub(crate) fn write(&self, batch: &Batch, after: impl FnOnce()) -> Result<(), StoreError> {
        if batch.data.is_empty() {
            after();
            return Ok(());
        }
        let len = batch.data.len() as u64;
        let mut result = Ok(());
        // A full disk frees the store's oldest segment and tries once more.
        for attempt in 0..2 {
            if attempt == 1 && !self.evict_oldest() {
                break;
            }
            self.make_room(len);
            result = self
                .service_log(batch.service)
                .and_then(|log| lock(&log).write(&self.inner, batch));
            match &result {
                Ok(()) => {
                    self.inner.records.fetch_add(batch.count, Ordering::Relaxed);
                    self.inner.disk_full.store(false, Ordering::Relaxed);
                    after();
                    return Ok(());
                }
                Err(e) if !e.is_disk_full() => break,
                Err(_) => {}
            }
        }
        let err = result.expect_err("only failures get here");
        self.inner.write_errors.fetch_add(1, Ordering::Relaxed);
        if err.is_disk_full() {
            self.inner
                .dropped_records
                .fetch_add(batch.count, Ordering::Relaxed);
            self.inner.disk_full.store(true, Ordering::Relaxed);
        }
        *lock(&self.inner.last_error) = Some(err.to_string());
        Err(err)
    }

    /// Whether anyone follows live records (building them is skipped otherwise).
    pub(crate) fn has_followers(&self) -> bool {
        self.inner.live.receiver_count() > 0
    }

    /// Sends stored records to followers.
    pub(crate) fn publish(&self, records: impl Iterator<Item = Record>) {
        if self.has_followers() {
            for r in records {
                // No receiver left is not an error: nobody is following.
                let _ = self.inner.live.send(r);
            }
        }
    }

    /// Where the store last saw `key` end, from the active segments at open (consumed).
    pub(crate) fn take_recovered(&self, key: &SourceKey) -> Option<Mark> {
        lock(&self.inner.recovered).remove(key)
    }

    fn service_logs(&self) -> Vec<(String, Arc<Mutex<ServiceLog>>)> {
        let map = self
            .inner
            .services
            .read()
            .unwrap_or_else(|p| p.into_inner());
        map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    fn service_log(&self, service: &str) -> Result<Arc<Mutex<ServiceLog>>, StoreError> {
        if let Some(log) = self
            .inner
            .services
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(service)
        {
            return Ok(log.clone());
        }
        let dir = self.inner.dir.join(escape(service));
        std::fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
        let mut map = self
            .inner
            .services
            .write()
            .unwrap_or_else(|p| p.into_inner());
        Ok(map
            .entry(service.to_string())
            .or_insert_with(|| {
                Arc::new(Mutex::new(ServiceLog {
                    dir,
                    segments: VecDeque::new(),
                    active: None,
                    bytes: 0,
                }))
            })
            .clone())
    }

    /// Deletes the store's oldest segments until `incoming` more bytes fit the total cap, and
    /// while the filesystem has less free space than the store keeps free.
    fn make_room(&self, incoming: u64) {
        while self.inner.total.load(Ordering::Relaxed) + incoming > self.inner.limits.total_bytes {
            if !self.evict_oldest() {
                break;
            }
        }
        let keep = self.inner.limits.keep_free_bytes.unwrap_or(0);
        if keep == 0 {
            return;
        }
        // Looked at every 200 ms, and whenever a quarter of the reserve was written since.
        let written = self
            .inner
            .written_since_check
            .fetch_add(incoming, Ordering::Relaxed)
            + incoming;
        let now = crate::now_ns();
        let last = self.inner.free_checked_ns.load(Ordering::Relaxed);
        if (now.saturating_sub(last) < FREE_CHECK_EVERY_NS && written < keep / 4)
            || self
                .inner
                .free_checked_ns
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        self.inner.written_since_check.store(0, Ordering::Relaxed);
        let mut low = false;
        while fs_space(&self.inner.dir).is_some_and(|(free, _)| free < keep + incoming) {
            low = true;
            if !self.evict_oldest() {
                break;
            }
        }
        self.inner.space_low.store(low, Ordering::Relaxed);
    }

    /// Deletes the oldest segment of the whole store (locking one service at a time);
    /// false when there is none.
    fn evict_oldest(&self) -> bool {
        let logs = self.service_logs();
        let oldest = logs
            .iter()
            .filter_map(|(_, log)| lock(log).segments.front().map(|s| (s.id, log)))
            .min_by_key(|(id, _)| *id);
        let Some((id, log)) = oldest else {
            return false;
        };
        let mut log = lock(log);
        // Another writer may have evicted it meanwhile; either way progress was made.
        if log.segments.front().is_some_and(|s| s.id == id) {
            log.evict_front(&self.inner);
        }
        true
    }

    /// The first `bytes` of a segment (all complete lines at snapshot time); `None` if the
    /// segment was deleted meanwhile.
    fn read_segment(&self, service: &str, seg: &Segment) -> Result<Option<Vec<u8>>, StoreError> {
        let mut path = seg.path.clone();
        for _ in 0..2 {
            match File::open(&path) {
                Ok(f) => {
                    let mut data = Vec::with_capacity(seg.bytes as usize);
                    f.take(seg.bytes)
                        .read_to_end(&mut data)
                        .map_err(io_err("reading", &path))?;
                    return Ok(Some(data));
                }
                // Sealed (renamed) or evicted since the snapshot: look it up again.
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    let Some(log) = self.service_logs().into_iter().find(|(n, _)| n == service)
                    else {
                        return Ok(None);
                    };
                    let moved = lock(&log.1)
                        .segments
                        .iter()
                        .find(|s| s.id == seg.id)
                        .map(|s| s.path.clone());
                    match moved {
                        Some(p) => path = p,
                        None => return Ok(None),
                    }
                }
                Err(e) => return Err(io_err("reading", &path)(e)),
            }
        }
        Ok(None)
    }
}

/// Live records after a [`LogStore::follow`] backlog.
pub struct Follow {
    live: broadcast::Receiver<Record>,
    filter: Query,
    seen: HashSet<u64>,
}

/// What following yields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Followed {
    /// The next matching record.
    Record(Record),
    /// The follower fell this many records behind and they were skipped (say so to the user).
    Missed(u64),
}

impl Follow {
    /// The next matching record, or `None` once the store is gone.
    pub async fn next(&mut self) -> Option<Followed> {
        loop {
            match self.live.recv().await {
                Ok(r) => {
                    if !self.filter.matches(&r)
                        || (!self.seen.is_empty() && self.seen.remove(&record_hash(&r)))
                    {
                        continue;
                    }
                    return Some(Followed::Record(r));
                }
                Err(broadcast::error::RecvError::Lagged(n)) => return Some(Followed::Missed(n)),
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

/// `r` with its line cut to [`crate::MAX_LINE_BYTES`] and marked, as tailed lines are.
fn capped(r: &Record) -> Record {
    let mut end = crate::MAX_LINE_BYTES;
    while !r.line.is_char_boundary(end) {
        end -= 1;
    }
    Record {
        line: format!("{}{}", &r.line[..end], crate::TRUNCATED),
        ..r.clone()
    }
}

fn record_hash(r: &Record) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    r.hash(&mut h);
    h.finish()
}

impl ServiceLog {
    /// Loads a service dir: sorts its segments, seals all but the newest unsealed one, and
    /// scans unsealed ones for their time span, torn tails and tailer marks.
    fn open(
        dir: &Path,
        service: &str,
        recovered: &mut HashMap<SourceKey, Mark>,
    ) -> Result<Self, StoreError> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io_err("reading", dir))? {
            let entry = entry.map_err(io_err("reading", dir))?;
            let name = entry.file_name();
            if let Some((id, span)) = name.to_str().and_then(parse_segment_name) {
                let path = entry.path();
                let len = entry.metadata().map_err(io_err("reading", &path))?.len();
                found.push((id, span, path, len));
            }
        }
        found.sort_by_key(|f| f.0);
        let last = found.len().saturating_sub(1);
        let mut log = ServiceLog {
            dir: dir.to_path_buf(),
            segments: VecDeque::new(),
            active: None,
            bytes: 0,
        };
        for (i, (id, span, path, bytes)) in found.into_iter().enumerate() {
            let mut seg = Segment {
                id,
                path,
                bytes,
                min_ns: 0,
                max_ns: 0,
            };
            match span {
                Some((min, max)) => (seg.min_ns, seg.max_ns) = (min, max),
                None => {
                    scan_unsealed(&mut seg, service, recovered)?;
                    if seg.bytes == 0 {
                        std::fs::remove_file(&seg.path).map_err(io_err("removing", &seg.path))?;
                        continue;
                    }
                    if i == last {
                        log.active = Some(open_append(&seg.path)?);
                    } else {
                        seal(&mut seg)?;
                    }
                }
            }
            log.bytes += seg.bytes;
            log.segments.push_back(seg);
        }
        Ok(log)
    }

    fn write(&mut self, inner: &Inner, batch: &Batch) -> Result<(), StoreError> {
        let len = batch.data.len() as u64;
        while self.bytes + len > inner.limits.service_bytes && !self.segments.is_empty() {
            self.evict_front(inner);
        }
        if self.active.is_some() {
            let seg = self
                .segments
                .back_mut()
                .expect("an active segment is listed");
            if seg.bytes + len > inner.limits.segment_bytes {
                self.active = None;
                seal(seg)?;
            }
        }
        if self.active.is_none() {
            let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
            let path = self.dir.join(format!("{id:016}.jsonl"));
            self.active = Some(open_append(&path)?);
            self.segments.push_back(Segment {
                id,
                path,
                bytes: 0,
                min_ns: u64::MAX,
                max_ns: 0,
            });
        }
        let file = self.active.as_mut().expect("just opened");
        let seg = self.segments.back_mut().expect("just pushed");
        if let Err(error) = file.write_all(batch.data) {
            // Cut off whatever part did get written, so no torn line is left behind.
            if let Err(e) = file.set_len(seg.bytes) {
                // Never append after a torn line: later batches go to a new segment, and
                // queries read only the `bytes` known to be whole.
                tracing::warn!(
                    "cannot cut a failed write off {} ({e}): starting a new segment",
                    seg.path.display()
                );
                self.active = None;
            }
            return Err(StoreError::Write {
                count: batch.count,
                path: seg.path.clone(),
                error,
            });
        }
        seg.bytes += len;
        seg.min_ns = seg.min_ns.min(batch.min_ns);
        seg.max_ns = seg.max_ns.max(batch.max_ns);
        self.bytes += len;
        inner.total.fetch_add(len, Ordering::Relaxed);
        Ok(())
    }

    /// Deletes the oldest segment (the active one too, if it is the only one left).
    fn evict_front(&mut self, inner: &Inner) {
        let Some(seg) = self.segments.pop_front() else {
            return;
        };
        if self.segments.is_empty() {
            self.active = None;
        }
        if let Err(e) = std::fs::remove_file(&seg.path) {
            if e.kind() != ErrorKind::NotFound {
                tracing::warn!("deleting log segment {}: {e}", seg.path.display());
            }
        }
        self.bytes -= seg.bytes;
        inner.total.fetch_sub(seg.bytes, Ordering::Relaxed);
    }
}

/// Reads an unsealed segment: cuts a torn last line, finds its time span and the last mark
/// of each tailed source in it.
fn scan_unsealed(
    seg: &mut Segment,
    service: &str,
    recovered: &mut HashMap<SourceKey, Mark>,
) -> Result<(), StoreError> {
    let data = std::fs::read(&seg.path).map_err(io_err("reading", &seg.path))?;
    let complete = data.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    if complete < data.len() {
        tracing::warn!(
            "cutting a torn last line ({} bytes) from {}",
            data.len() - complete,
            seg.path.display()
        );
        OpenOptions::new()
            .write(true)
            .open(&seg.path)
            .and_then(|f| f.set_len(complete as u64))
            .map_err(io_err("cutting a torn line off", &seg.path))?;
    }
    seg.bytes = complete as u64;
    (seg.min_ns, seg.max_ns) = (u64::MAX, 0);
    for raw in data[..complete].split(|&b| b == b'\n') {
        let Ok(line) = serde_json::from_slice::<ScanLine>(raw) else {
            continue;
        };
        seg.min_ns = seg.min_ns.min(line.time_ns);
        seg.max_ns = seg.max_ns.max(line.time_ns);
        if let Some([ino, off, rest @ ..]) = line.src.as_deref() {
            let key = SourceKey {
                service: service.to_string(),
                container: line.container,
                stream: line.stream,
                ino: *ino,
            };
            let mark = Mark {
                off: *off,
                skip: rest.first() == Some(&1),
                time_ns: line.time_ns,
            };
            let e = recovered.entry(key).or_insert(mark);
            if mark.time_ns >= e.time_ns {
                *e = mark;
            }
        }
    }
    Ok(())
}

/// Renames a segment to carry its time span, so later queries can skip it without reading.
fn seal(seg: &mut Segment) -> Result<(), StoreError> {
    if seg.bytes == 0 {
        return Ok(());
    }
    let sealed = seg.path.with_file_name(format!(
        "{:016}.{}-{}.jsonl",
        seg.id, seg.min_ns, seg.max_ns
    ));
    std::fs::rename(&seg.path, &sealed).map_err(io_err("sealing", &seg.path))?;
    seg.path = sealed;
    Ok(())
}

fn open_append(path: &Path) -> Result<File, StoreError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io_err("opening", path))
}

/// `<id>.jsonl` (active, span unknown) or `<id>.<min>-<max>.jsonl` (sealed).
fn parse_segment_name(name: &str) -> Option<(u64, Option<(u64, u64)>)> {
    let stem = name.strip_suffix(".jsonl")?;
    let (id, span) = match stem.split_once('.') {
        Some((id, span)) => {
            let (min, max) = span.split_once('-')?;
            (id, Some((min.parse().ok()?, max.parse().ok()?)))
        }
        None => (stem, None),
    };
    Some((id.parse().ok()?, span))
}

/// A service name as one safe directory name: `[A-Za-z0-9-]` and non-leading `.` kept,
/// every other byte `_XX`; the empty (ship-wide) service is `_`.
pub(crate) fn escape(service: &str) -> String {
    if service.is_empty() {
        return "_".into();
    }
    let mut out = String::with_capacity(service.len());
    for (i, b) in service.bytes().enumerate() {
        if b.is_ascii_alphanumeric() || b == b'-' || (b == b'.' && i > 0) {
            out.push(b as char);
        } else {
            out.push_str(&format!("_{b:02X}"));
        }
    }
    out
}

/// The inverse of [`escape`]; `None` for names it never makes (e.g. `.tail`).
fn unescape(name: &str) -> Option<String> {
    if name == "_" {
        return Some(String::new());
    }
    if name.is_empty() || name.starts_with('.') {
        return None;
    }
    let mut out = Vec::with_capacity(name.len());
    let mut bytes = name.bytes();
    while let Some(b) = bytes.next() {
        if b == b'_' {
            let hex = [bytes.next()?, bytes.next()?];
            out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).ok()
}

/// Whether `text` would look different inside a JSON string (so raw bytes can't prefilter).
fn needs_json_escape(text: &str) -> bool {
    text.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names_escape_to_one_safe_dir_and_back() {
        for name in ["echo", "team/api", "", "_x", ".hidden", "a.b", "ü", ".."] {
            let e = escape(name);
            assert!(
                !e.contains('/') && !e.starts_with('.') && !e.is_empty(),
                "{e}"
            );
            assert_eq!(unescape(&e).as_deref(), Some(name), "{e}");
        }
        assert_eq!(escape("team/api"), "team_2Fapi");
        assert_eq!(unescape(".tail"), None);
        assert_eq!(unescape("bad_Z"), None);
    }

    #[test]
    fn segment_names_round_trip() {
        assert_eq!(
            parse_segment_name("0000000000000007.jsonl"),
            Some((7, None))
        );
        assert_eq!(
            parse_segment_name("0000000000000007.10-20.jsonl"),
            Some((7, Some((10, 20))))
        );
        assert_eq!(parse_segment_name("7.tmp"), None);
    }
}
