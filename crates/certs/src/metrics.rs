//! Certificate metrics for the ship's `/metrics`, written by `prometheus-client` like the
//! rest of the ship's metrics: expiry as a timestamp gauge (alert on
//! `starphleet_certificate_expiry_timestamp_seconds - time() < 14 * 86400`), the next
//! renewal, and hosts left without a certificate.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::manager::CertStatus;

/// A collector of the certificates of one ship, for a `prometheus-client` registry.
#[derive(Clone, Debug)]
pub struct CertCollector {
    ship: String,
    certs: Vec<CertStatus>,
}

impl CertCollector {
    /// The metrics of `certs` (as [`crate::CertManager::ensure`] returned them) on `ship`.
    pub fn new(ship: impl Into<String>, certs: Vec<CertStatus>) -> Self {
        CertCollector {
            ship: ship.into(),
            certs,
        }
    }
}

impl Collector for CertCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let ship = self.ship.as_str();
        let served = || {
            self.certs
                .iter()
                .filter_map(|c| Some((c, c.source?, c.not_after?)))
        };
        if served().next().is_some() {
            let mut m = e.encode_descriptor(
                "starphleet_certificate_expiry_timestamp_seconds",
                "When the certificate served for the host expires, Unix seconds.",
                None,
                MetricType::Gauge,
            )?;
            for (c, source, not_after) in served() {
                let labels = [
                    ("ship", ship),
                    ("host", &c.host),
                    ("source", source.as_str()),
                ];
                m.encode_family(&labels)?.encode_gauge(&not_after)?;
            }
        }
        let renewals = || self.certs.iter().filter_map(|c| Some((c, c.next_renewal?)));
        if renewals().next().is_some() {
            let mut m = e.encode_descriptor(
                "starphleet_certificate_next_renewal_timestamp_seconds",
                "When the ship next orders the host's certificate over ACME, Unix seconds.",
                None,
                MetricType::Gauge,
            )?;
            for (c, at) in renewals() {
                let labels = [("ship", ship), ("host", &c.host)];
                m.encode_family(&labels)?.encode_gauge(&at)?;
            }
        }
        if !self.certs.is_empty() {
            let mut m = e.encode_descriptor(
                "starphleet_certificate_missing",
                "1 while the host has no valid certificate to serve.",
                None,
                MetricType::Gauge,
            )?;
            for c in &self.certs {
                let labels = [("ship", ship), ("host", &c.host)];
                m.encode_family(&labels)?
                    .encode_gauge(&u64::from(c.files.is_none()))?;
            }
        }
        Ok(())
    }
}

/// The certificate metrics as Prometheus text (format 0.0.4, the one the ship serves), to
/// append to the rest of `/metrics`.
pub fn render(ship: &str, certs: &[CertStatus]) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(CertCollector::new(ship, certs.to_vec())));
    let mut out = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)
        .expect("writing to a String cannot fail");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manager::CertPaths;
    use crate::resolve::Source;

    fn status(
        host: &str,
        source: Option<Source>,
        not_after: Option<u64>,
        next: Option<u64>,
    ) -> CertStatus {
        CertStatus {
            host: host.into(),
            source,
            files: source.map(|_| CertPaths {
                cert: "/c".into(),
                key: "/k".into(),
            }),
            not_after,
            next_renewal: next,
            fingerprint: None,
            error: None,
            problems: Vec::new(),
        }
    }

    #[test]
    fn renders_expiry_renewal_and_missing_hosts() {
        let text = render(
            "north",
            &[
                status(
                    "a.test",
                    Some(Source::Acme),
                    Some(1_800_000_000),
                    Some(1_797_408_000),
                ),
                status(
                    "b.test",
                    Some(Source::Headquarters),
                    Some(1_900_000_000),
                    None,
                ),
                status("c.test", None, None, Some(1_700_000_060)),
            ],
        );
        for line in [
            "# TYPE starphleet_certificate_expiry_timestamp_seconds gauge",
            r#"starphleet_certificate_expiry_timestamp_seconds{ship="north",host="a.test",source="acme"} 1800000000"#,
            r#"starphleet_certificate_expiry_timestamp_seconds{ship="north",host="b.test",source="headquarters"} 1900000000"#,
            r#"starphleet_certificate_next_renewal_timestamp_seconds{ship="north",host="a.test"} 1797408000"#,
            r#"starphleet_certificate_next_renewal_timestamp_seconds{ship="north",host="c.test"} 1700000060"#,
            r#"starphleet_certificate_missing{ship="north",host="a.test"} 0"#,
            r#"starphleet_certificate_missing{ship="north",host="c.test"} 1"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
        assert!(!text.contains("c.test\",source"), "{text}");
        assert!(
            !text.contains("# EOF"),
            "appendable to the ship's text: {text}"
        );
    }

    #[test]
    fn renders_nothing_without_certificates() {
        assert_eq!(render("north", &[]), "");
    }
}
