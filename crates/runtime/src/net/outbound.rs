//! Outbound NAT from a ship's bridge: one nftables table per ship, `starphleet-<ship id>`,
//! masquerading the bridge's subnet behind the host's addresses, with forward accepts.
//!
//! The table is replaced in one nftables transaction (add, delete, define), so it is never
//! half-written and calling [`ensure_outbound`] again is harmless. The `nft` CLI (Debian's
//! `nftables` package) is used because netlink crates for nftables are young; one short
//! command per ship start is all it takes.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::{NetError, Result};
use crate::exec;

/// The most one `nft` command may take; it takes milliseconds.
const NFT_TIMEOUT: Duration = Duration::from_secs(20);

/// The longest ship id accepted in a table name.
const SHIP_ID_MAX: usize = 32;

/// The nftables table of ship `ship_id` (in the `ip` family).
pub fn outbound_table(ship_id: &str) -> String {
    format!("starphleet-{ship_id}")
}

fn check_ship_id(ship_id: &str) -> Result<()> {
    let ok = !ship_id.is_empty()
        && ship_id.len() <= SHIP_ID_MAX
        && ship_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(NetError::InvalidName(format!(
            "invalid ship id {ship_id:?} for an nftables table: 1-{SHIP_ID_MAX} ASCII letters, digits, '-' or '_'"
        )))
    }
}

/// Lets containers on `bridge` (addresses in `subnet`/`prefix_len`) reach any address outside
/// that subnet: turns on IPv4 forwarding in the caller's network namespace and (re)writes the
/// ship's table with a masquerade rule for the subnet and forward accepts for it. Idempotent.
///
/// A drop policy in another table (another firewall's forward chain) still wins over these
/// accepts, as nftables evaluates every base chain: such a firewall must allow the subnet.
pub fn ensure_outbound(
    bridge: &str,
    subnet: Ipv4Addr,
    prefix_len: u8,
    ship_id: &str,
) -> Result<()> {
    let (table, net) = checked(bridge, subnet, prefix_len, ship_id)?;
    let script = format!(
        "add table ip {table}\n\
         delete table ip {table}\n\
         table ip {table} {{\n\
           chain postrouting {{\n\
             type nat hook postrouting priority srcnat; policy accept;\n\
             ip saddr {net}/{prefix_len} ip daddr != {net}/{prefix_len} oifname != \"{bridge}\" masquerade\n\
           }}\n\
           chain forward {{\n\
             type filter hook forward priority filter; policy accept;\n\
             iifname \"{bridge}\" ip saddr {net}/{prefix_len} accept\n\
             oifname \"{bridge}\" ip daddr {net}/{prefix_len} ct state established,related accept\n\
           }}\n\
         }}\n"
    );
    enable_forwarding()?;
    nft(&script, &format!("writing nftables table {table}"))
}

/// Keeps containers on `bridge` from reaching anything beyond it (`--no-outbound`): the
/// ship's table then holds only a forward chain dropping what the bridge's subnet sends
/// elsewhere, so they stay shut in even on a host that routes (`ip_forward=1`). Replaces the
/// table [`ensure_outbound`] writes; [`remove_outbound`] removes either.
pub fn ensure_isolated(
    bridge: &str,
    subnet: Ipv4Addr,
    prefix_len: u8,
    ship_id: &str,
) -> Result<()> {
    let (table, net) = checked(bridge, subnet, prefix_len, ship_id)?;
    let script = format!(
        "add table ip {table}\n\
         delete table ip {table}\n\
         table ip {table} {{\n\
           chain forward {{\n\
             type filter hook forward priority filter; policy accept;\n\
             iifname \"{bridge}\" ip saddr {net}/{prefix_len} oifname != \"{bridge}\" drop\n\
           }}\n\
         }}\n"
    );
    nft(&script, &format!("writing nftables table {table}"))
}

/// Validates the names; returns the ship's table and the subnet's first address.
fn checked(
    bridge: &str,
    subnet: Ipv4Addr,
    prefix_len: u8,
    ship_id: &str,
) -> Result<(String, Ipv4Addr)> {
    check_ship_id(ship_id)?;
    super::check_ifname(bridge)?;
    if prefix_len > 32 {
        return Err(NetError::InvalidName(format!(
            "invalid prefix length /{prefix_len} for the subnet of bridge {bridge}: 0-32"
        )));
    }
    let mask = u32::MAX
        .checked_shl(32 - u32::from(prefix_len))
        .unwrap_or(0);
    Ok((
        outbound_table(ship_id),
        Ipv4Addr::from(u32::from(subnet) & mask),
    ))
}

/// Removes the ship's table (see [`ensure_outbound`]); fine when there is none. IPv4
/// forwarding is left on: other routers on the host may rely on it.
pub fn remove_outbound(ship_id: &str) -> Result<()> {
    check_ship_id(ship_id)?;
    let table = outbound_table(ship_id);
    // Adding first makes the delete succeed whether or not the table was there.
    nft(
        &format!("add table ip {table}\ndelete table ip {table}\n"),
        &format!("removing nftables table {table}"),
    )
}

/// Whether the caller's network namespace holds the ship's table.
pub fn has_outbound(ship_id: &str) -> Result<bool> {
    check_ship_id(ship_id)?;
    let table = outbound_table(ship_id);
    let out = run_nft(&["list", "tables", "ip"], "listing nftables tables")?;
    Ok(out.lines().any(|l| l.trim() == format!("table ip {table}")))
}

/// `net.ipv4.ip_forward=1` in the caller's network namespace (sysctls under `net` are per
/// namespace, looked up by the thread that opens them).
fn enable_forwarding() -> Result<()> {
    const PATH: &str = "/proc/sys/net/ipv4/ip_forward";
    let io = |e| super::io_err(format!("enabling IPv4 forwarding ({PATH})"), e);
    if std::fs::read_to_string(PATH).map_err(io)?.trim() == "1" {
        return Ok(());
    }
    std::fs::write(PATH, "1").map_err(io)
}

fn nft(script: &str, what: &str) -> Result<()> {
    run_nft(&[script], what).map(drop)
}

/// The `nft` binary: root's PATH usually has /usr/sbin, a service's may not.
fn nft_binary() -> &'static str {
    ["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("nft")
}

/// Runs nft with `args` in the calling thread's network namespace; returns its stdout.
fn run_nft(args: &[&str], what: &str) -> Result<String> {
    let mut cmd = Command::new(nft_binary());
    cmd.args(args);
    let out = match exec::output(&mut cmd, NFT_TIMEOUT) {
        Ok(Some(out)) => out,
        Ok(None) => {
            return Err(NetError::CommandTimedOut {
                what: what.to_string(),
                after: NFT_TIMEOUT,
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(NetError::NotInstalled {
                command: "nft".into(),
                package: "nftables".into(),
            })
        }
        Err(e) => return Err(super::io_err(format!("running nft for {what}"), e)),
    };
    if !out.status.success() {
        return Err(NetError::Command {
            what: what.to_string(),
            output: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ship_ids_fit_a_table_name() {
        assert!(check_ship_id("a1b2c3").is_ok());
        assert!(check_ship_id("test-12_x").is_ok());
        assert!(check_ship_id("").is_err());
        assert!(check_ship_id("a b").is_err());
        assert!(check_ship_id("a;flush ruleset").is_err());
        assert!(check_ship_id(&"x".repeat(33)).is_err());
        assert_eq!(outbound_table("a1b2c3"), "starphleet-a1b2c3");
    }
}
