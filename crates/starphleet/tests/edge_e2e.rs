//! The edge, end to end: a ship serving TLS with certificates from its state dir, from HQ and
//! from a real ACME server (Debian's `pebble`), HTTP/2, websockets over TLS, redirects,
//! virtual hosts and limits; and a proxy killed under load that loses no new connection.
//!
//! Real runc, git, curl, pebble and TLS clients, each ship in its own network namespace.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::pem::PemObject;

const DEPLOY: Duration = Duration::from_secs(90);

/// The app: `GET /sleep/S` answers after S seconds, `GET /stream` streams 30 lines over 6 s,
/// a websocket upgrade echoes text frames, `POST` answers the body's length, anything else
/// `$NAME <path> <X-Forwarded-Proto>`.
const EDGE_APP: &str = r#"import base64, hashlib, os, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def answer(self, body):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        self.answer(str(len(self.rfile.read(n))).encode())
    def do_GET(self):
        if self.path.startswith("/sleep/"):
            time.sleep(float(self.path[7:]))
        if self.path == "/stream":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(30):
                line = b"%d\n" % i
                self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                self.wfile.flush()
                time.sleep(0.2)
            self.wfile.write(b"0\r\n\r\n")
            return
        if self.headers.get("Upgrade", "").lower() == "websocket":
            key = self.headers["Sec-WebSocket-Key"] + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
            self.send_response(101)
            self.send_header("Upgrade", "websocket")
            self.send_header("Connection", "Upgrade")
            self.send_header("Sec-WebSocket-Accept", base64.b64encode(hashlib.sha1(key.encode()).digest()).decode())
            self.end_headers()
            self.wfile.flush()
            self.close_connection = True
            while True:
                h = self.rfile.read(2)
                if len(h) < 2:
                    return
                op, n = h[0] & 15, h[1] & 127
                if n == 126:
                    n = int.from_bytes(self.rfile.read(2), "big")
                mask = self.rfile.read(4)
                data = bytes(b ^ mask[i % 4] for i, b in enumerate(self.rfile.read(n)))
                if op == 8:
                    self.wfile.write(b"\x88\x00")
                    self.wfile.flush()
                    return
                if op == 1:
                    self.wfile.write(bytes([0x81, len(data)]) + data)
                    self.wfile.flush()
        self.answer(("%s %s %s" % (os.environ.get("NAME", ""), self.path, self.headers.get("X-Forwarded-Proto", ""))).encode())
    def log_message(self, *a):
        pass
ThreadingHTTPServer(("0.0.0.0", int(os.environ["PORT"])), H).serve_forever()
"#;

fn edge_app(dir: &Path) -> Repo {
    let repo = Repo::new(dir);
    repo.write("server.py", EDGE_APP)
        .write("Starphleet", "start /usr/bin/python3 server.py\n");
    repo.commit("edge app");
    repo
}

/// A test CA made with rcgen.
struct Ca(CertifiedIssuer<'static, KeyPair>);

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        Ca(CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap())
    }

    /// (chain PEM, key PEM) of a leaf for `names`.
    fn leaf(&self, names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.signed_by(&key, &self.0).unwrap();
        (
            format!("{}{}", cert.pem(), self.0.pem()),
            key.serialize_pem(),
        )
    }
}

/// `curl ARGS` inside the ship's namespace, bounded: its stdout, or its stderr as the error.
fn curl(ship: &TestShip, args: &[&str]) -> Result<String, String> {
    let out = ship
        .net
        .command("curl")
        .args(["-sS", "--max-time", "15"])
        .args(args)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Polls `curl ARGS` until its output satisfies `ok`; panics with the last answer and the log.
fn wait_curl(ship: &TestShip, args: &[&str], ok: impl Fn(&str) -> bool, timeout: Duration) {
    let start = Instant::now();
    let mut last = Err(String::new());
    while start.elapsed() < timeout {
        last = curl(ship, args);
        if matches!(&last, Ok(out) if ok(out)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!(
        "curl {args:?} never answered as expected; last: {last:?}\n--- ship log ---\n{}",
        ship.log()
    );
}

/// A TLS connection to 127.0.0.1:443 for `sni`, trusting `roots` (PEM), offering `alpn`.
type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

fn tls(sni: &str, roots_pem: &str, alpn: &[&[u8]]) -> Result<Tls, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(roots_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let tcp = TcpStream::connect_timeout(&"127.0.0.1:443".parse().unwrap(), Duration::from_secs(5))
        .map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    while stream.conn.is_handshaking() {
        stream
            .conn
            .complete_io(&mut stream.sock)
            .map_err(|e| e.to_string())?;
    }
    Ok(stream)
}

/// The served leaf certificate (DER).
fn leaf(stream: &Tls) -> Vec<u8> {
    stream.conn.peer_certificates().unwrap()[0].to_vec()
}

/// Starts the ship like `TestShip::start`, with `SSL_CERT_FILE` trusting `api_ca` (pebble's
/// HTTPS) as the system's roots would.
fn start_ship(ship: &mut TestShip, api_ca: &Path) {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(ship.path("ship.log"))
        .unwrap();
    let child = ship
        .net
        .command(bin())
        .args(["ship", "--headquarters", &ship.hq.url()])
        .args(["--poll-interval", "200ms", "--name", "testship"])
        .arg("--state-dir")
        .arg(&ship.state)
        .env("STARPHLEET_LOG", "info")
        .env("SSL_CERT_FILE", api_ca)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    ship.child = Some(child);
}

/// Debian's pebble in the ship's namespace, validating on ports 80 and 443 of 127.0.0.1
/// (its DNS server, pebble-challtestsrv, answers 127.0.0.1 for every name).
struct Pebble(Vec<std::process::Child>);

impl Drop for Pebble {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

const PEBBLE_API: u16 = 14000;
const PEBBLE_MGMT: u16 = 15000;

fn start_pebble(ship: &TestShip, api_ca: &Ca) -> Pebble {
    for bin in ["pebble", "pebble-challtestsrv"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {bin}")])
            .output()
            .unwrap();
        assert!(
            found.status.success(),
            "{bin} is not installed: apt-get install pebble (scripts/test does)"
        );
    }
    let (crt, key) = api_ca.leaf(&["127.0.0.1", "localhost"]);
    std::fs::write(ship.path("pebble-api.crt"), crt).unwrap();
    std::fs::write(ship.path("pebble-api.key"), key).unwrap();
    let config = serde_json::json!({ "pebble": {
        "listenAddress": format!("127.0.0.1:{PEBBLE_API}"),
        "managementListenAddress": format!("127.0.0.1:{PEBBLE_MGMT}"),
        "certificate": ship.path("pebble-api.crt"),
        "privateKey": ship.path("pebble-api.key"),
        "httpPort": 80,
        "tlsPort": 443,
        "ocspResponderURL": "",
        "externalAccountBindingRequired": false
    }});
    std::fs::write(ship.path("pebble.json"), config.to_string()).unwrap();
    let log = |name: &str| std::fs::File::create(ship.path(name)).unwrap();
    let dns = ship
        .net
        .command("pebble-challtestsrv")
        .args(["-dns01", "127.0.0.1:8053", "-management", "127.0.0.1:8055"])
        .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
        .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
        .stdout(log("challtestsrv.log"))
        .stderr(log("challtestsrv.err"))
        .spawn()
        .unwrap();
    let mut pebble = Pebble(vec![dns]);
    let server = ship
        .net
        .command("pebble")
        .arg("-config")
        .arg(ship.path("pebble.json"))
        .args(["-dnsserver", "127.0.0.1:8053"])
        .env("PEBBLE_VA_NOSLEEP", "1")
        .env("PEBBLE_AUTHZREUSE", "0")
        .stdout(log("pebble.log"))
        .stderr(log("pebble.err"))
        .spawn()
        .unwrap();
    pebble.0.push(server);
    let api = format!("https://127.0.0.1:{PEBBLE_API}/dir");
    let ca = ship.path("pebble-api-ca.pem");
    std::fs::write(&ca, api_ca.0.pem()).unwrap();
    let ca = ca.display().to_string();
    wait_curl(
        ship,
        &["--cacert", &ca, &api],
        |o| o.contains("newOrder"),
        Duration::from_secs(20),
    );
    pebble
}

#[test]
#[ignore = "root tier (network namespaces, runc, pebble): run by scripts/test"]
fn tls_from_the_ship_hq_and_acme_with_h2_websockets_redirects_hosts_and_limits() {
    let mut ship = TestShip::new();
    let app = edge_app(&ship.path("app"));
    let ca = Ca::new("edge test CA");
    let ca_pem = ship.path("ca.pem");
    std::fs::write(&ca_pem, ca.0.pem()).unwrap();
    let ca_pem = ca_pem.display().to_string();

    // app.test: a certificate in the ship's state dir; hq.test: one in HQ; acme.test: ACME.
    let certs = ship.state.join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    let (crt, key) = ca.leaf(&["app.test"]);
    std::fs::write(certs.join("app.test.crt"), crt).unwrap();
    std::fs::write(certs.join("app.test.key"), key).unwrap();
    let (hq_crt, hq_key) = ca.leaf(&["hq.test"]);
    let api_ca = Ca::new("pebble API CA");
    let pebble = start_pebble(&ship, &api_ca);
    ship.hq
        .write("certs/hq.test.crt", &hq_crt)
        .write("certs/hq.test.key", &hq_key)
        .write(
            ".starphleet",
            &format!(
                "STARPHLEET_ACME_EMAIL=ops@example.org\nSTARPHLEET_ACME_DIRECTORY=https://127.0.0.1:{PEBBLE_API}/dir\n"
            ),
        )
        .write(
            "app.orders",
            &format!(
                "autodeploy {}\nexport NAME=app\n\
                 publish --private 8000 --tls --host app.test --host hq.test --host acme.test --url / --max-body 1k --timeout 2s --body-timeout 1s\n\
                 publish --private 8000 --public 8080 --host a.test --url /\n\
                 publish --private 8000 --tls --host *.nocert.test --url /nocert\n",
                app.url()
            ),
        )
        .write(
            "other.orders",
            &format!(
                "autodeploy {}\nexport NAME=other\npublish --private 8000 --public 8080 --host b.test --url /\n",
                app.url()
            ),
        )
        .commit("edge");
    let api_ca_file = api_ca_path(&ship);
    start_ship(&mut ship, Path::new(&api_ca_file));

    let resolve = |host: &str, port: u16| format!("{host}:{port}:127.0.0.1");
    // The ship's own certificate, then HQ's, verified against the test CA by curl.
    for host in ["app.test", "hq.test"] {
        wait_curl(
            &ship,
            &[
                "--resolve",
                &resolve(host, 443),
                "--cacert",
                &ca_pem,
                &format!("https://{host}/x"),
            ],
            |o| o == "app /x https",
            DEPLOY,
        );
    }
    // HTTP/2 by ALPN.
    let version = curl(
        &ship,
        &[
            "--http2",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version}",
            "--resolve",
            &resolve("app.test", 443),
            "--cacert",
            &ca_pem,
            "https://app.test/x",
        ],
    )
    .unwrap();
    assert_eq!(version, "2");
    // Plain HTTP on port 80 for a TLS host: 308 to https.
    let redirect = curl(
        &ship,
        &[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{redirect_url}",
            "--resolve",
            &resolve("app.test", 80),
            "http://app.test/x?y=1",
        ],
    )
    .unwrap();
    assert_eq!(redirect, "308 https://app.test/x?y=1");
    // Two orders on port 8080 and prefix / by host; an unknown host gets the 404.
    for (host, body) in [("a.test", "app /x http"), ("b.test", "other /x http")] {
        wait_curl(
            &ship,
            &[
                "--resolve",
                &resolve(host, 8080),
                &format!("http://{host}:8080/x"),
            ],
            |o| o == body,
            DEPLOY,
        );
    }
    let unknown = curl(
        &ship,
        &[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            "Host: c.test",
            "http://127.0.0.1:8080/x",
        ],
    )
    .unwrap();
    assert_eq!(unknown, "404");
    // --max-body 1k: 413; --timeout 2s: 504; --body-timeout 1s: 408.
    let big = "x".repeat(2000);
    let code = |args: &[&str]| {
        let mut all = vec![
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--resolve",
            "app.test:443:127.0.0.1",
            "--cacert",
            &ca_pem,
        ];
        all.extend_from_slice(args);
        curl(&ship, &all).unwrap_or_else(|e| panic!("curl {args:?}: {e}"))
    };
    assert_eq!(code(&["--data", "small", "https://app.test/post"]), "200");
    // Over HTTP/1.1: Debian 12's curl (7.88) reports an early HTTP/2 answer to an upload as
    // error 92, although the proxy sends the whole 413 and then RST_STREAM(NO_ERROR) as RFC 9113
    // §8.1 asks (curl/curl#22984); the proxy crate's limits tests check the h2 413.
    assert_eq!(
        code(&["--http1.1", "--data", &big, "https://app.test/post"]),
        "413"
    );
    let started = Instant::now();
    assert_eq!(code(&["https://app.test/sleep/5"]), "504");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    ship.net.run(|| {
        // An upload that stalls is answered after the order's second, not the proxy's 30 s.
        let mut stream = tls("app.test", &ca.0.pem(), &[b"http/1.1"]).unwrap();
        let started = Instant::now();
        stream
            .write_all(
                b"POST /post HTTP/1.1\r\nHost: app.test\r\nContent-Length: 100\r\n\r\nten bytes!",
            )
            .unwrap();
        let mut reply = Vec::new();
        let _ = stream.read_to_end(&mut reply);
        let reply = String::from_utf8_lossy(&reply);
        assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
        let took = started.elapsed();
        assert!(
            took >= Duration::from_secs(1) && took < Duration::from_secs(4),
            "{took:?}"
        );
    });

    // Header limits: a 40 KiB header is 431; slowloris clients (a header byte every 200 ms)
    // do not keep others from being served.
    let huge = format!("X-Big: {}", "y".repeat(40 * 1024));
    assert_eq!(code(&["-H", &huge, "https://app.test/x"]), "431");
    let slow_stop = Arc::new(AtomicBool::new(false));
    let slow = {
        let (stop, file) = (
            slow_stop.clone(),
            std::fs::File::open(ship.net.path()).unwrap(),
        );
        std::thread::spawn(move || {
            use std::os::fd::AsRawFd;
            // SAFETY: setns on this thread only.
            assert_eq!(
                unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) },
                0
            );
            let mut conns: Vec<TcpStream> = (0..50)
                .filter_map(|_| TcpStream::connect("127.0.0.1:8080").ok())
                .collect();
            assert_eq!(conns.len(), 50);
            for c in &mut conns {
                let _ = c.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n");
            }
            while !stop.load(Ordering::Relaxed) {
                for c in &mut conns {
                    let _ = c.write_all(b"X");
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..5 {
        let started = Instant::now();
        let body = curl(
            &ship,
            &[
                "--resolve",
                &resolve("a.test", 8080),
                "http://a.test:8080/x",
            ],
        );
        assert_eq!(body.as_deref(), Ok("app /x http"));
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
    slow_stop.store(true, Ordering::Relaxed);
    slow.join().unwrap();

    // A websocket over TLS.
    let roots = std::fs::read_to_string(&ca_pem).unwrap();
    ship.net.run(|| {
        let stream = tls("app.test", &roots, &[b"http/1.1"]).unwrap();
        let (mut ws, _) = tungstenite::client("wss://app.test/ws", stream).unwrap();
        ws.send(tungstenite::Message::text("over tls")).unwrap();
        assert_eq!(ws.read().unwrap().into_text().unwrap().as_str(), "over tls");
    });

    // ACME: pebble issues acme.test's certificate; the ship serves it.
    let root = curl(
        &ship,
        &["-k", &format!("https://127.0.0.1:{PEBBLE_MGMT}/roots/0")],
    )
    .unwrap();
    let acme_roots = ship.path("pebble-root.pem");
    std::fs::write(&acme_roots, &root).unwrap();
    let acme_roots_s = acme_roots.display().to_string();
    wait_curl(
        &ship,
        &[
            "--resolve",
            &resolve("acme.test", 443),
            "--cacert",
            &acme_roots_s,
            "https://acme.test/x",
        ],
        |o| o == "app /x https",
        Duration::from_secs(120),
    );
    let status = ship.status_json();
    let acme = status["certs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["host"] == "acme.test")
        .unwrap()
        .clone();
    assert_eq!(acme["source"], "acme", "{status:#}");
    assert!(
        acme["not_after"].as_u64().unwrap() > 0 && acme["next_renewal"].as_u64().is_some(),
        "{acme}"
    );
    let sources: Vec<(String, String)> = status["certs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["host"].as_str().unwrap().to_string(),
                c["source"].as_str().unwrap_or("-").to_string(),
            )
        })
        .collect();
    assert!(
        sources.contains(&("app.test".into(), "ship".into())),
        "{sources:?}"
    );
    assert!(
        sources.contains(&("hq.test".into(), "headquarters".into())),
        "{sources:?}"
    );
    // A host without a certificate is named with the three ways to get one.
    let missing = status["certs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["host"] == "*.nocert.test")
        .unwrap();
    let help = missing["error"].as_str().unwrap_or_default();
    assert!(missing["source"].is_null(), "{missing}");
    for part in [
        "no certificate for *.nocert.test",
        "_wildcard.nocert.test.crt",
        "certs/_wildcard.nocert.test.crt",
        "3. ACME cannot be used for a wildcard host",
    ] {
        assert!(help.contains(part), "{part} not in {help}");
    }
    let text = ship.cli(&["status"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("certificate acme.test: acme, expires ")
            && text.contains("certificate app.test: ship, expires ")
            && text.contains("certificate *.nocert.test: none\n  no certificate for"),
        "{text}"
    );
    let metrics = ship.net.run(|| {
        let socket = ship.state.join("admin.sock");
        Command::new("curl")
            .args(["-sS", "--max-time", "10", "--unix-socket"])
            .arg(&socket)
            .arg("http://localhost/metrics")
            .output()
            .unwrap()
    });
    let metrics = String::from_utf8_lossy(&metrics.stdout).into_owned();
    assert!(
        metrics.contains(r#"starphleet_certificate_expiry_timestamp_seconds{ship="testship",host="acme.test",source="acme"}"#),
        "{metrics}"
    );

    // A forced renewal replaces the certificate while a streamed response and a websocket on
    // the old one keep working.
    ship.net.run(|| {
        let mut stream = tls("acme.test", &root, &[b"http/1.1"]).unwrap();
        let old = leaf(&stream);
        stream
            .write_all(b"GET /stream HTTP/1.1\r\nHost: acme.test\r\nConnection: close\r\n\r\n")
            .unwrap();
        let ws_stream = tls("acme.test", &root, &[b"http/1.1"]).unwrap();
        let (mut ws, _) = tungstenite::client("wss://acme.test/ws", ws_stream).unwrap();
        let renew = ship.cli(&["renew", "acme.test"]);
        assert!(
            renew.status.success()
                && String::from_utf8_lossy(&renew.stdout).contains("new certificate for acme.test"),
            "{renew:?}"
        );
        let unknown = ship.cli(&["renew", "nope.test"]);
        assert!(
            !unknown.status.success()
                && String::from_utf8_lossy(&unknown.stderr)
                    .contains("nope.test is no --tls --host"),
            "{unknown:?}"
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let fresh = tls("acme.test", &root, &[b"http/1.1"]).map(|s| leaf(&s));
            if matches!(&fresh, Ok(l) if *l != old) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the renewed certificate is never served: {fresh:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        ws.send(tungstenite::Message::text("still here")).unwrap();
        assert_eq!(
            ws.read().unwrap().into_text().unwrap().as_str(),
            "still here"
        );
        let mut body = String::new();
        stream.read_to_string(&mut body).unwrap();
        assert!(
            body.starts_with("HTTP/1.1 200")
                && body.contains("29\n")
                && body.ends_with("0\r\n\r\n"),
            "the stream ended early: {body}"
        );
    });
    drop(pebble);
}

/// The pebble API CA file `start_pebble` wrote.
fn api_ca_path(ship: &TestShip) -> String {
    ship.path("pebble-api-ca.pem").display().to_string()
}

#[test]
#[ignore = "root tier (network namespaces, runc): run by scripts/test"]
fn a_proxy_killed_under_load_refuses_no_connection_and_comes_back_on_the_same_sockets() {
    let mut ship = TestShip::new();
    let app = greeter_repo(&ship.path("greeter"));
    ship.hq
        .write(
            "hello.orders",
            &format!(
                "autodeploy {}\npublish --private 8000 --url /hello\nexport GREETING=hi-\n",
                app.url()
            ),
        )
        .commit("hello");
    ship.start();
    ship.wait_for_body(80, "/hello/x", "hi-x", DEPLOY);
    // The keeper takes the sockets after the table is set; give it a moment.
    std::thread::sleep(Duration::from_millis(500));
    let pid = |ship: &TestShip| {
        std::fs::read_to_string(ship.state.join("proxy.pid"))
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    let before = pid(&ship);

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, refused, other) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let file = std::fs::File::open(ship.net.path()).unwrap();
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (stop, ok, refused, other) =
                (stop.clone(), ok.clone(), refused.clone(), other.clone());
            let file = file.try_clone().unwrap();
            std::thread::spawn(move || {
                use std::os::fd::AsRawFd;
                // SAFETY: setns on this thread only.
                assert_eq!(
                    unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) },
                    0
                );
                let agent = ureq::AgentBuilder::new()
                    .timeout(Duration::from_secs(5))
                    .build();
                while !stop.load(Ordering::Relaxed) {
                    match agent.get("http://127.0.0.1:80/hello/x").call() {
                        Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(e) if e.to_string().contains("refused") => {
                            refused.fetch_add(1, Ordering::Relaxed)
                        }
                        Err(_) => other.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    let killed: i32 = before.parse().unwrap();
    // SAFETY: kill has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(killed, libc::SIGKILL) }, 0);
    let served_before = ok.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let after = pid(&ship);
    assert_ne!(
        after,
        before,
        "the keeper started a new proxy\n{}",
        ship.log()
    );
    assert_eq!(
        refused.load(Ordering::Relaxed),
        0,
        "no connection refused; ok {} other {}",
        ok.load(Ordering::Relaxed),
        other.load(Ordering::Relaxed)
    );
    assert!(
        ok.load(Ordering::Relaxed) > served_before,
        "served after the kill too"
    );
    ship.wait_for_body(80, "/hello/x", "hi-x", Duration::from_secs(5));
}
