//! `GET /phleet/versions` and the rollout gate fed by real answers.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use starphleet_phleet::{
    may_start, Gate, Peer, PeerClient, PeerError, Reachability, RolloutSettings, VersionId,
};

use crate::common::{dead_port, token, FakeShip, TOKEN};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[tokio::test]
async fn later_waves_decide_from_what_earlier_ships_answer() {
    let s1 = FakeShip::start("s1", Some(TOKEN)).await;
    // s1's clock runs a minute ahead; it has served v2 for 20 s by its clock.
    let its_now = now_ms() + 60_000;
    s1.set_versions(
        serde_json::json!({
            "ship": "s1",
            "sampled_at_ms": its_now,
            "services": {"echo": {
                "current": {"version": "v2", "healthy_since_ms": its_now - 20_000},
                "failed": [{"version": "v1", "at_ms": its_now - 100_000, "why": "crash loop"}]
            }},
            "some_future_field": true
        })
        .to_string(),
    );
    let dead = dead_port().await;
    let peers = vec![
        s1.peer(),
        Peer::new("s2", format!("http://{dead}")),
        Peer::new("s3", "http://127.0.0.1:1"),
    ];
    let client = PeerClient::with_timeout(Some(&token()), Duration::from_millis(500));

    let v = client.versions(&s1.peer()).await.unwrap();
    let since = v.services["echo"]
        .current
        .as_ref()
        .unwrap()
        .healthy_since_ms;
    let served_for = now_ms().saturating_sub(since);
    assert!(
        (19_000..22_000).contains(&served_for),
        "moved to our clock: served for {served_for} ms"
    );

    let settings = RolloutSettings {
        wave: Some(1),
        ..Default::default()
    };
    let version = VersionId {
        service: "echo".into(),
        version: "v2".into(),
    };
    let mut reach = Reachability::default();
    let asked = now_ms();
    let answers = client.versions_all(&peers[..2]).await;
    assert!(matches!(answers[1].1, Err(PeerError::Refused { .. })));
    let observed = reach.observe(answers, asked).for_service("echo");
    // s1 has soaked; s2 is unreachable, so s3 waits for it for the wait time, then goes.
    let gate = may_start(
        "s3",
        &peers,
        &settings,
        &version,
        &observed,
        now_ms(),
        asked,
    );
    match &gate {
        Gate::Wait {
            until_ms: Some(t),
            why,
        } => {
            assert_eq!(*t, asked + 120_000);
            assert!(
                why.starts_with("s2 (wave 2) is unreachable (connection refused"),
                "{why}"
            );
        }
        other => panic!("{other:?}"),
    }
    let later = asked + 120_000;
    assert_eq!(
        may_start("s3", &peers, &settings, &version, &observed, later, asked),
        Gate::Go
    );
    // s2 may start it: s1 served it healthy long enough.
    assert_eq!(
        may_start(
            "s2",
            &peers,
            &settings,
            &version,
            &observed,
            now_ms(),
            asked
        ),
        Gate::Go
    );
    // v1 failed on s1: never on later waves.
    let v1 = VersionId {
        service: "echo".into(),
        version: "v1".into(),
    };
    assert!(matches!(
        may_start("s2", &peers, &settings, &v1, &observed, now_ms(), asked),
        Gate::Never { .. }
    ));
}

#[tokio::test]
async fn versions_need_the_token() {
    let s1 = FakeShip::start("s1", Some(TOKEN)).await;
    let client = PeerClient::with_timeout(None, Duration::from_millis(500));
    assert_eq!(
        client.versions(&s1.peer()).await,
        Err(PeerError::Unauthorized)
    );
    assert_eq!(s1.refused(), 1);
}
