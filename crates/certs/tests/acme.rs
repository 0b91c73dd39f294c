//! ACME end to end against a real ACME server (pebble), with real HTTP-01 and TLS-ALPN-01
//! responders standing in for the proxy, on ports of their own.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use common::pebble::Pebble;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use starphleet_certs::{
    load, AcmeConfig, CertManager, CertStatus, ChallengeKind, ChallengeSet, Challenges, Source,
};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// What a proxy would hold: the published challenges, answered on two real listeners.
#[derive(Default)]
struct ProxyState {
    http01: Mutex<BTreeMap<String, String>>,
    alpn: Mutex<HashMap<String, Arc<CertifiedKey>>>,
    answer_http: AtomicBool,
    answer_alpn: AtomicBool,
    published: Mutex<Vec<ChallengeSet>>,
    withdrawn: Mutex<Vec<ChallengeSet>>,
}

#[derive(Clone)]
struct Proxy(Arc<ProxyState>);

impl Challenges for Proxy {
    async fn publish(&self, c: &ChallengeSet) -> Result<(), String> {
        // Load the TLS-ALPN-01 certificates from their files, as the proxy would.
        let mut loaded = Vec::new();
        for (host, crt, key) in &c.tls_alpn01 {
            let chain = CertificateDer::pem_file_iter(crt)
                .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("{}: {e}", crt.display()))?;
            let key =
                PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
            // Not CertifiedKey::from_der: its key check parses the certificate with webpki,
            // which refuses the critical acmeIdentifier extension RFC 8737 requires.
            let key = rustls::crypto::ring::default_provider()
                .key_provider
                .load_private_key(key)
                .map_err(|e| e.to_string())?;
            let ck = CertifiedKey::new(chain, key);
            loaded.push((host.clone(), Arc::new(ck)));
        }
        self.0.alpn.lock().unwrap().extend(loaded);
        self.0
            .http01
            .lock()
            .unwrap()
            .extend(c.http01.iter().map(|(k, v)| (k.clone(), v.clone())));
        self.0.published.lock().unwrap().push(c.clone());
        Ok(())
    }

    async fn withdraw(&self, c: &ChallengeSet) {
        let mut http = self.0.http01.lock().unwrap();
        for token in c.http01.keys() {
            http.remove(token);
        }
        let mut alpn = self.0.alpn.lock().unwrap();
        for (host, _, _) in &c.tls_alpn01 {
            alpn.remove(host);
        }
        self.0.withdrawn.lock().unwrap().push(c.clone());
    }
}

#[derive(Debug)]
struct AlpnResolver(Arc<ProxyState>);

impl std::fmt::Debug for ProxyState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProxyState")
    }
}

impl ResolvesServerCert for AlpnResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let acme = hello.alpn()?.any(|p| p == b"acme-tls/1");
        if !acme || !self.0.answer_alpn.load(Ordering::SeqCst) {
            return None;
        }
        let host = hello.server_name()?.to_string();
        self.0.alpn.lock().unwrap().get(&host).cloned()
    }
}

/// The two responders; aborted on drop.
struct Responders {
    http_port: u16,
    tls_port: u16,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Responders {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn responders(proxy: &Proxy) -> Responders {
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tls = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (http_port, tls_port) = (
        http.local_addr().unwrap().port(),
        tls.local_addr().unwrap().port(),
    );

    let state = proxy.0.clone();
    let http_task = tokio::spawn(async move {
        while let Ok((stream, _)) = http.accept().await {
            let state = state.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let answer = req
                        .uri()
                        .path()
                        .strip_prefix("/.well-known/acme-challenge/")
                        .filter(|_| state.answer_http.load(Ordering::SeqCst))
                        .and_then(|token| state.http01.lock().unwrap().get(token).cloned());
                    async move {
                        Ok::<_, std::convert::Infallible>(match answer {
                            Some(body) => Response::new(Full::new(Bytes::from(body))),
                            None => Response::builder()
                                .status(StatusCode::NOT_FOUND)
                                .body(Full::new(Bytes::from_static(b"no such challenge")))
                                .unwrap(),
                        })
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });

    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_cert_resolver(Arc::new(AlpnResolver(proxy.0.clone())));
    config.alpn_protocols = vec![b"acme-tls/1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let tls_task = tokio::spawn(async move {
        while let Ok((stream, _)) = tls.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // RFC 8737: the handshake is the answer; then the connection closes.
                let _ =
                    tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await;
            });
        }
    });
    Responders {
        http_port,
        tls_port,
        tasks: vec![http_task, tls_task],
    }
}

/// A proxy answering both kinds, its responders, and pebble validating against them.
async fn setup() -> (Proxy, Responders, Pebble) {
    let proxy = Proxy(Arc::new(ProxyState::default()));
    proxy.0.answer_http.store(true, Ordering::SeqCst);
    proxy.0.answer_alpn.store(true, Ordering::SeqCst);
    let r = responders(&proxy).await;
    let pebble = Pebble::start(r.http_port, r.tls_port);
    (proxy, r, pebble)
}

fn config(pebble: &Pebble, kinds: &[ChallengeKind]) -> AcmeConfig {
    let mut c = AcmeConfig::new("ops@starphleet.test", Some(pebble.directory.clone()));
    c.challenges = kinds.to_vec();
    c.extra_roots = vec![CertificateDer::from(pebble.api_ca_der.clone())];
    c
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// Checks a status is a served ACME certificate for its host, and returns its files.
fn served(s: &CertStatus) -> (std::path::PathBuf, std::path::PathBuf) {
    assert_eq!(s.source, Some(Source::Acme), "{s:#?}");
    assert_eq!(s.error, None, "{s:#?}");
    let files = s.files.clone().expect("files");
    let cert = load(
        &fs::read(&files.cert).unwrap(),
        &fs::read(&files.key).unwrap(),
    )
    .unwrap();
    cert.check(&s.host, now()).unwrap();
    assert_eq!(cert.chain.len(), 2, "leaf and pebble's intermediate");
    assert_eq!(s.fingerprint.as_deref(), Some(cert.fingerprint.as_str()));
    assert_eq!(s.not_after, Some(cert.not_after));
    assert!(s.next_renewal.unwrap() > now() && s.next_renewal.unwrap() < cert.not_after);
    (files.cert, files.key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http01_order_is_stored_privately_and_a_forced_renewal_replaces_it_atomically() {
    let (proxy, _responders, pebble) = setup().await;
    let state = tempfile::tempdir().unwrap();
    let acme = config(&pebble, &[ChallengeKind::Http01]);
    let hosts = vec!["App.Test".to_string()];
    let mut manager = CertManager::new(state.path());

    let status = manager.ensure(&hosts, None, Some(&acme), &proxy).await;
    assert_eq!(status.len(), 1);
    assert_eq!(status[0].host, "app.test");
    let (crt, key) = served(&status[0]);
    assert_eq!(crt, state.path().join("acme/app.test.crt"));
    assert_eq!(key, state.path().join("acme/app.test.key"));
    assert_eq!((mode(&crt), mode(&key)), (0o600, 0o600));
    let account = state.path().join("acme/account.json");
    assert_eq!(mode(&account), 0o600);
    let account_bytes = fs::read(&account).unwrap();
    {
        let published = proxy.0.published.lock().unwrap();
        assert_eq!(published.len(), 1);
        assert_eq!(published[0].http01.len(), 1);
        assert!(published[0].tls_alpn01.is_empty());
        assert_eq!(*proxy.0.withdrawn.lock().unwrap(), *published);
        assert!(
            proxy.0.http01.lock().unwrap().is_empty(),
            "withdrawn from the proxy"
        );
    }

    // Not due: nothing is ordered, the same certificate is reported.
    let again = manager.ensure(&hosts, None, Some(&acme), &proxy).await;
    assert_eq!(again[0].fingerprint, status[0].fingerprint);
    assert_eq!(proxy.0.published.lock().unwrap().len(), 1);

    // A forced renewal while a reader keeps reading the files, as the proxy might.
    let (old_crt, old_key) = (fs::read(&crt).unwrap(), fs::read(&key).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (stop, crt, key) = (stop.clone(), crt.clone(), key.clone());
        std::thread::spawn(move || {
            let (mut crts, mut keys, mut reads) = (HashSet::new(), HashSet::new(), 0u64);
            while !stop.load(Ordering::SeqCst) && reads < 50_000_000 {
                crts.insert(fs::read(&crt).unwrap());
                keys.insert(fs::read(&key).unwrap());
                reads += 1;
            }
            (crts, keys, reads)
        })
    };
    manager.force_renewal("app.test");
    let renewed = manager.ensure(&hosts, None, Some(&acme), &proxy).await;
    stop.store(true, Ordering::SeqCst);
    let (crts, keys, reads) = reader.join().unwrap();

    served(&renewed[0]);
    assert_ne!(renewed[0].fingerprint, status[0].fingerprint);
    let (new_crt, new_key) = (fs::read(&crt).unwrap(), fs::read(&key).unwrap());
    assert_ne!(new_crt, old_crt);
    assert_ne!(new_key, old_key);
    assert!(reads > 10, "the reader read {reads} times");
    let expected_crts: HashSet<_> = [old_crt, new_crt].into();
    let expected_keys: HashSet<_> = [old_key, new_key].into();
    assert!(
        crts.is_subset(&expected_crts),
        "a reader saw a partial .crt ({} versions)",
        crts.len()
    );
    assert!(
        keys.is_subset(&expected_keys),
        "a reader saw a partial .key ({} versions)",
        keys.len()
    );
    assert_eq!((mode(&crt), mode(&key)), (0o600, 0o600));
    assert_eq!(
        fs::read(&account).unwrap(),
        account_bytes,
        "one account per ship"
    );
    assert_eq!(proxy.0.published.lock().unwrap().len(), 2);

    // Nothing else is left in the ACME folder: no temporary files, no challenge files.
    let mut names: Vec<String> = fs::read_dir(state.path().join("acme"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["account.json", "app.test.crt", "app.test.key"]);

    // A new manager (a restarted ship) finds the stored certificate and orders nothing.
    let mut restarted = CertManager::new(state.path());
    let after = restarted.ensure(&hosts, None, Some(&acme), &proxy).await;
    assert_eq!(after[0].fingerprint, renewed[0].fingerprint);
    assert_eq!(proxy.0.published.lock().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn01_orders_each_host_and_removes_the_challenge_certificates() {
    let (proxy, _responders, pebble) = setup().await;
    let state = tempfile::tempdir().unwrap();
    let acme = config(&pebble, &[ChallengeKind::TlsAlpn01]);
    let mut manager = CertManager::new(state.path());

    let status = manager
        .ensure(
            &["b.test".into(), "a.test".into()],
            None,
            Some(&acme),
            &proxy,
        )
        .await;
    let hosts: Vec<&str> = status.iter().map(|s| s.host.as_str()).collect();
    assert_eq!(hosts, ["a.test", "b.test"]);
    for s in &status {
        served(s);
    }
    let published = proxy.0.published.lock().unwrap().clone();
    assert_eq!(published.len(), 2);
    for (set, host) in published.iter().zip(["a.test", "b.test"]) {
        assert!(set.http01.is_empty());
        assert_eq!(set.tls_alpn01.len(), 1);
        let (h, crt, key) = &set.tls_alpn01[0];
        assert_eq!(h, host);
        assert!(
            crt.starts_with(state.path().join("acme/challenges")),
            "{}",
            crt.display()
        );
        assert!(
            !crt.exists() && !key.exists(),
            "challenge files are removed after the order"
        );
    }
    assert!(proxy.0.alpn.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_challenge_falls_back_then_fails_with_what_the_server_said_and_backs_off() {
    let (proxy, _responders, pebble) = setup().await;
    let state = tempfile::tempdir().unwrap();
    let acme = config(&pebble, &[ChallengeKind::Http01, ChallengeKind::TlsAlpn01]);
    let mut manager = CertManager::new(state.path());

    // Port 80 does not answer for the ship: HTTP-01 fails, TLS-ALPN-01 is tried next.
    proxy.0.answer_http.store(false, Ordering::SeqCst);
    let status = manager
        .ensure(&["a.test".into()], None, Some(&acme), &proxy)
        .await;
    served(&status[0]);
    {
        let published = proxy.0.published.lock().unwrap();
        assert_eq!(published.len(), 2);
        assert_eq!(published[0].http01.len(), 1);
        assert_eq!(published[1].tls_alpn01.len(), 1);
    }

    // Neither answers: the status says what pebble said for each, and when it retries.
    proxy.0.answer_alpn.store(false, Ordering::SeqCst);
    let before = now();
    let status = manager
        .ensure(
            &["a.test".into(), "c.test".into()],
            None,
            Some(&acme),
            &proxy,
        )
        .await;
    assert!(
        status[0].fingerprint.is_some(),
        "a.test keeps its certificate"
    );
    let c = &status[1];
    assert_eq!((c.source, c.files.clone()), (None, None), "{c:#?}");
    let error = c.error.clone().unwrap();
    assert!(
        error.starts_with("ordering over ACME failed: the ACME server could not validate c.test: by http-01 on port 80: "),
        "{error}"
    );
    assert!(error.contains("404"), "pebble's answer is shown: {error}");
    assert!(error.contains("; by tls-alpn-01 on port 443: "), "{error}");
    assert!(
        error.contains("(urn:ietf:params:acme:error:unauthorized)"),
        "{error}"
    );
    assert!(
        error.contains("check that c.test resolves to this ship and that the ACME server reaches it on that port; next attempt at "),
        "{error}"
    );
    let retry = c.next_renewal.unwrap();
    assert!(
        retry >= before + 60 && retry <= now() + 60,
        "first retry after a minute: {retry}"
    );
    assert_eq!(starphleet_certs::wake_at(&status), Some(retry));
    let metrics = starphleet_certs::metrics::render("north", &status);
    assert!(
        metrics.contains(r#"starphleet_certificate_missing{ship="north",host="c.test"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"starphleet_certificate_expiry_timestamp_seconds{ship="north",host="a.test",source="acme"}"#), "{metrics}");

    // Within the back-off nothing is ordered, and the error stays visible.
    let published = proxy.0.published.lock().unwrap().len();
    let status = manager
        .ensure(
            &["a.test".into(), "c.test".into()],
            None,
            Some(&acme),
            &proxy,
        )
        .await;
    assert_eq!(proxy.0.published.lock().unwrap().len(), published);
    assert_eq!(status[1].next_renewal, Some(retry));
    assert!(
        status[1]
            .error
            .as_deref()
            .unwrap()
            .contains("next attempt at"),
        "{:?}",
        status[1].error
    );
    drop(pebble);
}
