//! The ship: the control plane that follows headquarters and keeps every ordered service
//! running, switched with zero downtime, and recorded.
//!
//! One order travels this crate in a straight line, observe → plan → apply:
//! - `observe` follows HQ and the app repositories (git), `supervise` notices container exits;
//! - `plan` decides, purely, what to deploy, cancel, restart, retire, drain or reap;
//! - `owner` is the single task owning the state: it applies events and plans, persists the
//!   state (`persist`), and starts the work: `deploy` (fetch → build → start → health → switch),
//!   `drain` (drainstop), with `routes` the one task programming the proxy and `certs` the
//!   one keeping TLS certificates (found on the ship, in HQ, or ordered over ACME);
//! - `admin` reports snapshots; `down` takes a ship apart; `names` and `layout` say what
//!   everything is called and where it lives.

pub mod admin;
mod certs;
mod context;
mod deploy;
pub mod down;
mod drain;
mod env;
pub mod gc;
mod health;
pub mod layout;
pub mod logs;
pub mod names;
mod observe;
mod owner;
mod persist;
pub mod plan;
mod rollout;
mod routes;
mod selfcheck;
mod ship;
pub mod state;
mod supervise;
mod telemetry;

pub use names::{safe_name, NetPlan};
pub use observe::DEFAULT_POLL_INTERVAL;
pub use ship::{split_source, Ship, ShipError, ShipOptions};
pub use telemetry::version_label;
