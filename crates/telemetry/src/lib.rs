//! Observability for a ship: log records and metrics.
//!
//! Logs: containers write their stdout/stderr straight to files (so output survives the ship
//! dying); a [`Collector`] tails those files and build logs with one [`Tailer`] each and
//! appends [`Record`]s to the [`LogStore`], which keeps them per service in size-capped,
//! rotated JSON-lines segments and answers [`Query`]s and follows. Access logs and the
//! ship's own events are appended to the store directly. A [`Forwarder`] sends records as
//! they are stored on to a syslog server or an OTLP/HTTP collector, never slowing appends.
//! A full disk drops log records (counted) but never stops the store, the tailers or the
//! collector.
//!
//! Metrics: [`metrics::sample_container`] reads a container's counters from the kernel and
//! [`metrics::render`] writes them, with route and log-store metrics, as Prometheus text.
//!
//! Errors are typed per part: [`StoreError`], [`TailError`], [`CollectError`],
//! [`RecordError`], [`ForwardTargetError`] and [`metrics::SampleError`].

mod collect;
mod forward;
pub mod metrics;
mod record;
mod store;
mod tail;

pub use collect::{CollectError, Collector, CollectorThread, Round};
pub use forward::{
    ForwardStats, ForwardTarget, ForwardTargetError, Forwarder, OTLP_SETTING, SYSLOG_SETTING,
};
pub use record::{
    format_time, now_ns, parse_time, AccessEntry, Kind, Record, RecordError, RecordMeta,
};
pub use store::{Follow, Followed, Limits, LogStore, Query, StoreError, StoreStats};
pub use tail::{TailError, Tailer, MAX_LINE_BYTES, POLL_BYTES, TRUNCATED};
