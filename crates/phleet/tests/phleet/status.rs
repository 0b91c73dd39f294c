//! `status_all` and the phleet view from real answers.

use std::time::{Duration, Instant};

use starphleet_phleet::{phleet_view, render_text, Peer, PeerClient, PeerError, PeerStatus};

use crate::common::{dead_port, token, FakeShip, Silent, Slow, TOKEN};

fn status_json(ship: &str, hq: &str, app: &str) -> String {
    serde_json::json!({
        "ship": ship, "ship_id": "id", "headquarters": "file:///hq",
        "headquarters_commit": hq, "errors": [], "sampled_at_ms": 1,
        "services": [{
            "name": "echo", "state": "serving", "version": format!("key-{ship}"),
            "app_commit": app.repeat(40), "order_revision": "r".repeat(40),
            "publish": [], "error": null, "restarts": 0, "routes": [],
            "containers": [{"id": "c1", "ip": "10.0.0.2", "pid": 1, "running": true, "started_at_ms": 1}],
            "deploys": [{"key": "k", "app_commit": app, "version_label": "l",
                         "started_at_ms": 1, "steps": [], "outcome": "serving"}]
        }]
    })
    .to_string()
}

fn reason(answers: &[(Peer, PeerStatus)], name: &str) -> PeerError {
    match &answers.iter().find(|(p, _)| p.name == name).unwrap().1 {
        PeerStatus::Unreachable { reason } => reason.clone(),
        PeerStatus::Reachable(s) => panic!("{name} answered: {s:?}"),
    }
}

#[tokio::test]
async fn every_ship_answers_or_says_why_within_two_seconds() {
    let good = FakeShip::start("north", Some(TOKEN)).await;
    good.set_status(status_json("north", "hq1", "a"));
    let wrong = FakeShip::start("south", Some("another-token-0123456789")).await;
    let junk = FakeShip::start("junk", Some(TOKEN)).await;
    junk.set_status("<html>not a ship</html>");
    let dead = dead_port().await;
    let silent = Silent::start().await;
    // Headers come in about half a second, then the body crawls for seconds.
    let big = status_json("crawl", &"h".repeat(600), "c");
    let crawling = Slow::start(big, Duration::from_millis(5)).await;
    // Slow but in time: a short answer over a few hundred milliseconds.
    let short = serde_json::json!({"ship": "tortoise", "headquarters_commit": "hq1"}).to_string();
    let tortoise = Slow::start(short, Duration::from_millis(2)).await;

    let peers = vec![
        good.peer(),
        wrong.peer(),
        junk.peer(),
        Peer::new("east", format!("http://{dead}")),
        Peer::new("west", format!("http://{}", silent.addr)),
        Peer::new("crawl", format!("http://{}", crawling.addr)),
        Peer::new("tortoise", format!("http://{}", tortoise.addr)),
        Peer::new("typo", "10.1.0.99:9797"),
    ];
    let client = PeerClient::new(Some(&token()));
    let started = Instant::now();
    let answers = client.status_all(&peers).await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_millis(2500),
        "status_all took {took:?}"
    );
    assert_eq!(answers.len(), peers.len());
    assert_eq!(
        answers
            .iter()
            .map(|(p, _)| p.name.as_str())
            .collect::<Vec<_>>(),
        ["north", "south", "junk", "east", "west", "crawl", "tortoise", "typo"]
    );

    match &answers[0].1 {
        PeerStatus::Reachable(s) => {
            assert_eq!(s.ship, "north");
            assert_eq!(s.headquarters_commit.as_deref(), Some("hq1"));
            assert_eq!(s.services[0].containers.len(), 1);
        }
        other => panic!("north: {other:?}"),
    }
    assert!(matches!(&answers[6].1, PeerStatus::Reachable(s) if s.ship == "tortoise"));
    assert_eq!(reason(&answers, "south"), PeerError::Unauthorized);
    assert_eq!(wrong.refused(), 1);
    assert!(matches!(
        reason(&answers, "junk"),
        PeerError::BadAnswer { .. }
    ));
    assert!(matches!(
        reason(&answers, "east"),
        PeerError::Refused { .. }
    ));
    let two = PeerError::TimedOut {
        after: Duration::from_secs(2),
    };
    assert_eq!(reason(&answers, "west"), two);
    assert_eq!(reason(&answers, "crawl"), two);
    assert!(matches!(reason(&answers, "typo"), PeerError::BadUrl { .. }));
    assert_eq!(good.refused(), 0, "the token was sent");
}

#[tokio::test]
async fn connections_are_kept_alive_between_asks() {
    let ship = FakeShip::start("north", None).await;
    let client = PeerClient::with_timeout(None, Duration::from_millis(500));
    for _ in 0..3 {
        assert!(matches!(
            client.status(&ship.peer()).await,
            PeerStatus::Reachable(_)
        ));
    }
    assert_eq!(ship.connections(), 1);
}

#[tokio::test]
async fn the_view_marks_drift_behind_and_unreachable_ships() {
    let north = FakeShip::start("north", Some(TOKEN)).await;
    north.set_status(status_json("north", "hq2", "a"));
    let south = FakeShip::start("south", Some(TOKEN)).await;
    south.set_status(status_json("south", "hq2", "a"));
    let east = FakeShip::start("east", Some(TOKEN)).await;
    east.set_status(status_json("east", "hq1", "b"));
    let dead = dead_port().await;
    let peers = vec![
        north.peer(),
        south.peer(),
        east.peer(),
        Peer::new("west", format!("http://{dead}")),
    ];
    let client = PeerClient::with_timeout(Some(&token()), Duration::from_millis(500));
    let view = phleet_view(Some("hq2"), &client.status_all(&peers).await);
    assert_eq!(view.hq_commit.as_deref(), Some("hq2"));
    let behind: Vec<&str> = view
        .ships
        .iter()
        .filter(|s| s.behind)
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(behind, ["east"]);
    assert!(view.services[0].drift);
    assert!(view.ships[2].services[0].drift);
    assert!(!view.ships[3].reachable);
    let text = render_text(&view);
    assert!(text.contains("BEHIND"), "{text}");
    assert!(text.contains("west   -    http://127.0.0.1:"), "{text}");
    assert!(text.contains("UNREACHABLE: connection refused"), "{text}");
    assert!(text.contains("serving bbbbbbb+rrrr 1/1 DRIFT"), "{text}");
}
