//! Merged logs: backlog merged by time, follow that never waits on a bad ship, reconnects
//! without doubles.

use std::time::{Duration, Instant};

use starphleet_phleet::{LogQuery, LogStream, MergedLine, NoticeEvent, Peer, PeerClient};
use starphleet_telemetry::{now_ns, Record};

use crate::common::{dead_port, record, token, FakeShip, Silent, TOKEN};

const MS: u64 = 1_000_000;

/// Every line until the stream ends (a query, not a follow), within 5 s.
async fn all(mut s: LogStream) -> Vec<MergedLine> {
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while let Some(line) = tokio::time::timeout_at(deadline.into(), s.next())
        .await
        .expect("a query ends")
    {
        out.push(line);
    }
    out
}

/// The next record (notices are collected into `notices`), within `within`.
async fn next_record(
    s: &mut LogStream,
    within: Duration,
    notices: &mut Vec<(String, NoticeEvent)>,
) -> Option<Record> {
    let deadline = Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline.into(), s.next()).await {
            Ok(Some(MergedLine::Record(r))) => return Some(r),
            Ok(Some(MergedLine::Notice(n))) => notices.push((n.ship, n.event)),
            Ok(None) | Err(_) => return None,
        }
    }
}

fn summary(lines: &[MergedLine]) -> Vec<String> {
    lines
        .iter()
        .map(|l| match l {
            MergedLine::Record(r) => format!("{} {}", r.ship, r.line),
            MergedLine::Notice(n) => format!("{} {:?}", n.ship, n.event),
        })
        .collect()
}

#[tokio::test]
async fn a_query_merges_every_ship_by_time_and_names_each_ship() {
    let base = now_ns() - 60_000 * MS;
    let north = FakeShip::start("north", Some(TOKEN)).await;
    let south = FakeShip::start("south", Some(TOKEN)).await;
    for (ship, t, line) in [
        (&north, 1, "n1"),
        (&north, 4, "n4"),
        (&north, 6, "n6"),
        (&south, 2, "s2"),
        (&south, 3, "s3"),
        (&south, 7, "s7"),
    ] {
        ship.push(record("echo", base + t * MS, line));
    }
    south.push(record("api", base + 5 * MS, "s5-api"));
    let dead = dead_port().await;
    let peers = vec![
        north.peer(),
        Peer::new("east", format!("http://{dead}")),
        south.peer(),
    ];
    let client = PeerClient::with_timeout(Some(&token()), Duration::from_millis(500));

    let lines = all(client.logs(&peers, &LogQuery::default(), false)).await;
    assert_eq!(
        summary(&lines),
        [
            "east Unreachable",
            "north n1",
            "south s2",
            "south s3",
            "north n4",
            "south s5-api",
            "north n6",
            "south s7"
        ]
    );
    let text = lines[0].to_string();
    assert!(
        text.starts_with("-- ship east unreachable: connection refused"),
        "{text}"
    );

    let q = LogQuery {
        service: Some("echo".into()),
        limit: Some(3),
        ..Default::default()
    };
    let lines = all(client.logs(&peers, &q, false)).await;
    assert_eq!(
        summary(&lines),
        ["east Unreachable", "north n4", "north n6", "south s7"]
    );
    assert!(north
        .requests()
        .iter()
        .any(|r| r.contains("service=echo") && r.contains("limit=3")));
}

#[tokio::test]
async fn following_never_waits_on_a_hanging_or_dead_ship() {
    let fast = FakeShip::start("fast", Some(TOKEN)).await;
    fast.push(record("echo", now_ns() - 1_000 * MS, "before"));
    let silent = Silent::start().await;
    let dead = dead_port().await;
    let peers = vec![
        Peer::new("hang", format!("http://{}", silent.addr)),
        Peer::new("dead", format!("http://{dead}")),
        fast.peer(),
    ];
    // The real 2 s bound: the hanging ship is asked again every 2 s or so meanwhile.
    let client = PeerClient::new(Some(&token()));
    let mut stream = client.logs(&peers, &LogQuery::default(), true);
    let mut notices = Vec::new();
    let first = next_record(&mut stream, Duration::from_millis(500), &mut notices)
        .await
        .expect("the fast ship's backlog comes at once");
    assert_eq!(
        (first.ship.as_str(), first.line.as_str()),
        ("fast", "before")
    );

    let mut worst = Duration::ZERO;
    let started = Instant::now();
    let mut n = 0;
    while started.elapsed() < Duration::from_millis(4500) {
        n += 1;
        let line = format!("live {n}");
        let pushed = Instant::now();
        fast.push(record("echo", now_ns(), &line));
        let got = next_record(&mut stream, Duration::from_millis(300), &mut notices)
            .await
            .unwrap_or_else(|| panic!("{line} did not arrive within 300 ms"));
        worst = worst.max(pushed.elapsed());
        assert_eq!(
            (got.ship.as_str(), got.line.as_str()),
            ("fast", line.as_str())
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert!(n >= 15, "{n} lines");
    println!("{n} live lines, slowest arrived after {worst:?}");
    assert!(
        notices.contains(&("dead".into(), NoticeEvent::Unreachable)),
        "{notices:?}"
    );
    assert!(
        notices.contains(&("hang".into(), NoticeEvent::Unreachable)),
        "{notices:?}"
    );
}

#[tokio::test]
async fn a_ship_that_comes_back_is_followed_again_without_doubles() {
    let mut north = FakeShip::start("north", Some(TOKEN)).await;
    let south = FakeShip::start("south", Some(TOKEN)).await;
    let t0 = now_ns() - 500 * MS;
    north.push(record("echo", t0, "n1"));
    north.push(record("echo", t0 + MS, "n2"));
    let client = PeerClient::with_timeout(Some(&token()), Duration::from_millis(500));
    let mut stream = client.logs(&[north.peer(), south.peer()], &LogQuery::default(), true);
    let mut notices = Vec::new();
    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(
            next_record(&mut stream, Duration::from_secs(1), &mut notices)
                .await
                .unwrap(),
        );
    }
    // Give the follow streams a moment to open, then a live line.
    tokio::time::sleep(Duration::from_millis(300)).await;
    north.push(record("echo", now_ns(), "n3"));
    got.push(
        next_record(&mut stream, Duration::from_secs(1), &mut notices)
            .await
            .unwrap(),
    );

    north.stop().await;
    // Stored while the reader could not see it; comes after the ship is back.
    north.push(record("echo", now_ns(), "n4"));
    tokio::time::sleep(Duration::from_millis(600)).await;
    // South keeps flowing while north is down.
    south.push(record("echo", now_ns(), "s1"));
    got.push(
        next_record(&mut stream, Duration::from_secs(1), &mut notices)
            .await
            .unwrap(),
    );
    assert_eq!(notices, [("north".to_string(), NoticeEvent::Unreachable)]);

    north.restart().await;
    got.push(
        next_record(&mut stream, Duration::from_secs(3), &mut notices)
            .await
            .unwrap(),
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    north.push(record("echo", now_ns(), "n5"));
    got.push(
        next_record(&mut stream, Duration::from_secs(1), &mut notices)
            .await
            .unwrap(),
    );
    // Nothing else: n1..n3 were sent again by the resumed stream and dropped.
    assert!(
        next_record(&mut stream, Duration::from_millis(500), &mut notices)
            .await
            .is_none()
    );

    let lines: Vec<String> = got
        .iter()
        .map(|r| format!("{} {}", r.ship, r.line))
        .collect();
    assert_eq!(
        lines,
        ["north n1", "north n2", "north n3", "south s1", "north n4", "north n5"]
    );
    assert_eq!(
        notices,
        [
            ("north".to_string(), NoticeEvent::Unreachable),
            ("north".to_string(), NoticeEvent::Back)
        ]
    );
    let resumed = north
        .requests()
        .into_iter()
        .filter(|r| r.contains("follow=1") && r.contains("since="))
        .count();
    assert!(resumed >= 1, "{:?}", north.requests());
}
