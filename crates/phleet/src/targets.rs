//! `GET /phleet/targets`: every ship's `/metrics` in Prometheus HTTP service discovery form,
//! so one Prometheus scrapes the whole phleet from HQ's `ships` without its own list.
//!
//! Prometheus must send the phleet token when it scrapes (`authorization: {credentials_file:
//! …/phleet.token}` in its scrape config), as every other client of the admin endpoint does.

use serde_json::{json, Value};

use crate::peer::{peer_uri, Peer};

/// `[{"targets": ["10.1.0.11:9797"], "labels": {"ship": "north", "__scheme__": "http",
/// "__metrics_path__": "/metrics"}}, …]`, one group per ship in `peers` order; a ship whose
/// URL is not an admin URL is left out (the ships file's own check reports it).
pub fn targets(peers: &[Peer]) -> Value {
    let groups: Vec<Value> = peers
        .iter()
        .filter_map(|p| {
            let uri = peer_uri(p, "/metrics").ok()?;
            let authority = uri.authority()?;
            let port = authority.port_u16().unwrap_or(80);
            let host = authority.host();
            Some(json!({
                "targets": [format!("{host}:{port}")],
                "labels": {
                    "ship": p.name,
                    "__scheme__": uri.scheme_str().unwrap_or("http"),
                    "__metrics_path__": uri.path(),
                },
            }))
        })
        .collect();
    Value::Array(groups)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_every_ships_metrics_in_http_sd_form() {
        let peers = [
            Peer::new("north", "http://10.1.0.11:9797"),
            Peer::new("south", "http://south.example/admin/"),
            Peer::new("v6", "http://[fd00::2]:9797"),
            Peer::new("broken", "10.1.0.13:9797"),
        ];
        let want = json!([
            {"targets": ["10.1.0.11:9797"], "labels": {"ship": "north", "__scheme__": "http", "__metrics_path__": "/metrics"}},
            {"targets": ["south.example:80"], "labels": {"ship": "south", "__scheme__": "http", "__metrics_path__": "/admin/metrics"}},
            {"targets": ["[fd00::2]:9797"], "labels": {"ship": "v6", "__scheme__": "http", "__metrics_path__": "/metrics"}},
        ]);
        assert_eq!(targets(&peers), want);
        assert_eq!(targets(&[]), json!([]));
    }
}
