//! The phleet crate over real HTTP on loopback: test ships answering like a ship's admin
//! endpoint, and ships that are dead, hang, crawl or want another token.

mod common;
mod hooks;
mod logs;
mod status;
mod versions;
