//! The phleet's logs: every ship's `GET /logs` merged by time, each record naming its ship.
//!
//! One task per ship feeds one channel, so a slow or dead ship never holds back another's
//! lines. A query collects each ship's answer (each bounded by the client's timeout) and
//! merges them by time. Following merges the backlogs that come within a short window, then
//! passes on every line as it arrives from any ship; a ship that went away is asked again
//! with back-off, from a little before the last record it sent ([`RESUME_SLACK_NS`]), and
//! the records seen since then are dropped when they come again, so nothing is doubled.

use std::cmp::Reverse;
use std::collections::hash_map::DefaultHasher;
use std::collections::{BinaryHeap, HashSet, VecDeque};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::Method;
use serde::{Deserialize, Serialize};
use starphleet_telemetry::{format_time, now_ns, parse_time, Kind, Record, RecordError};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};

use crate::peer::{peer_uri, Peer, PeerClient, PeerError};

/// A resumed follow starts this long before the last record seen, so records a ship stored
/// slightly out of time order (one collector poll apart) are not lost; doubles are dropped.
pub const RESUME_SLACK_NS: u64 = 2_000_000_000;

/// A resumed follow asks for up to this many records, so an outage loses none to the limit.
const RESUME_LIMIT: usize = 100_000;

/// Records remembered per ship to drop doubles after a reconnect, at most.
const MAX_SEEN: usize = 200_000;

/// Lines queued for the reader before the ships' tasks wait for it.
const CHANNEL_LINES: usize = 1024;

/// First and longest wait before asking a ship that went away again.
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Following, how long the first backlogs are waited for to be merged by time; a ship
/// slower than this has its backlog shown when it comes.
const MERGE_WINDOW: Duration = Duration::from_millis(150);

/// A pause after a stream ends before it is opened again (a ship restarting).
const REOPEN_PAUSE: Duration = Duration::from_millis(100);

/// A line longer than this is not a record: the stream is dropped and opened again.
const MAX_LINE_BYTES: usize = 4 << 20;

/// The filters of `logs --phleet` and `GET /phleet/logs`, passed on to every ship's `/logs`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LogQuery {
    /// Only this service.
    pub service: Option<String>,
    /// Only records at or after this time (`10m`, an RFC 3339 time…), as each ship reads it.
    pub since: Option<String>,
    /// Only records at or before this time.
    pub until: Option<String>,
    /// Only lines containing this text.
    pub grep: Option<String>,
    /// Only this kind.
    pub kind: Option<Kind>,
    /// At most this many records (the newest); each ship's default applies when unset.
    pub limit: Option<usize>,
}

/// Why log filters were refused (before any ship is asked).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogQueryError {
    /// `since` or `until` is not a time.
    #[error("--{name} {value}: {source}")]
    BadTime {
        /// `since` or `until`.
        name: &'static str,
        /// What was given.
        value: String,
        /// Why it is not a time.
        source: RecordError,
    },
    /// Not a log kind.
    #[error("--kind {value}: {source}")]
    BadKind {
        /// What was given.
        value: String,
        /// Why.
        source: RecordError,
    },
    /// Not a number.
    #[error("--limit {0}: not a number of lines")]
    BadLimit(String),
}

impl LogQuery {
    /// Reads `service=&since=&until=&grep=&kind=&limit=&follow=1` (the query string of
    /// `GET /phleet/logs`, same as `/logs`); returns the filters and whether to follow.
    pub fn from_query_string(query: &str) -> Result<(LogQuery, bool), LogQueryError> {
        let mut q = LogQuery::default();
        let mut follow = false;
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            let v = v.into_owned();
            let value = Some(v.clone()).filter(|v| !v.is_empty());
            match k.as_ref() {
                "service" => q.service = Some(v),
                "since" => q.since = value,
                "until" => q.until = value,
                "grep" => q.grep = value,
                "kind" => {
                    q.kind = value
                        .map(|k| {
                            k.parse::<Kind>()
                                .map_err(|source| LogQueryError::BadKind { value: k, source })
                        })
                        .transpose()?
                }
                "limit" => {
                    q.limit = value
                        .map(|l| l.parse().map_err(|_| LogQueryError::BadLimit(l)))
                        .transpose()?
                }
                "follow" => follow = matches!(v.as_str(), "1" | "true"),
                _ => {}
            }
        }
        q.check()?;
        Ok((q, follow))
    }

    /// Checks `since` and `until` read as times, as the ships will read them.
    pub fn check(&self) -> Result<(), LogQueryError> {
        let now = now_ns();
        for (name, value) in [("since", &self.since), ("until", &self.until)] {
            if let Some(v) = value {
                parse_time(v, now).map_err(|source| LogQueryError::BadTime {
                    name,
                    value: v.clone(),
                    source,
                })?;
            }
        }
        Ok(())
    }

    /// The query string for a ship's `/logs`.
    pub fn to_query_string(&self, follow: bool) -> String {
        let mut s = form_urlencoded::Serializer::new(String::new());
        if let Some(v) = &self.service {
            s.append_pair("service", v);
        }
        if let Some(v) = &self.since {
            s.append_pair("since", v);
        }
        if let Some(v) = &self.until {
            s.append_pair("until", v);
        }
        if let Some(v) = &self.grep {
            s.append_pair("grep", v);
        }
        if let Some(k) = self.kind {
            s.append_pair("kind", k.as_str());
        }
        if let Some(n) = self.limit {
            s.append_pair("limit", &n.to_string());
        }
        if follow {
            s.append_pair("follow", "1");
        }
        s.finish()
    }

    /// The same filters from `since_ns` on (exact to the nanosecond), for a resumed follow.
    fn resumed(&self, since_ns: u64) -> LogQuery {
        let t = UNIX_EPOCH + Duration::from_nanos(since_ns);
        LogQuery {
            since: Some(humantime::format_rfc3339_nanos(t).to_string()),
            limit: Some(RESUME_LIMIT),
            ..self.clone()
        }
    }
}

/// One line of the merged logs: a ship's record, or news about a ship.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MergedLine {
    /// News about a ship (its JSON has a `notice` field, which records never have).
    Notice(Notice),
    /// A record; its `ship` is the name the ship has in `ships`.
    Record(Record),
}

/// News about one ship in the merged logs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notice {
    /// The ship.
    pub ship: String,
    /// What happened.
    pub event: NoticeEvent,
    /// The sentence shown, e.g. `ship north unreachable: connection refused …`.
    pub notice: String,
}

/// What a [`Notice`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NoticeEvent {
    /// The ship did not answer; its lines are missing until it is back.
    Unreachable,
    /// The ship answers again; its lines follow.
    Back,
    /// The ship dropped records for this reader (it fell behind).
    Missed,
}

impl Notice {
    /// `ship X unreachable: why`.
    pub fn unreachable(ship: &str, why: &PeerError) -> Self {
        Notice {
            ship: ship.to_string(),
            event: NoticeEvent::Unreachable,
            notice: format!("ship {ship} unreachable: {why}"),
        }
    }

    /// `ship X back`.
    pub fn back(ship: &str) -> Self {
        Notice {
            ship: ship.to_string(),
            event: NoticeEvent::Back,
            notice: format!("ship {ship} back"),
        }
    }

    /// `ship X: N records missed`.
    pub fn missed(ship: &str, n: u64) -> Self {
        Notice {
            ship: ship.to_string(),
            event: NoticeEvent::Missed,
            notice: format!("ship {ship}: {n} records missed (this reader fell behind)"),
        }
    }
}

/// `TIME SHIP SERVICE VERSION CONTAINER STREAM: line` (empty fields skipped), or
/// `-- notice`.
impl fmt::Display for MergedLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MergedLine::Notice(n) => write!(f, "-- {}", n.notice),
            MergedLine::Record(r) => {
                f.write_str(&format_time(r.time_ns))?;
                for field in [&r.ship, &r.service, &r.version, &r.container, &r.stream] {
                    if !field.is_empty() {
                        write!(f, " {field}")?;
                    }
                }
                write!(f, ": {}", r.line)
            }
        }
    }
}

/// Merges per-ship lists by time (a tie goes to the ship listed first; each list keeps its
/// order); with a limit, keeps the newest `limit` records.
pub fn merge_by_time(lists: Vec<Vec<Record>>, limit: Option<usize>) -> Vec<Record> {
    let mut lists: Vec<VecDeque<Record>> = lists
        .into_iter()
        .map(|mut l| {
            l.sort_by_key(|r| r.time_ns);
            VecDeque::from(l)
        })
        .collect();
    let total: usize = lists.iter().map(VecDeque::len).sum();
    let mut heap: BinaryHeap<Reverse<(u64, usize)>> = lists
        .iter()
        .enumerate()
        .filter_map(|(i, l)| l.front().map(|r| Reverse((r.time_ns, i))))
        .collect();
    let mut out = Vec::with_capacity(total);
    while let Some(Reverse((_, i))) = heap.pop() {
        let r = lists[i]
            .pop_front()
            .expect("a list in the heap has a record");
        out.push(r);
        if let Some(next) = lists[i].front() {
            heap.push(Reverse((next.time_ns, i)));
        }
    }
    if let Some(n) = limit {
        let skip = out.len().saturating_sub(n);
        out.drain(..skip);
    }
    out
}

/// One line of a ship's `/logs` answer.
#[derive(Debug, PartialEq)]
enum PeerLine {
    Record(Record),
    Missed(u64),
    /// Something newer ships may send; skipped.
    Other,
}

fn parse_line(line: &[u8]) -> PeerLine {
    #[derive(Deserialize)]
    struct Missed {
        missed: u64,
    }
    if let Ok(r) = serde_json::from_slice::<Record>(line) {
        return PeerLine::Record(r);
    }
    match serde_json::from_slice::<Missed>(line) {
        Ok(m) => PeerLine::Missed(m.missed),
        Err(_) => PeerLine::Other,
    }
}

/// The records lately seen from one ship, to drop them when a resumed stream sends them again.
#[derive(Default)]
struct Seen {
    order: VecDeque<(u64, u64)>,
    set: HashSet<u64>,
    newest_ns: Option<u64>,
}

impl Seen {
    fn digest(r: &Record) -> u64 {
        let mut h = DefaultHasher::new();
        r.hash(&mut h);
        h.finish()
    }

    /// Remembers `r`; false when it was seen already.
    fn insert(&mut self, r: &Record) -> bool {
        let d = Self::digest(r);
        if !self.set.insert(d) {
            return false;
        }
        self.order.push_back((r.time_ns, d));
        let newest = self.newest_ns.map_or(r.time_ns, |n| n.max(r.time_ns));
        self.newest_ns = Some(newest);
        // Older records are never asked for again, so they need not be remembered.
        let keep_from = newest.saturating_sub(RESUME_SLACK_NS);
        while let Some(&(t, d)) = self.order.front() {
            if t >= keep_from && self.order.len() <= MAX_SEEN {
                break;
            }
            self.order.pop_front();
            self.set.remove(&d);
        }
        true
    }

    /// Where a resumed stream starts: a little before the newest record seen.
    fn resume_from(&self) -> Option<u64> {
        self.newest_ns.map(|n| n.saturating_sub(RESUME_SLACK_NS))
    }
}

/// The merged logs being read: a stream of [`MergedLine`]s. Dropping it stops asking the ships.
pub struct LogStream {
    rx: mpsc::Receiver<MergedLine>,
    task: JoinHandle<()>,
}

impl LogStream {
    /// The next line; `None` once a query (not a follow) is complete.
    pub async fn next(&mut self) -> Option<MergedLine> {
        self.rx.recv().await
    }
}

impl futures::Stream for LogStream {
    type Item = MergedLine;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<MergedLine>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for LogStream {
    fn drop(&mut self) {
        // The coordinator owns the ships' tasks in a JoinSet, which aborts them as it drops.
        self.task.abort();
    }
}

impl PeerClient {
    /// One ship's records for `query`, the whole answer within the timeout, each record's
    /// `ship` set to the name the ship has in `ships`.
    pub async fn logs_of(&self, peer: &Peer, query: &LogQuery) -> Result<Vec<Record>, PeerError> {
        let path = format!("/logs?{}", query.to_query_string(false));
        let body = self.get(peer, &path).await?;
        let mut out = Vec::new();
        for line in body.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            if let PeerLine::Record(mut r) = parse_line(line) {
                r.ship.clone_from(&peer.name);
                out.push(r);
            }
        }
        Ok(out)
    }

    /// The merged logs of `peers`: their records for `query` merged by time (ships that do
    /// not answer in time are named in notices first); with `follow`, then every new record
    /// of any ship as it arrives, with notices when a ship goes away and comes back.
    /// Must be called inside a Tokio runtime.
    pub fn logs(&self, peers: &[Peer], query: &LogQuery, follow: bool) -> LogStream {
        let (tx, rx) = mpsc::channel(CHANNEL_LINES);
        let task = tokio::spawn(coordinate(
            self.clone(),
            peers.to_vec(),
            query.clone(),
            follow,
            tx,
        ));
        LogStream { rx, task }
    }

    /// Opens one ship's followed `/logs`, within the timeout.
    async fn open_follow(&self, peer: &Peer, query: &LogQuery) -> Result<Incoming, PeerError> {
        let uri = peer_uri(peer, &format!("/logs?{}", query.to_query_string(true)))?;
        let resp = self.open(Method::GET, uri, None, Bytes::new()).await?;
        Ok(resp.into_body())
    }
}

/// What a ship's task tells the coordinator.
enum Event {
    /// The ship's answer to the query (the backlog).
    Backlog(usize, Result<Vec<Record>, PeerError>),
    /// A line followed from it.
    Line(MergedLine),
}

/// Runs one task per ship (its backlog, then, when following, its stream) and merges what
/// they send: the backlogs by time, then every line as it comes. Without `follow` it waits
/// for every backlog (each bounded by the timeout); following, it waits at most
/// [`MERGE_WINDOW`], so a hanging ship never holds back the others' live lines, and a
/// backlog that comes later is shown when it comes.
async fn coordinate(
    client: PeerClient,
    peers: Vec<Peer>,
    query: LogQuery,
    follow: bool,
    tx: mpsc::Sender<MergedLine>,
) {
    let (ev_tx, mut ev_rx) = mpsc::channel::<Event>(CHANNEL_LINES);
    let mut tasks = JoinSet::new();
    for (i, peer) in peers.iter().enumerate() {
        tasks.spawn(ship_task(
            client.clone(),
            i,
            peer.clone(),
            query.clone(),
            follow,
            ev_tx.clone(),
        ));
    }
    drop(ev_tx);
    let window = follow.then(|| tokio::time::Instant::now() + MERGE_WINDOW);
    let mut pending = peers.len();
    let mut backlogs: Vec<Vec<Record>> = Vec::new();
    let mut notices: Vec<MergedLine> = Vec::new();
    let mut early: Vec<MergedLine> = Vec::new();
    let notice =
        |i: usize, e: &PeerError| MergedLine::Notice(Notice::unreachable(&peers[i].name, e));
    while pending > 0 {
        let next = match window {
            Some(at) => match tokio::time::timeout_at(at, ev_rx.recv()).await {
                Ok(ev) => ev,
                Err(_) => break,
            },
            None => ev_rx.recv().await,
        };
        match next {
            Some(Event::Backlog(i, answer)) => {
                pending -= 1;
                match answer {
                    Ok(records) => backlogs.push(records),
                    Err(e) => notices.push(notice(i, &e)),
                }
            }
            Some(Event::Line(line)) => early.push(line),
            None => break,
        }
    }
    let merged = merge_by_time(backlogs, query.limit)
        .into_iter()
        .map(MergedLine::Record);
    for line in notices.into_iter().chain(merged).chain(early) {
        if tx.send(line).await.is_err() {
            return;
        }
    }
    while let Some(ev) = ev_rx.recv().await {
        let lines = match ev {
            Event::Backlog(_, Ok(records)) => merge_by_time(vec![records], None)
                .into_iter()
                .map(MergedLine::Record)
                .collect(),
            Event::Backlog(i, Err(e)) => vec![notice(i, &e)],
            Event::Line(line) => vec![line],
        };
        for line in lines {
            if tx.send(line).await.is_err() {
                return;
            }
        }
    }
    // `tasks` lives until here: dropping it (or aborting this task) stops every ship's task.
    drop(tasks);
}

/// One ship: its backlog, then (following) its stream for as long as the reader reads;
/// when it goes away it is asked again with back-off, resuming without doubles.
async fn ship_task(
    client: PeerClient,
    index: usize,
    peer: Peer,
    query: LogQuery,
    follow: bool,
    tx: mpsc::Sender<Event>,
) {
    let mut seen = Seen::default();
    let backlog = client.logs_of(&peer, &query).await;
    let mut up = backlog.is_ok();
    if let Ok(records) = &backlog {
        for r in records {
            seen.insert(r);
        }
    }
    if tx.send(Event::Backlog(index, backlog)).await.is_err() || !follow {
        return;
    }
    let send = |line: MergedLine| tx.send(Event::Line(line));
    let mut backoff = BACKOFF_MIN;
    loop {
        let q = match seen.resume_from() {
            Some(ns) => query.resumed(ns),
            None => query.clone(),
        };
        match client.open_follow(&peer, &q).await {
            Ok(body) => {
                if !up {
                    if send(MergedLine::Notice(Notice::back(&peer.name)))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    up = true;
                }
                backoff = BACKOFF_MIN;
                if !pump(body, &peer.name, &mut seen, &tx).await {
                    return;
                }
                tokio::time::sleep(REOPEN_PAUSE).await;
            }
            Err(e) => {
                if up {
                    let notice = Notice::unreachable(&peer.name, &e);
                    if send(MergedLine::Notice(notice)).await.is_err() {
                        return;
                    }
                    up = false;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// Forwards one ship's stream until it ends; false when the reader is gone.
async fn pump(mut body: Incoming, ship: &str, seen: &mut Seen, tx: &mpsc::Sender<Event>) -> bool {
    let mut pending: Vec<u8> = Vec::new();
    while let Some(Ok(frame)) = body.frame().await {
        let Ok(data) = frame.into_data() else {
            continue;
        };
        pending.extend_from_slice(&data);
        let mut start = 0;
        while let Some(nl) = pending[start..].iter().position(|&b| b == b'\n') {
            let line = &pending[start..start + nl];
            start += nl + 1;
            let out = match parse_line(line) {
                PeerLine::Record(mut r) => {
                    r.ship = ship.to_string();
                    if !seen.insert(&r) {
                        continue;
                    }
                    MergedLine::Record(r)
                }
                PeerLine::Missed(n) => MergedLine::Notice(Notice::missed(ship, n)),
                PeerLine::Other => continue,
            };
            if tx.send(Event::Line(out)).await.is_err() {
                return false;
            }
        }
        pending.drain(..start);
        if pending.len() > MAX_LINE_BYTES {
            return true;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(ship: &str, t: u64, line: &str) -> Record {
        Record {
            time_ns: t,
            ship: ship.into(),
            service: "echo".into(),
            version: String::new(),
            container: String::new(),
            kind: Kind::App,
            stream: "stdout".into(),
            line: line.into(),
        }
    }

    #[test]
    fn merges_by_time_keeping_each_ships_order_and_the_newest() {
        let a = vec![
            rec("a", 1, "a1"),
            rec("a", 4, "a4"),
            rec("a", 4, "a4b"),
            rec("a", 9, "a9"),
        ];
        let b = vec![rec("b", 5, "b5"), rec("b", 2, "b2"), rec("b", 4, "b4")];
        let c = vec![];
        let merged = merge_by_time(vec![a.clone(), b.clone(), c.clone()], None);
        let lines: Vec<&str> = merged.iter().map(|r| r.line.as_str()).collect();
        assert_eq!(lines, ["a1", "b2", "a4", "a4b", "b4", "b5", "a9"]);
        let newest = merge_by_time(vec![a, b, c], Some(3));
        let lines: Vec<&str> = newest.iter().map(|r| r.line.as_str()).collect();
        assert_eq!(lines, ["b4", "b5", "a9"]);
        assert!(merge_by_time(vec![], Some(5)).is_empty());
    }

    #[test]
    fn query_strings_round_trip_and_bad_filters_are_refused() {
        let (q, follow) = LogQuery::from_query_string(
            "service=team%2Fapi&since=10m&grep=GET+%2F&kind=access&limit=50&follow=1",
        )
        .unwrap();
        assert!(follow);
        assert_eq!(q.service.as_deref(), Some("team/api"));
        assert_eq!(q.grep.as_deref(), Some("GET /"));
        assert_eq!(q.kind, Some(Kind::Access));
        assert_eq!(q.limit, Some(50));
        let (back, f2) = LogQuery::from_query_string(&q.to_query_string(false)).unwrap();
        assert_eq!((back, f2), (q, false));
        let (empty, _) = LogQuery::from_query_string("").unwrap();
        assert_eq!(empty, LogQuery::default());
        assert_eq!(empty.to_query_string(false), "");
        // `service=` alone asks for ship-wide events, as on one ship.
        let (ship_wide, _) = LogQuery::from_query_string("service=").unwrap();
        assert_eq!(ship_wide.service.as_deref(), Some(""));

        let e = LogQuery::from_query_string("since=yesterday-ish").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("--since yesterday-ish: cannot read"),
            "{e}"
        );
        assert!(matches!(
            LogQuery::from_query_string("kind=loud").unwrap_err(),
            LogQueryError::BadKind { .. }
        ));
        assert_eq!(
            LogQuery::from_query_string("limit=lots").unwrap_err(),
            LogQueryError::BadLimit("lots".into())
        );
    }

    #[test]
    fn resuming_asks_from_the_exact_nanosecond() {
        let q = LogQuery {
            service: Some("echo".into()),
            limit: Some(10),
            ..Default::default()
        };
        let r = q.resumed(1_700_000_000_123_456_789);
        assert_eq!(r.since.as_deref(), Some("2023-11-14T22:13:20.123456789Z"));
        assert_eq!(
            parse_time(r.since.as_deref().unwrap(), 0).unwrap(),
            1_700_000_000_123_456_789
        );
        assert_eq!(r.limit, Some(RESUME_LIMIT));
        assert_eq!(r.service.as_deref(), Some("echo"));
    }

    #[test]
    fn reads_records_missed_counts_and_skips_the_rest() {
        let r = rec("north", 7, "hi");
        let line = serde_json::to_vec(&r).unwrap();
        assert_eq!(parse_line(&line), PeerLine::Record(r));
        assert_eq!(parse_line(br#"{"missed": 12}"#), PeerLine::Missed(12));
        assert_eq!(parse_line(br#"{"heartbeat": true}"#), PeerLine::Other);
        assert_eq!(parse_line(b"garbage"), PeerLine::Other);
    }

    #[test]
    fn seen_drops_doubles_and_forgets_what_is_never_asked_again() {
        let mut seen = Seen::default();
        assert_eq!(seen.resume_from(), None);
        let old = rec("a", 1_000, "old");
        assert!(seen.insert(&old));
        assert!(!seen.insert(&old));
        let t = 10 * RESUME_SLACK_NS;
        assert!(seen.insert(&rec("a", t, "new")));
        assert!(!seen.insert(&rec("a", t, "new")));
        assert!(seen.insert(&rec("a", t, "other line, same time")));
        assert_eq!(seen.resume_from(), Some(t - RESUME_SLACK_NS));
        // The old one is forgotten: it is before where a resumed stream starts.
        assert_eq!(seen.set.len(), 2);
    }

    #[test]
    fn lines_serialize_so_the_cli_can_read_them_back() {
        let r = MergedLine::Record(rec("north", 1_700_000_000_000_000_000, "hello"));
        let n = MergedLine::Notice(Notice::unreachable("south", &PeerError::Unauthorized));
        for line in [&r, &n] {
            let json = serde_json::to_string(line).unwrap();
            assert_eq!(&serde_json::from_str::<MergedLine>(&json).unwrap(), line);
        }
        assert_eq!(
            r.to_string(),
            "2023-11-14T22:13:20.000000Z north echo stdout: hello"
        );
        assert!(
            n.to_string().starts_with("-- ship south unreachable: 401"),
            "{n}"
        );
        let json = serde_json::to_value(&n).unwrap();
        assert_eq!(json["event"], "unreachable");
    }
}
