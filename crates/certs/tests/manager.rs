//! The manager as the ship runs it: in a spawned task, with real files, and an ACME server
//! that is not there.

mod common;

use std::fs;
use std::path::PathBuf;

use common::pebble::free_port;
use common::TestCa;
use starphleet_certs::{AcmeConfig, CertManager, CertStatus, ChallengeSet, Challenges, Source};

/// A proxy that must never be asked for anything in these tests.
struct NoChallenges;

impl Challenges for NoChallenges {
    async fn publish(&self, c: &ChallengeSet) -> Result<(), String> {
        panic!("unexpected challenges {c:?}")
    }
    async fn withdraw(&self, c: &ChallengeSet) {
        panic!("unexpected withdrawal {c:?}")
    }
}

async fn ensure_in_task(
    mut manager: CertManager,
    hosts: Vec<String>,
    hq: Option<PathBuf>,
    acme: Option<AcmeConfig>,
) -> (CertManager, Vec<CertStatus>) {
    // The ship spawns it: the future must be Send.
    tokio::spawn(async move {
        let status = manager
            .ensure(&hosts, hq.as_deref(), acme.as_ref(), &NoChallenges)
            .await;
        (manager, status)
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn ship_and_hq_certificates_are_served_without_asking_acme() {
    let state = tempfile::tempdir().unwrap();
    let hq = tempfile::tempdir().unwrap();
    let ca = TestCa::new("Test CA");
    let ship = ca.leaf(&["ship.test"], None);
    fs::create_dir_all(state.path().join("certs")).unwrap();
    fs::write(state.path().join("certs/ship.test.crt"), &ship.chain_pem).unwrap();
    fs::write(state.path().join("certs/ship.test.key"), &ship.key_pem).unwrap();
    let from_hq = ca.leaf(&["*.hq.test"], None);
    fs::create_dir_all(hq.path().join("certs")).unwrap();
    fs::write(
        hq.path().join("certs/_wildcard.hq.test.crt"),
        &from_hq.chain_pem,
    )
    .unwrap();
    fs::write(
        hq.path().join("certs/_wildcard.hq.test.key"),
        &from_hq.key_pem,
    )
    .unwrap();

    // ACME is configured, but at a port where nothing listens: it must not be needed.
    let acme = AcmeConfig::new(
        "ops@starphleet.test",
        Some(format!("https://127.0.0.1:{}/dir", free_port())),
    );
    let hosts = vec!["ship.test".into(), "a.hq.test".into(), "SHIP.test".into()];
    let (_, status) = ensure_in_task(
        CertManager::new(state.path()),
        hosts,
        Some(hq.path().to_path_buf()),
        Some(acme),
    )
    .await;
    assert_eq!(status.len(), 2, "hosts are deduplicated: {status:#?}");
    let (a, s) = (&status[0], &status[1]);
    assert_eq!(
        (a.host.as_str(), a.source),
        ("a.hq.test", Some(Source::Headquarters))
    );
    assert_eq!(
        a.files.as_ref().unwrap().cert,
        state.path().join("certs/hq/_wildcard.hq.test.crt")
    );
    assert_eq!(
        (s.host.as_str(), s.source),
        ("ship.test", Some(Source::Ship))
    );
    for st in &status {
        assert_eq!(
            (st.error.as_ref(), st.next_renewal),
            (None, None),
            "{st:#?}"
        );
        assert_eq!(
            st.not_after,
            Some(67_090_118_400),
            "rcgen's default notAfter, 4096-01-01"
        );
    }
    assert!(!state.path().join("acme/account.json").exists());
}

#[tokio::test]
async fn without_acme_a_missing_host_gets_the_help_and_no_renewal() {
    let state = tempfile::tempdir().unwrap();
    let (_, status) = ensure_in_task(
        CertManager::new(state.path()),
        vec!["app.test".into()],
        None,
        None,
    )
    .await;
    let s = &status[0];
    assert_eq!(
        (s.source, s.files.as_ref(), s.next_renewal),
        (None, None, None)
    );
    let help = s.error.as_deref().unwrap();
    assert!(
        help.starts_with("no certificate for app.test; add one of:"),
        "{help}"
    );
}

#[tokio::test]
async fn an_unreachable_acme_server_is_named_and_retried_after_a_minute() {
    let state = tempfile::tempdir().unwrap();
    let directory = format!("https://127.0.0.1:{}/dir", free_port());
    let acme = AcmeConfig::new("ops@starphleet.test", Some(directory.clone()));
    let hosts = vec!["app.test".to_string()];
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let (manager, status) = ensure_in_task(
        CertManager::new(state.path()),
        hosts.clone(),
        None,
        Some(acme.clone()),
    )
    .await;
    let s = &status[0];
    let error = s.error.as_deref().unwrap();
    assert!(
        error.starts_with(&format!(
            "ordering over ACME failed: creating the account at the ACME server {directory} failed: "
        )),
        "{error}"
    );
    assert!(error.contains("Connection refused"), "{error}");
    let retry = s.next_renewal.unwrap();
    assert!(
        (before + 60..=before + 62).contains(&retry),
        "{retry} vs {before}"
    );

    // Inside the back-off the server is not asked again (it would fail the same way, and
    // the error would then say so with a later retry time).
    let (_, again) = ensure_in_task(manager, hosts, None, Some(acme)).await;
    assert_eq!(again[0].next_renewal, Some(retry));
    assert!(again[0]
        .error
        .as_deref()
        .unwrap()
        .contains("Connection refused"));
}
