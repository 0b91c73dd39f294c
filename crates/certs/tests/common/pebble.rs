//! A real ACME server for tests: Debian's `pebble`, resolving every name to 127.0.0.1 through
//! `pebble-challtestsrv`'s DNS server, on ports of its own. Both processes are killed when
//! the guard drops.

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::TestCa;

/// A running pebble and its DNS server.
pub struct Pebble {
    children: Vec<(&'static str, Child)>,
    dir: tempfile::TempDir,
    /// The ACME directory URL.
    pub directory: String,
    /// The CA that signed pebble's own HTTPS certificate: trust it for the ACME API.
    pub api_ca_der: Vec<u8>,
}

/// A port free on loopback now (the kernel picks it, so parallel tests do not collide).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Pebble {
    /// Starts pebble validating HTTP-01 on `http_port` and TLS-ALPN-01 on `tls_port` of
    /// 127.0.0.1, with no random sleeps and no reuse of valid authorizations.
    pub fn start(http_port: u16, tls_port: u16) -> Pebble {
        for bin in ["pebble", "pebble-challtestsrv"] {
            assert!(
                Command::new("sh")
                    .args(["-c", &format!("command -v {bin}")])
                    .stdout(Stdio::null())
                    .status()
                    .unwrap()
                    .success(),
                "{bin} is not installed: apt-get install pebble"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        // Pebble's API speaks HTTPS only; the package ships no certificate for it.
        let ca = TestCa::new("Pebble API test CA");
        let api = ca.leaf(&["127.0.0.1", "localhost"], None);
        fs::write(dir.path().join("api.crt"), &api.chain_pem).unwrap();
        fs::write(dir.path().join("api.key"), &api.key_pem).unwrap();
        let (api_port, dns_port, mgmt_port) = (free_port(), free_port(), free_port());
        let config = serde_json::json!({
            "pebble": {
                "listenAddress": format!("127.0.0.1:{api_port}"),
                "managementListenAddress": "",
                "certificate": dir.path().join("api.crt"),
                "privateKey": dir.path().join("api.key"),
                "httpPort": http_port,
                "tlsPort": tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false
            }
        });
        fs::write(dir.path().join("pebble.json"), config.to_string()).unwrap();

        let logs = dir.path().to_path_buf();
        let log = |name: &str| {
            let f = fs::File::create(logs.join(name)).unwrap();
            (Stdio::from(f.try_clone().unwrap()), Stdio::from(f))
        };
        let mut pebble = Pebble {
            children: Vec::new(),
            directory: format!("https://127.0.0.1:{api_port}/dir"),
            api_ca_der: ca.der(),
            dir,
        };
        let (out, err) = log("challtestsrv.log");
        let dns = Command::new("pebble-challtestsrv")
            .args(["-dns01", &format!("127.0.0.1:{dns_port}")])
            .args(["-management", &format!("127.0.0.1:{mgmt_port}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap();
        pebble.children.push(("pebble-challtestsrv", dns));
        let (out, err) = log("pebble.log");
        let server = Command::new("pebble")
            .arg("-config")
            .arg(pebble.dir.path().join("pebble.json"))
            .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap();
        pebble.children.push(("pebble", server));
        pebble.wait_listening(mgmt_port);
        pebble.wait_listening(api_port);
        pebble
    }

    fn wait_listening(&mut self, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            let exited = self.children.iter_mut().find_map(|(name, child)| {
                child
                    .try_wait()
                    .ok()
                    .flatten()
                    .map(|status| (*name, status))
            });
            if let Some((name, status)) = exited {
                panic!("{name} exited ({status}):\n{}", self.logs());
            }
            assert!(
                Instant::now() < deadline,
                "nothing listens on {port} after 15 s:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Both processes' output so far.
    pub fn logs(&self) -> String {
        ["challtestsrv.log", "pebble.log"]
            .iter()
            .map(|f| {
                let text = fs::read_to_string(self.dir.path().join(f)).unwrap_or_default();
                format!("--- {f}\n{text}")
            })
            .collect()
    }

    /// The folder holding pebble's config and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}
