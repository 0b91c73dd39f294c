//! Loading and checking PEM certificates made here with rcgen (and keys re-encoded by openssl).

mod common;

use common::{openssl, TestCa};
use rcgen::KeyPair;
use sha2::{Digest, Sha256};
use starphleet_certs::{load, CertError};

/// 2030-01-01, a time every default rcgen certificate is valid at.
const NOW: u64 = 1_893_456_000;

#[test]
fn a_good_chain_loads_with_its_names_dates_and_fingerprint() {
    let ca = TestCa::new("Test CA");
    let leaf = ca.leaf(
        &["App.test", "*.apps.test"],
        Some(((2025, 1, 1), (2035, 1, 1))),
    );
    let cert = load(leaf.chain_pem.as_bytes(), leaf.key_pem.as_bytes()).unwrap();
    assert_eq!(cert.chain.len(), 2);
    assert_eq!(cert.chain[1].as_ref(), ca.der().as_slice());
    assert_eq!(cert.names, ["app.test", "*.apps.test"]);
    assert_eq!(cert.not_before, 1_735_689_600);
    assert_eq!(cert.not_after, 2_051_222_400);
    assert_eq!(
        cert.fingerprint,
        hex::encode(Sha256::digest(&leaf.leaf_der))
    );
    cert.check("app.test", NOW).unwrap();
    cert.check("x.apps.test", NOW).unwrap();
    assert_eq!(
        cert.check("other.test", NOW),
        Err(CertError::WrongNames {
            host: "other.test".into(),
            names: vec!["app.test".into(), "*.apps.test".into()],
        })
    );
}

#[test]
fn a_key_of_another_certificate_is_refused() {
    let ca = TestCa::new("Test CA");
    let leaf = ca.leaf(&["app.test"], None);
    let other = KeyPair::generate().unwrap().serialize_pem();
    let e = load(leaf.chain_pem.as_bytes(), other.as_bytes()).unwrap_err();
    assert_eq!(e, CertError::KeyMismatch);
    assert!(
        e.to_string()
            .starts_with("the key does not match the certificate"),
        "{e}"
    );
    // The CA's key matches the CA, not the leaf first in the file.
    let swapped_order = format!("{}{}", ca.pem(), leaf.leaf_pem);
    assert_eq!(
        load(swapped_order.as_bytes(), leaf.key_pem.as_bytes()).unwrap_err(),
        CertError::KeyMismatch
    );
}

#[test]
fn expired_and_future_certificates_are_refused_with_the_date() {
    let ca = TestCa::new("Test CA");
    let expired = ca.leaf(&["app.test"], Some(((2020, 1, 1), (2021, 1, 1))));
    let cert = load(expired.chain_pem.as_bytes(), expired.key_pem.as_bytes()).unwrap();
    let e = cert.check("app.test", NOW).unwrap_err();
    assert_eq!(
        e,
        CertError::Expired {
            not_after: 1_609_459_200
        }
    );
    assert!(
        e.to_string().contains("expired on 2021-01-01T00:00:00Z"),
        "{e}"
    );

    let future = ca.leaf(&["app.test"], Some(((2090, 1, 1), (2091, 1, 1))));
    let cert = load(future.chain_pem.as_bytes(), future.key_pem.as_bytes()).unwrap();
    let e = cert.check("app.test", NOW).unwrap_err();
    assert!(matches!(e, CertError::NotYetValid { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("not valid before 2090-01-01T00:00:00Z"),
        "{e}"
    );
}

#[test]
fn wrong_names_are_listed() {
    let ca = TestCa::new("Test CA");
    let leaf = ca.leaf(&["a.test", "b.test"], None);
    let cert = load(leaf.chain_pem.as_bytes(), leaf.key_pem.as_bytes()).unwrap();
    let e = cert.check("app.test", NOW).unwrap_err();
    assert_eq!(
        e.to_string(),
        "the certificate covers a.test, b.test but not app.test; get one that names app.test"
    );
}

#[test]
fn garbage_swapped_files_and_damaged_pem_are_named() {
    let ca = TestCa::new("Test CA");
    let leaf = ca.leaf(&["app.test"], None);
    let (crt, key) = (leaf.chain_pem.as_bytes(), leaf.key_pem.as_bytes());

    assert_eq!(load(b"hello", key).unwrap_err(), CertError::NoCertificate);
    assert_eq!(load(b"", key).unwrap_err(), CertError::NoCertificate);
    assert_eq!(load(crt, b"hello").unwrap_err(), CertError::NoKey);
    assert_eq!(load(key, crt).unwrap_err(), CertError::KeyInCertificateFile);
    let e = load(key, crt).unwrap_err().to_string();
    assert!(e.contains("swapped"), "{e}");

    let damaged = "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n";
    let e = load(damaged.as_bytes(), key).unwrap_err();
    assert!(
        matches!(
            e,
            CertError::BadPem {
                file: "certificate",
                ..
            }
        ),
        "{e:?}"
    );

    // Valid PEM around bytes that are not a certificate.
    let not_x509 = "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n";
    let e = load(not_x509.as_bytes(), key).unwrap_err();
    assert!(
        matches!(e, CertError::BadCertificate { index: 1, .. }),
        "{e:?}"
    );
    let chain_with_junk = format!("{}{not_x509}", leaf.leaf_pem);
    let e = load(chain_with_junk.as_bytes(), key).unwrap_err();
    assert!(
        matches!(e, CertError::BadCertificate { index: 2, .. }),
        "{e:?}"
    );
}

#[test]
fn keys_in_pkcs8_sec1_and_pkcs1_forms_load() {
    let ca = TestCa::new("Test CA");

    // ECDSA: rcgen writes PKCS#8; openssl re-encodes it as SEC1.
    let leaf = ca.leaf(&["app.test"], None);
    assert!(leaf.key_pem.contains("BEGIN PRIVATE KEY"));
    load(leaf.chain_pem.as_bytes(), leaf.key_pem.as_bytes()).unwrap();
    let sec1 = openssl(&["ec"], leaf.key_pem.as_bytes());
    assert!(String::from_utf8_lossy(&sec1).contains("BEGIN EC PRIVATE KEY"));
    load(leaf.chain_pem.as_bytes(), &sec1).unwrap();

    // RSA: openssl makes the key (ring cannot), rcgen signs the certificate for it, and
    // openssl re-encodes the key as PKCS#1.
    let rsa_pkcs8 = openssl(
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ],
        b"",
    );
    let rsa = KeyPair::from_pem(std::str::from_utf8(&rsa_pkcs8).unwrap()).unwrap();
    let leaf = ca.leaf_with_key(&["rsa.test"], None, &rsa);
    let cert = load(leaf.chain_pem.as_bytes(), &rsa_pkcs8).unwrap();
    cert.check("rsa.test", NOW).unwrap();
    let pkcs1 = openssl(&["rsa", "-traditional"], &rsa_pkcs8);
    assert!(String::from_utf8_lossy(&pkcs1).contains("BEGIN RSA PRIVATE KEY"));
    load(leaf.chain_pem.as_bytes(), &pkcs1).unwrap();

    // The right form of the wrong key is still refused.
    let other = ca.leaf(&["app.test"], None);
    assert_eq!(
        load(
            leaf.chain_pem.as_bytes(),
            &openssl(&["ec"], other.key_pem.as_bytes())
        )
        .unwrap_err(),
        CertError::KeyMismatch
    );
}

#[test]
fn a_certificate_webpki_refuses_is_named_as_the_certificate_not_the_key() {
    // A critical extension no TLS client knows (here: RFC 8737's acmeIdentifier).
    let key = KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["app.test".to_string()]).unwrap();
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(&[7; 32])];
    let cert = params.self_signed(&key).unwrap();
    let e = load(cert.pem().as_bytes(), key.serialize_pem().as_bytes()).unwrap_err();
    match &e {
        CertError::BadCertificate { index: 1, detail } => {
            assert!(detail.contains("UnsupportedCriticalExtension"), "{e}")
        }
        other => panic!("{other:?}"),
    }
}
