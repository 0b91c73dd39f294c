//! Passing webhook events on to the other ships.

use std::time::{Duration, Instant};

use bytes::Bytes;
use hmac::{Hmac, Mac};
use hyper::header::{HeaderMap, HeaderValue};
use sha2::Sha256;
use starphleet_phleet::{verify, Forge, HookSecret, Peer, PeerClient, PeerError, FORWARDED_HEADER};

use crate::common::{dead_port, token, FakeShip, Silent, TOKEN};

const SECRET: &str = "phleet-webhook-secret";

fn signed(body: &[u8]) -> HeaderMap {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(body);
    let sig = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    let mut h = HeaderMap::new();
    h.insert("x-hub-signature-256", HeaderValue::from_str(&sig).unwrap());
    h.insert("x-github-event", HeaderValue::from_static("push"));
    h.insert("content-type", HeaderValue::from_static("application/json"));
    h.insert("cookie", HeaderValue::from_static("session=private"));
    h
}

#[tokio::test]
async fn events_reach_every_other_ship_once_still_signed() {
    let north = FakeShip::start("north", Some(TOKEN)).await;
    let south = FakeShip::start("south", Some(TOKEN)).await;
    let east = FakeShip::start("east", Some(TOKEN)).await;
    let dead = dead_port().await;
    let silent = Silent::start().await;
    let peers = vec![
        north.peer(),
        south.peer(),
        east.peer(),
        Peer::new("west", format!("http://{dead}")),
        Peer::new("hang", format!("http://{}", silent.addr)),
    ];
    let body = Bytes::from_static(
        br#"{"ref":"refs/heads/main","repository":{"clone_url":"https://git.example/echo.git"}}"#,
    );
    let headers = signed(&body);
    let client = PeerClient::with_timeout(Some(&token()), Duration::from_millis(500));

    let started = Instant::now();
    let sent = client
        .forward_hook("north", &peers, &headers, body.clone())
        .await;
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    let outcome: Vec<(&str, bool)> = sent
        .iter()
        .map(|(p, r)| (p.name.as_str(), r.is_ok()))
        .collect();
    assert_eq!(
        outcome,
        [
            ("south", true),
            ("east", true),
            ("west", false),
            ("hang", false)
        ]
    );
    assert!(matches!(sent[2].1, Err(PeerError::Refused { .. })));
    assert!(matches!(sent[3].1, Err(PeerError::TimedOut { .. })));

    assert!(north.hooks().is_empty(), "not sent to itself");
    let secret = HookSecret::new(SECRET).unwrap();
    for ship in [&south, &east] {
        let hooks = ship.hooks();
        assert_eq!(hooks.len(), 1);
        let (h, b) = &hooks[0];
        assert_eq!(b, &body);
        assert_eq!(h.get(FORWARDED_HEADER).unwrap(), "north");
        assert_eq!(h.get("x-github-event").unwrap(), "push");
        assert!(
            h.get("cookie").is_none(),
            "only the event's own headers travel"
        );
        assert_eq!(
            verify(h, b, &secret),
            Ok(Forge::GitHub),
            "still verifies there"
        );
    }

    // A ship that receives a forwarded event does not pass it on again.
    let (h, b) = south.hooks().remove(0);
    assert!(client.forward_hook("south", &peers, &h, b).await.is_empty());
    assert_eq!(east.hooks().len(), 1);
}
