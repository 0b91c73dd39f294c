//! Resolution order ship → HQ → ACME → missing, with real files in a temporary folder.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::{Leaf, TestCa};
use starphleet_certs::{hq_candidates, resolve, Resolved, Source};

const NOW: u64 = 1_893_456_000;

struct Dirs {
    _tmp: tempfile::TempDir,
    certs: PathBuf,
    hq: PathBuf,
    acme: PathBuf,
}

fn dirs() -> Dirs {
    let tmp = tempfile::tempdir().unwrap();
    let d = Dirs {
        certs: tmp.path().join("state/certs"),
        hq: tmp.path().join("hq"),
        acme: tmp.path().join("state/acme"),
        _tmp: tmp,
    };
    for p in [&d.certs, &d.hq.join("certs"), &d.acme] {
        fs::create_dir_all(p).unwrap();
    }
    d
}

fn put(dir: &Path, stem: &str, leaf: &Leaf) {
    fs::write(dir.join(format!("{stem}.crt")), &leaf.chain_pem).unwrap();
    fs::write(dir.join(format!("{stem}.key")), &leaf.key_pem).unwrap();
}

fn remove(dir: &Path, stem: &str) {
    fs::remove_file(dir.join(format!("{stem}.crt"))).unwrap();
    fs::remove_file(dir.join(format!("{stem}.key"))).unwrap();
}

fn run(d: &Dirs, host: &str) -> Resolved {
    let files = hq_candidates(&[host.to_string()]);
    resolve(host, &d.certs, Some((&d.hq, &files)), &d.acme, NOW)
}

/// The source, the served files and the leaf's fingerprint, or panics with the outcome.
fn found(r: &Resolved) -> (Source, &Path, &Path, &str, &[String]) {
    match r {
        Resolved::Found {
            source,
            cert_path,
            key_path,
            cert,
            problems,
        } => (*source, cert_path, key_path, &cert.fingerprint, problems),
        other => panic!("expected a certificate, got {other:?}"),
    }
}

fn fingerprint(leaf: &Leaf) -> String {
    starphleet_certs::load(leaf.chain_pem.as_bytes(), leaf.key_pem.as_bytes())
        .unwrap()
        .fingerprint
}

#[test]
fn the_ship_wins_then_headquarters_then_acme_then_help() {
    let d = dirs();
    let ca = TestCa::new("Test CA");
    let (ship, hq, acme) = (
        ca.leaf(&["app.test"], None),
        ca.leaf(&["app.test"], None),
        ca.leaf(&["app.test"], None),
    );
    put(&d.certs, "app.test", &ship);
    put(&d.hq.join("certs"), "app.test", &hq);
    put(&d.acme, "app.test", &acme);

    let r = run(&d, "app.test");
    let (source, crt, key, fp, problems) = found(&r);
    assert_eq!(source, Source::Ship);
    assert_eq!(
        (crt, key),
        (
            &*d.certs.join("app.test.crt"),
            &*d.certs.join("app.test.key")
        )
    );
    assert_eq!(fp, fingerprint(&ship));
    assert!(problems.is_empty(), "{problems:?}");

    remove(&d.certs, "app.test");
    let r = run(&d, "App.Test");
    let (source, crt, key, fp, _) = found(&r);
    assert_eq!(source, Source::Headquarters);
    assert_eq!(fp, fingerprint(&hq));
    // Served from a private copy in the state dir, never from HQ itself.
    assert_eq!(crt, d.certs.join("hq/app.test.crt"));
    assert_eq!(key, d.certs.join("hq/app.test.key"));
    assert_eq!(fs::read_to_string(crt).unwrap(), hq.chain_pem);
    assert_eq!(fs::read_to_string(key).unwrap(), hq.key_pem);
    for f in [crt, key] {
        assert_eq!(fs::metadata(f).unwrap().permissions().mode() & 0o777, 0o600);
    }

    remove(&d.hq.join("certs"), "app.test");
    let r = run(&d, "app.test");
    let (source, crt, _, fp, _) = found(&r);
    assert_eq!(source, Source::Acme);
    assert_eq!(crt, d.acme.join("app.test.crt"));
    assert_eq!(fp, fingerprint(&acme));

    remove(&d.acme, "app.test");
    match run(&d, "app.test") {
        Resolved::Missing { help, problems } => {
            assert!(problems.is_empty(), "{problems:?}");
            assert!(
                help.starts_with("no certificate for app.test; add one of:"),
                "{help}"
            );
            assert!(
                help.contains(&format!(
                    "1. {}/app.test.crt and app.test.key",
                    d.certs.display()
                )),
                "{help}"
            );
            assert!(
                help.contains("2. certs/app.test.crt and certs/app.test.key in headquarters"),
                "{help}"
            );
            assert!(help.contains("3. set STARPHLEET_ACME_EMAIL="), "{help}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_broken_candidate_is_reported_and_passed_over() {
    let d = dirs();
    let ca = TestCa::new("Test CA");
    let expired = ca.leaf(&["app.test"], Some(((2020, 1, 1), (2021, 1, 1))));
    put(&d.certs, "app.test", &expired);
    let wrong = ca.leaf(&["other.test"], None);
    put(&d.hq.join("certs"), "app.test", &wrong);
    let good = ca.leaf(&["app.test"], None);
    put(&d.acme, "app.test", &good);

    let r = run(&d, "app.test");
    let (source, _, _, _, problems) = found(&r);
    assert_eq!(source, Source::Acme);
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(
        problems[0].contains("app.test.crt") && problems[0].contains("expired on 2021-01-01"),
        "{}",
        problems[0]
    );
    assert!(
        problems[1].starts_with("headquarters' certs/app.test.crt + certs/app.test.key: the certificate covers other.test but not app.test"),
        "{}",
        problems[1]
    );
    // Nothing was copied from HQ for a certificate that cannot serve.
    assert!(!d.certs.join("hq/app.test.crt").exists());

    // A .crt without its .key is named too.
    remove(&d.acme, "app.test");
    fs::remove_file(d.certs.join("app.test.key")).unwrap();
    match run(&d, "app.test") {
        Resolved::Missing { problems, .. } => {
            assert!(
                problems[0].ends_with("add the key beside it, or remove it"),
                "{problems:?}"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_symlink_in_headquarters_is_refused() {
    let d = dirs();
    let ca = TestCa::new("Test CA");
    let leaf = ca.leaf(&["app.test"], None);
    // The real files lie outside HQ; HQ only links to them.
    let outside = d.hq.parent().unwrap().join("outside");
    fs::create_dir_all(&outside).unwrap();
    put(&outside, "app.test", &leaf);
    std::os::unix::fs::symlink(
        outside.join("app.test.crt"),
        d.hq.join("certs/app.test.crt"),
    )
    .unwrap();
    std::os::unix::fs::symlink(
        outside.join("app.test.key"),
        d.hq.join("certs/app.test.key"),
    )
    .unwrap();

    match run(&d, "app.test") {
        Resolved::Missing { problems, .. } => {
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert!(problems[0].contains("symlink"), "{}", problems[0]);
        }
        other => panic!("a symlinked HQ certificate was used: {other:?}"),
    }
    assert!(!d.certs.join("hq/app.test.crt").exists());

    // A symlinked certs/ folder is refused the same way.
    fs::remove_dir_all(d.hq.join("certs")).unwrap();
    std::os::unix::fs::symlink(&outside, d.hq.join("certs")).unwrap();
    match run(&d, "app.test") {
        Resolved::Missing { problems, .. } => {
            assert!(problems[0].contains("symlink"), "{problems:?}")
        }
        other => panic!("a symlinked HQ folder was used: {other:?}"),
    }
}

#[test]
fn wildcard_files_serve_their_hosts_and_the_wildcard_route() {
    let d = dirs();
    let ca = TestCa::new("Test CA");
    let wild = ca.leaf(&["*.example.com"], None);
    put(&d.certs, "_wildcard.example.com", &wild);

    for host in ["a.example.com", "*.example.com"] {
        let r = run(&d, host);
        let (source, crt, _, _, _) = found(&r);
        assert_eq!(source, Source::Ship, "{host}");
        assert_eq!(crt, d.certs.join("_wildcard.example.com.crt"), "{host}");
    }
    // One label deep only.
    assert!(matches!(
        run(&d, "a.b.example.com"),
        Resolved::Missing { .. }
    ));

    // A host's own file beats the wildcard; HQ wildcards work and are copied under their name.
    let own = ca.leaf(&["a.example.com"], None);
    put(&d.certs, "a.example.com", &own);
    assert_eq!(found(&run(&d, "a.example.com")).3, fingerprint(&own));
    remove(&d.certs, "_wildcard.example.com");
    put(&d.hq.join("certs"), "_wildcard.example.com", &wild);
    let r = run(&d, "b.example.com");
    let (source, crt, _, _, _) = found(&r);
    assert_eq!(source, Source::Headquarters);
    assert_eq!(crt, d.certs.join("hq/_wildcard.example.com.crt"));

    // ACME never serves a wildcard route, and the help says so.
    remove(&d.hq.join("certs"), "_wildcard.example.com");
    match run(&d, "*.example.com") {
        Resolved::Missing { help, .. } => {
            assert!(help.contains("_wildcard.example.com.crt"), "{help}");
            assert!(
                help.contains("ACME cannot be used for a wildcard host"),
                "{help}"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_host_that_is_no_name_is_refused_without_touching_files() {
    let d = dirs();
    match resolve("../../etc/passwd", &d.certs, None, &d.acme, NOW) {
        Resolved::Missing { help, .. } => assert!(help.contains("is not a host name"), "{help}"),
        other => panic!("{other:?}"),
    }
}
