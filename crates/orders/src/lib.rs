//! Orders and Starphleet file grammar, validation and compiler-style diagnostics.
//!
//! Everything a user writes by hand is read here: `*.orders` files and
//! `.starphleet` in headquarters, the `Starphleet` file (or `Procfile`) in an
//! app repository, and the ship's env folder. Parsers never stop at the first
//! problem and never panic: they return every [`Diagnostic`], each naming the
//! file, line and column, showing the line with a caret, and saying how to fix it.
//!
//! Headquarters is written by anyone who can push to it and read by a ship
//! running as root, so reading it never leaves the checkout: symlinks are
//! refused, never followed, and files are size-limited ([`read_hq_file`]).

#![warn(missing_docs)]

mod app;
mod diagnostic;
mod env;
mod headquarters;
mod hq_file;
mod lex;
mod order;

pub use app::{parse_app, parse_procfile, AppSpec};
pub use diagnostic::Diagnostic;
pub use env::{parse_env_file, MAX_ENV_BYTES, MAX_ENV_ENTRY_BYTES, MAX_ENV_VARS};
pub use headquarters::{
    load_headquarters, load_headquarters_with, BrokenOrder, Headquarters, HqOptions, SETTINGS_FILE,
};
pub use hq_file::{read_hq_bytes, read_hq_file, MAX_HQ_FILE_BYTES};
pub use order::{
    parse_duration, parse_order, GitSource, Order, Publish, MAX_SERVICE_DEPTH, MAX_SERVICE_NAME,
};

#[cfg(test)]
mod tests;
