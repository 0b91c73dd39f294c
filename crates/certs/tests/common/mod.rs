//! Test helpers: certificates made with rcgen, keys converted with the openssl CLI.

#![allow(dead_code)] // each test file uses a part

pub mod pebble;

use std::io::Write;
use std::process::{Command, Stdio};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, KeyUsagePurpose};

/// A throw-away CA that signs leaf certificates.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A leaf certificate: the chain (leaf, then the CA) and the key, both PEM.
pub struct Leaf {
    pub chain_pem: String,
    pub leaf_pem: String,
    pub key_pem: String,
    pub leaf_der: Vec<u8>,
}

/// Validity as (year, month, day) pairs; `None` keeps rcgen's default (1975 to 4096).
pub type Dates = Option<((i32, u8, u8), (i32, u8, u8))>;

impl TestCa {
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        TestCa { issuer }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    pub fn der(&self) -> Vec<u8> {
        self.issuer.der().to_vec()
    }

    /// A leaf for `names` with a fresh ECDSA P-256 key.
    pub fn leaf(&self, names: &[&str], dates: Dates) -> Leaf {
        self.leaf_with_key(names, dates, &KeyPair::generate().unwrap())
    }

    /// A leaf for `names` with `key`.
    pub fn leaf_with_key(&self, names: &[&str], dates: Dates, key: &KeyPair) -> Leaf {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        if let Some((from, to)) = dates {
            params.not_before = rcgen::date_time_ymd(from.0, from.1, from.2);
            params.not_after = rcgen::date_time_ymd(to.0, to.1, to.2);
        }
        let cert = params.signed_by(key, &self.issuer).unwrap();
        Leaf {
            chain_pem: format!("{}{}", cert.pem(), self.issuer.pem()),
            leaf_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            leaf_der: cert.der().to_vec(),
        }
    }
}

/// Runs `openssl ARGS` on `input` (bounded by `timeout`), returning its stdout.
pub fn openssl(args: &[&str], input: &[u8]) -> Vec<u8> {
    let mut child = Command::new("timeout")
        .arg("30")
        .arg("openssl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running openssl (apt-get install openssl)");
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}
