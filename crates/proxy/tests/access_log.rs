//! The access log, in a test binary of its own: it installs the process-wide subscriber.

mod common;

use common::*;

use std::sync::{Arc, Mutex};

use hyper::StatusCode;

/// Collects what the tracing subscriber writes, for the access-log test.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn access_events(&self) -> Vec<serde_json::Value> {
        let out = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
        out.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|e| e["target"] == "starphleet::access")
            .collect()
    }
}

#[tokio::test]
async fn logs_one_access_event_per_request() {
    // Process-wide, as in the real binary: the proxy's tasks may run on any thread.
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_target(true)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let echo = Backend::start("echo").await;
    let proxy = Proxy::start().await;
    let port = free_port();
    proxy
        .set(&table([(port, vec![route("/echo", "echo", &[&echo])])]))
        .await;
    let reply = get(port, "/echo/Hi?x=1").await;
    assert_eq!(reply.status, StatusCode::OK);
    get(port, "/missing").await;

    eventually("both requests are logged", || async {
        captured.access_events().len() == 2
    })
    .await;
    let events = captured.access_events();
    let hit = &events
        .iter()
        .find(|e| e["fields"]["path"] == "/echo/Hi?x=1")
        .expect("the proxied request is logged")["fields"];
    assert_eq!(hit["method"], "GET");
    assert_eq!(hit["status"], 200);
    assert_eq!(hit["bytes"], reply.body.len());
    assert_eq!(hit["service"], "echo");
    assert_eq!(hit["container"], echo.container());
    assert!(hit["client"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(hit["duration_ms"].as_f64().unwrap() >= 0.0);
    let miss = &events
        .iter()
        .find(|e| e["fields"]["path"] == "/missing")
        .expect("the 404 is logged")["fields"];
    assert_eq!(miss["status"], 404);
    assert_eq!(miss["service"], "-");
    proxy.stop().await;
}
