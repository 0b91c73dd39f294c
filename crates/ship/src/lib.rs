//! The ship: reconciler, supervisor, persisted state and admin endpoint.
//!
//! One order travels this crate in a straight line: `ship` follows HQ and
//! plans a version, `deploy` fetches, builds, starts, health-gates and
//! switches it, `state` remembers it so a restarted ship adopts it, and
//! `admin` reports it.

pub mod admin;
mod deploy;
pub mod down;
mod env;
mod health;
pub mod layout;
pub mod logs;
mod observe;
mod ship;
pub mod state;

pub use observe::version_label;
pub use ship::{safe_name, split_source, NetPlan, Ship, ShipOptions};
