//! Orders and Starphleet file grammar, validation and compiler-style diagnostics.
//!
//! Everything a user writes by hand is read here: `*.orders` files, `.starphleet`
//! (env and the typed [`PhleetSettings`]), `ships` and the `certs/` folder in
//! headquarters; the `Starphleet` file (or `Procfile`), `healthcheck` and `.env`
//! in an app repository; and the ship's env folder. Parsers never stop at the first
//! problem and never panic: they return every [`Diagnostic`], each naming the
//! file, line and column, showing the line with a caret, and saying how to fix it.
//! Some diagnostics are warnings ([`Severity::Warning`]): they never block anything.
//!
//! Headquarters is written by anyone who can push to it and read by a ship
//! running as root, so reading it never leaves the checkout: symlinks are
//! refused, never followed, and files are size-limited ([`read_hq_file`]).

#![warn(missing_docs)]
// A `Diagnostic` is 128 bytes (owned path, message, help and source line, and a
// severity). Results carrying one are the cold path of reading a user's file, and
// boxing it would change the public signatures of `read_hq_file` and friends.
#![allow(clippy::result_large_err)]

mod app;
mod certs;
mod diagnostic;
mod env;
mod headquarters;
mod hq_file;
mod lex;
mod order;
mod phleet;
mod resources;
mod ships;
mod values;

pub use app::{parse_app, parse_healthcheck_file, parse_procfile, AppSpec};
pub use certs::{HqCert, CERTS_DIR};
pub use diagnostic::{Diagnostic, Severity};
pub use env::{parse_env_file, MAX_ENV_BYTES, MAX_ENV_ENTRY_BYTES, MAX_ENV_VARS};
pub use headquarters::{
    load_headquarters, load_headquarters_with, BrokenOrder, Headquarters, HqOptions, SETTINGS_FILE,
};
pub use hq_file::{read_hq_bytes, read_hq_file, MAX_HQ_FILE_BYTES};
pub use order::{
    parse_duration, parse_order, GitSource, Order, Publish, MAX_SERVICE_DEPTH, MAX_SERVICE_NAME,
};
pub use phleet::{PhleetSettings, DEFAULT_ACME_DIRECTORY, DEFAULT_BUILD_CACHE_MAX};
pub use resources::{BaseImage, Resources};
pub use ships::{parse_ships, ShipEntry, SHIPS_FILE};
pub use values::parse_size;

#[cfg(test)]
mod tests;
