//! The log store on real files: queries, rotation under caps, reopening after a crash,
//! following, a really full disk (a tiny tmpfs), one store per directory across processes
//! (and never held by a forked child), and closing a removed service's files.

mod common;

use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{open_fds_under, Tmpfs};
use starphleet_telemetry::{
    Followed, Kind, Limits, LogStore, Query, Record, StoreError, MAX_LINE_BYTES, TRUNCATED,
};

fn rec(t: u64, service: &str, container: &str, kind: Kind, line: &str) -> Record {
    Record {
        time_ns: t,
        ship: "ship1".into(),
        service: service.into(),
        version: "abc123-r1".into(),
        container: container.into(),
        kind,
        stream: match kind {
            Kind::App => "stdout",
            Kind::Build => "build",
            Kind::Access => "access",
            Kind::Ship => "event",
            Kind::Health => "health",
        }
        .into(),
        line: line.into(),
    }
}

fn lines(records: &[Record]) -> Vec<&str> {
    records.iter().map(|r| r.line.as_str()).collect()
}

/// Bytes of all regular files under `dir` (what the disk really holds).
fn bytes_on_disk(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        if meta.is_dir() {
            if entry.file_name() != ".tail" {
                total += bytes_on_disk(&entry.path());
            }
        } else {
            total += meta.len();
        }
    }
    total
}

#[test]
fn queries_filter_and_merge_sources_in_time_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::open(dir.path(), Limits::default()).unwrap();
    // Two containers (old and new version) of one service, written out of time order.
    store
        .append(&[
            rec(10, "echo", "c-old", Kind::App, "old 1"),
            rec(30, "echo", "c-old", Kind::App, "old 2"),
            rec(5, "team/api", "a1", Kind::App, "api hello"),
        ])
        .unwrap();
    store
        .append(&[
            rec(20, "echo", "c-new", Kind::App, "new 1"),
            rec(40, "echo", "c-new", Kind::App, "new 2 hello"),
            rec(25, "echo", "", Kind::Build, "build hello"),
            rec(35, "", "", Kind::Ship, "deployed echo"),
        ])
        .unwrap();

    let q = |q: Query| lines(&store.query(&q).unwrap()).join("|");
    let echo = || Query {
        service: Some("echo".into()),
        ..Query::default()
    };
    assert_eq!(q(echo()), "old 1|new 1|build hello|old 2|new 2 hello");
    assert_eq!(
        q(Query::default()),
        "api hello|old 1|new 1|build hello|old 2|deployed echo|new 2 hello"
    );
    assert_eq!(
        q(Query {
            kind: Some(Kind::Build),
            ..echo()
        }),
        "build hello"
    );
    assert_eq!(
        q(Query {
            since_ns: Some(20),
            until_ns: Some(30),
            ..echo()
        }),
        "new 1|build hello|old 2"
    );
    assert_eq!(
        q(Query {
            grep: Some("hello".into()),
            ..Query::default()
        }),
        "api hello|build hello|new 2 hello"
    );
    assert_eq!(
        q(Query {
            limit: Some(2),
            ..echo()
        }),
        "old 2|new 2 hello"
    );
    assert_eq!(
        q(Query {
            service: Some(String::new()),
            ..Query::default()
        }),
        "deployed echo"
    );
    assert_eq!(
        q(Query {
            service: Some("team/api".into()),
            ..Query::default()
        }),
        "api hello"
    );
    assert_eq!(
        q(Query {
            service: Some("nope".into()),
            ..Query::default()
        }),
        ""
    );
    // Text that JSON escapes is still found.
    store
        .append(&[rec(50, "echo", "c-new", Kind::App, "say \"hi\"\tnow")])
        .unwrap();
    assert_eq!(
        q(Query {
            grep: Some("\"hi\"\t".into()),
            ..echo()
        }),
        "say \"hi\"\tnow"
    );
    // One giant line cannot blow up the store: it is cut and marked, like tailed lines.
    let giant = "g".repeat(MAX_LINE_BYTES * 4);
    store
        .append(&[rec(60, "echo", "", Kind::Ship, &giant)])
        .unwrap();
    let cut = store
        .query(&Query {
            kind: Some(Kind::Ship),
            ..echo()
        })
        .unwrap();
    assert_eq!(
        cut[0].line,
        format!("{}{TRUNCATED}", &giant[..MAX_LINE_BYTES])
    );
    let stats = store.stats();
    assert_eq!(stats.records, 9);
    assert_eq!(stats.disk_bytes, store.disk_usage());
    assert_eq!(store.disk_usage(), bytes_on_disk(dir.path()));
    assert_eq!(
        stats
            .service_bytes
            .iter()
            .map(|s| s.0.as_str())
            .collect::<Vec<_>>(),
        ["", "echo", "team/api"]
    );
}

#[test]
fn rotation_keeps_each_service_and_the_store_under_their_caps() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits {
        segment_bytes: 64 << 10,
        service_bytes: 256 << 10,
        total_bytes: 640 << 10,
        keep_free_bytes: None,
    };
    let store = LogStore::open(dir.path(), limits).unwrap();
    let filler = "x".repeat(200);
    let mut t = 0;
    // 3 services x 2 MiB: eight times a service's cap, ten times the store's.
    for round in 0..100 {
        for service in ["a", "b", "c"] {
            let batch: Vec<Record> = (0..25)
                .map(|i| {
                    t += 1;
                    rec(
                        t,
                        service,
                        "c1",
                        Kind::App,
                        &format!("{round}-{i} {filler}"),
                    )
                })
                .collect();
            store.append(&batch).unwrap();
            assert!(
                store.disk_usage() <= limits.total_bytes,
                "{}",
                store.disk_usage()
            );
            for (name, bytes) in store.stats().service_bytes {
                assert!(bytes <= limits.service_bytes, "{name}: {bytes}");
            }
        }
    }
    assert_eq!(store.disk_usage(), bytes_on_disk(dir.path()));
    assert!(
        store.disk_usage() > limits.total_bytes / 2,
        "the caps are used, not wasted"
    );
    // The newest records survive; the oldest are gone; order is intact.
    let newest = store
        .query(&Query {
            service: Some("c".into()),
            limit: Some(3),
            ..Query::default()
        })
        .unwrap();
    assert_eq!(
        lines(&newest)
            .iter()
            .map(|l| l.split(' ').next().unwrap())
            .collect::<Vec<_>>(),
        ["99-22", "99-23", "99-24"]
    );
    let all = store.query(&Query::default()).unwrap();
    assert!(!all.iter().any(|r| r.line.starts_with("0-")));
    assert!(all.windows(2).all(|w| w[0].time_ns < w[1].time_ns));
    // Segment names carry their time span once sealed.
    let sealed = std::fs::read_dir(dir.path().join("a"))
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name().into_string().unwrap();
            name.matches('.').count() == 2
        })
        .count();
    assert!(sealed >= 2, "{sealed} sealed segments");
}

#[test]
fn reopening_keeps_everything_and_cuts_a_torn_last_line() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = LogStore::open(dir.path(), Limits::default()).unwrap();
        store
            .append(&[
                rec(1, "echo", "c1", Kind::App, "one"),
                rec(2, "echo", "c1", Kind::App, "two"),
            ])
            .unwrap();
    }
    // A crash in the middle of a write leaves half a line at the end of the active segment.
    let seg = std::fs::read_dir(dir.path().join("echo"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut data = std::fs::read(&seg).unwrap();
    data.extend_from_slice(b"{\"time_ns\":3,\"ship\":\"sh");
    std::fs::write(&seg, &data).unwrap();

    let store = LogStore::open(dir.path(), Limits::default()).unwrap();
    // One store per directory: a second ship on the same state dir is refused.
    let again = LogStore::open(dir.path(), Limits::default()).err().unwrap();
    assert!(format!("{again:#}").contains("already open"), "{again:#}");
    assert!(matches!(again, StoreError::AlreadyOpen { .. }), "{again:?}");
    assert_eq!(store.disk_usage(), bytes_on_disk(dir.path()));
    store
        .append(&[rec(4, "echo", "c1", Kind::App, "four")])
        .unwrap();
    let all = store.query(&Query::default()).unwrap();
    assert_eq!(lines(&all), ["one", "two", "four"]);
    assert_eq!(store.disk_usage(), bytes_on_disk(dir.path()));
}

#[tokio::test]
async fn followers_get_the_backlog_then_every_new_record_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::open(dir.path(), Limits::default()).unwrap();
    let now = starphleet_telemetry::now_ns();
    store
        .append(&[rec(now, "echo", "c1", Kind::App, "before")])
        .unwrap();
    let q = Query {
        service: Some("echo".into()),
        ..Query::default()
    };
    let (backlog, mut follow) = store.follow(&q).unwrap();
    assert_eq!(lines(&backlog), ["before"]);

    let writer = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || {
            // A redeploy: the new container's lines keep coming to the same follow.
            store
                .append(&[
                    rec(now + 1, "other", "x", Kind::App, "not echo"),
                    rec(now + 2, "echo", "c2-new-version", Kind::App, "after 1"),
                    rec(now + 3, "echo", "", Kind::Build, "after 2"),
                ])
                .unwrap();
        })
    };
    writer.await.unwrap();
    let mut got = Vec::new();
    while got.len() < 2 {
        match tokio::time::timeout(Duration::from_secs(5), follow.next()).await {
            Ok(Some(Followed::Record(r))) => got.push(r.line),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(got, ["after 1", "after 2"]);

    // A plain subscriber sees everything stored.
    let mut sub = store.subscribe();
    store
        .append(&[rec(now + 4, "x", "", Kind::Ship, "event")])
        .unwrap();
    assert_eq!(sub.recv().await.unwrap().line, "event");
}

/// Every segment under `dir` holds whole records only: no torn line anywhere.
fn assert_whole_lines(dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let path = entry.path();
        let name = entry.file_name();
        if entry.file_type().unwrap().is_dir() {
            if name != ".tail" {
                assert_whole_lines(&path);
            }
            continue;
        }
        if !name.to_string_lossy().ends_with(".jsonl") {
            continue;
        }
        let data = std::fs::read(&path).unwrap();
        assert!(
            data.is_empty() || data.ends_with(b"\n"),
            "{} ends in a torn line",
            path.display()
        );
        for line in data.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            serde_json::from_slice::<Record>(line)
                .unwrap_or_else(|e| panic!("{}: a torn line ({e})", path.display()));
        }
    }
}

#[test]
#[ignore = "root tier (mounts a tmpfs): run by scripts/test"]
fn logs_never_take_the_last_of_the_disk() {
    let disk = Tmpfs::mount("4m");
    let keep = 1 << 20;
    let store = LogStore::open(
        &disk.path().join("store"),
        Limits {
            segment_bytes: 256 << 10,
            keep_free_bytes: Some(keep),
            ..Limits::default()
        },
    )
    .unwrap();
    let line = "z".repeat(1000);
    let free = || {
        let out = Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(disk.path())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .unwrap()
            .trim()
            .parse::<u64>()
            .unwrap()
    };
    // 10 MB of logs through a 4 MiB disk, in batches of 100 kB.
    for round in 0..100u64 {
        let batch: Vec<Record> = (0..100)
            .map(|i| rec(round * 1000 + i, "chatty", "c1", Kind::App, &line))
            .collect();
        store.append(&batch).unwrap();
        assert!(
            free() >= keep / 2,
            "round {round}: the store left only {} bytes free",
            free()
        );
    }
    let stats = store.stats();
    assert_eq!(
        stats.dropped_records, 0,
        "old logs made room, new ones were all kept"
    );
    assert!(!stats.disk_full);
}

#[test]
#[ignore = "root tier (mounts a tmpfs): run by scripts/test"]
fn a_full_disk_is_counted_and_reported_never_fatal() {
    let disk = Tmpfs::mount("1m");
    let store_dir = disk.path().join("store");
    let store = LogStore::open(&store_dir, Limits::default()).unwrap();
    let line = "y".repeat(900);
    let batch = |service: &str, n: u64, base: u64| -> Vec<Record> {
        (0..n)
            .map(|i| {
                rec(
                    base + i,
                    service,
                    "c1",
                    Kind::App,
                    &format!("{service} {i} {line}"),
                )
            })
            .collect()
    };
    store.append(&batch("noisy", 300, 0)).unwrap();
    // Something else fills the disk.
    let filler = disk.fill();
    // Full: the store frees its oldest segment and the quiet service's line still lands.
    store.append(&batch("quiet", 1, 1000)).unwrap();
    assert!(
        store
            .query(&Query {
                service: Some("noisy".into()),
                ..Query::default()
            })
            .unwrap()
            .is_empty(),
        "the noisy service's old segment made room"
    );
    assert_eq!(
        lines(
            &store
                .query(&Query {
                    service: Some("quiet".into()),
                    ..Query::default()
                })
                .unwrap()
        )
        .len(),
        1
    );
    let stats = store.stats();
    assert_eq!((stats.dropped_records, stats.disk_full), (0, false));
    // More than the disk can hold even after the store gave up all it had: an error,
    // counted, the batch dropped, and no torn line left behind.
    let err = store.append(&batch("quiet", 2000, 2000)).unwrap_err();
    assert!(err.is_disk_full(), "{err}");
    assert!(format!("{err:#}").contains("No space left"), "{err:#}");
    let stats = store.stats();
    assert_eq!(stats.write_errors, 1);
    assert!(stats.last_error.unwrap().contains("No space left"));
    assert_eq!(stats.dropped_records, 2000);
    assert!(stats.disk_full);
    assert_eq!(store.disk_usage(), bytes_on_disk(&store_dir));
    assert_whole_lines(&store_dir);
    // Once there is room again, writing simply goes on, in the same store.
    std::fs::remove_file(&filler).unwrap();
    store.append(&batch("quiet", 5, 9000)).unwrap();
    let quiet = store
        .query(&Query {
            service: Some("quiet".into()),
            ..Query::default()
        })
        .unwrap();
    assert_eq!(quiet.len(), 5, "{:?}", lines(&quiet));
    let stats = store.stats();
    assert_eq!(stats.dropped_records, 2000, "the count is cumulative");
    assert!(!stats.disk_full, "a write went in again");
    assert_eq!(store.disk_usage(), bytes_on_disk(&store_dir));
    assert_whole_lines(&store_dir);
}

#[test]
#[ignore = "root tier (mounts a tmpfs): run by scripts/test"]
fn a_disk_that_fills_up_mid_stream_drops_whole_batches_and_recovers() {
    let disk = Tmpfs::mount("2m");
    let store_dir = disk.path().join("store");
    // No free-space reserve: this store is the one filling its disk.
    let limits = Limits {
        keep_free_bytes: Some(0),
        ..Limits::default()
    };
    let store = LogStore::open(&store_dir, limits).unwrap();
    let line = "z".repeat(200);
    // Small batches until the disk is full: each one either goes in whole or is dropped.
    let (mut sent, mut failed) = (0u64, 0u64);
    for i in 0..2000u64 {
        let batch: Vec<Record> = (0..10)
            .map(|j| {
                rec(
                    i * 10 + j,
                    "echo",
                    "c1",
                    Kind::App,
                    &format!("{i}.{j} {line}"),
                )
            })
            .collect();
        sent += 10;
        if store.append(&batch).is_err() {
            failed += 10;
            let stats = store.stats();
            assert!(stats.disk_full, "{:?}", stats.last_error);
            assert_eq!(stats.dropped_records, failed);
        }
    }
    let stats = store.stats();
    assert!(failed > 0, "2000 batches of ~2.5 KiB filled a 2 MiB disk");
    assert_eq!(stats.records + stats.dropped_records, sent);
    assert_whole_lines(&store_dir);
    let kept = store.query(&Query::default()).unwrap();
    // Everything kept is whole; segments freed to make room took whole batches with them.
    assert!(kept.iter().all(|r| r.line.ends_with(&line)));
    assert_eq!(store.disk_usage(), bytes_on_disk(&store_dir));
}

/// Waits for `child` for at most `secs`, killing it after that.
fn wait_for(mut child: Child, secs: u64) -> std::process::Output {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("child process still running after {secs} s: killed");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn a_forked_child_never_holds_the_store_lock() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let store = LogStore::open(&store_dir, Limits::default()).unwrap();
    store
        .append(&[rec(1, "echo", "c1", Kind::App, "before")])
        .unwrap();
    // Any thread of the process (another test, the ship starting runc) forks: until it execs
    // the child holds a copy of every fd, the lock file's too. This one waits there 1 s.
    let (mut forked, in_child) = UnixStream::pair().unwrap();
    let signal_fd = in_child.as_raw_fd();
    let mut command = Command::new("true");
    // SAFETY: the hook only calls write(2) and sleep(3), both async-signal-safe.
    unsafe {
        command.pre_exec(move || {
            libc::write(signal_fd, b"f".as_ptr().cast(), 1);
            libc::sleep(1);
            Ok(())
        });
    }
    // spawn() returns only once the child has exec'd, so it runs on a thread of its own.
    let spawner = std::thread::spawn(move || {
        let child = command.spawn();
        drop(in_child);
        child
    });
    forked
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut byte = [0u8; 1];
    forked.read_exact(&mut byte).unwrap();
    // The child is forked and has not exec'd: the ship restarts its store meanwhile.
    drop(store);
    let reopened = LogStore::open(&store_dir, Limits::default());
    assert!(
        !spawner.is_finished(),
        "the child was still between fork and exec"
    );
    let store = reopened.expect("a forked child does not hold the store's lock");
    store
        .append(&[rec(2, "echo", "c1", Kind::App, "after")])
        .unwrap();
    assert_eq!(
        lines(&store.query(&Query::default()).unwrap()),
        ["before", "after"]
    );
    let out = wait_for(spawner.join().unwrap().unwrap(), 30);
    assert!(out.status.success());
}

/// Set for the child process of [`a_second_process_cannot_open_an_open_store`].
const STORE_CHILD_DIR: &str = "STARPHLEET_TELEMETRY_TEST_STORE_DIR";

/// Another "ship": tries to open the store, says how it went on stdout. Runs only as a child
/// of that test (it is ignored, and does nothing without the variable).
#[test]
#[ignore = "a child process of a_second_process_cannot_open_an_open_store"]
fn open_store_in_child() {
    let Some(dir) = std::env::var_os(STORE_CHILD_DIR).map(PathBuf::from) else {
        return;
    };
    match LogStore::open(&dir, Limits::default()) {
        Ok(_) => println!("child: opened"),
        Err(e) => println!("child: refused: {e}"),
    }
}

/// What [`open_store_in_child`] said about opening `dir`.
fn open_in_other_process(dir: &Path) -> String {
    let child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "open_store_in_child", "--ignored", "--nocapture"])
        .env(STORE_CHILD_DIR, dir)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_for(child, 30);
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("child: "))
        .unwrap_or_else(|| panic!("no answer from the child: {stdout}"))
        .to_string()
}

#[test]
fn a_second_process_cannot_open_an_open_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::open(dir.path(), Limits::default()).unwrap();
    let answer = open_in_other_process(dir.path());
    assert!(
        answer.starts_with("refused: ")
            && answer.contains("already open by process")
            && answer.contains(&std::process::id().to_string()),
        "{answer}"
    );
    drop(store);
    assert_eq!(open_in_other_process(dir.path()), "opened");
    // And the child's store is gone with it: this process opens it again.
    LogStore::open(dir.path(), Limits::default()).unwrap();
}

#[test]
fn a_closed_service_holds_no_file_and_keeps_its_records() {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::open(dir.path(), Limits::default()).unwrap();
    store
        .append(&[
            rec(1, "gone", "c1", Kind::App, "gone 1"),
            rec(2, "stays", "c2", Kind::App, "stays 1"),
        ])
        .unwrap();
    let (gone, stays) = (dir.path().join("gone"), dir.path().join("stays"));
    assert_eq!((open_fds_under(&gone), open_fds_under(&stays)), (1, 1));
    store.close_service("gone");
    assert_eq!((open_fds_under(&gone), open_fds_under(&stays)), (0, 1));
    store.close_service("gone");
    store.close_service("never-there");
    let service = |name: &str| Query {
        service: Some(name.into()),
        ..Query::default()
    };
    assert_eq!(lines(&store.query(&service("gone")).unwrap()), ["gone 1"]);
    // A later write opens a segment again.
    store
        .append(&[rec(3, "gone", "c1", Kind::App, "gone 2")])
        .unwrap();
    assert_eq!(open_fds_under(&gone), 1);
    store.close_service("gone");
    assert_eq!(open_fds_under(&gone), 0);
    assert_eq!(
        lines(&store.query(&service("gone")).unwrap()),
        ["gone 1", "gone 2"]
    );
    assert_eq!(store.disk_usage(), bytes_on_disk(dir.path()));
    drop(store);
    let store = LogStore::open(dir.path(), Limits::default()).unwrap();
    assert_eq!(
        lines(&store.query(&Query::default()).unwrap()),
        ["gone 1", "stays 1", "gone 2"]
    );
}
