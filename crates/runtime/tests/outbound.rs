//! Outbound NAT: a container on a bridge reaches an address outside its subnet only while
//! the ship's nftables table is there. Everything lives in namespaces the test creates: a
//! "router" netns holds the bridge (as the host does for a ship), an "outside" netns plays
//! the internet and has no route back to the containers' subnet.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{block_on_in, unique, TestEnv};
use starphleet_runtime::net;

/// Serves "hello from outside" on `listener` forever, recording each peer's address.
fn serve(listener: TcpListener, peers: Arc<Mutex<Vec<SocketAddr>>>) {
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            if let Ok(peer) = conn.peer_addr() {
                peers.lock().unwrap().push(peer);
            }
            let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buf = [0u8; 1024];
            let _ = conn.read(&mut buf);
            let _ =
                conn.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 18\r\n\r\nhello from outside");
        }
    });
}

fn nft_in(ns: &str, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "nft"])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
#[ignore = "root tier (runc, network namespaces, cgroups): run by scripts/test"]
fn a_container_reaches_outside_only_through_the_ships_nat() {
    let mut env = TestEnv::new();
    let (router, router_path) = env.netns("spr");
    let (bridge, outside_br) = (unique("spb"), unique("spq"));
    let (outside, container_ns) = (unique("spo"), unique("spc"));
    env.track_netns(&outside);
    env.track_netns(&container_ns);
    let ship = unique("t");
    let subnet_gw = Ipv4Addr::new(10, 78, 0, 1);
    let outside_ip = Ipv4Addr::new(192, 168, 78, 2);
    let router_outside_ip = Ipv4Addr::new(192, 168, 78, 1);

    let cns = block_on_in(&router_path, || async {
        net::ensure_bridge(&bridge, subnet_gw, 24).await.unwrap();
        net::ensure_bridge(&outside_br, router_outside_ip, 24)
            .await
            .unwrap();
        net::create_container_netns(
            &outside,
            &unique("spv"),
            &outside_br,
            outside_ip,
            24,
            router_outside_ip,
        )
        .await
        .unwrap();
        net::create_container_netns(
            &container_ns,
            &unique("sph"),
            &bridge,
            Ipv4Addr::new(10, 78, 0, 2),
            24,
            subnet_gw,
        )
        .await
        .unwrap()
    });
    // The internet knows nothing of the ship's private subnet.
    let del = Command::new("ip")
        .args(["-n", &outside, "route", "del", "default"])
        .status()
        .unwrap();
    assert!(del.success());
    let outside_path = net::netns_path(&outside);
    let listener = net::run_in_netns(&outside_path, || {
        TcpListener::bind(SocketAddr::new(outside_ip.into(), 0))
    })
    .unwrap()
    .unwrap();
    let port = listener.local_addr().unwrap().port();
    let peers = Arc::new(Mutex::new(Vec::new()));
    serve(listener, peers.clone());

    let script = format!(
        "import urllib.request; print(urllib.request.urlopen('http://{outside_ip}:{port}/', timeout=2).read().decode())"
    );
    let mut attempt = |tag: &str| -> (i32, String) {
        let mut spec = env.spec(tag, &["/usr/bin/python3", "-c", &script]);
        spec.netns = Some(cns.clone());
        let code = env
            .runtime
            .run_to_completion(&spec, Duration::from_secs(30))
            .unwrap();
        (
            code,
            std::fs::read_to_string(&spec.stdout).unwrap_or_default(),
        )
    };

    let (code, _) = attempt("before");
    assert_ne!(code, 0, "reached outside before any NAT was set up");

    let in_router = |f: fn(&str, &str) -> Result<(), net::NetError>| {
        let (bridge, ship) = (bridge.clone(), ship.clone());
        net::run_in_netns(&router_path, move || f(&bridge, &ship))
            .unwrap()
            .unwrap()
    };
    let ensure = |bridge: &str, ship: &str| {
        net::ensure_outbound(bridge, Ipv4Addr::new(10, 78, 0, 77), 24, ship)
    };
    in_router(ensure);
    in_router(ensure);
    let (code, out) = attempt("with-nat");
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.trim(), "hello from outside");
    let seen = peers.lock().unwrap().clone();
    assert_eq!(
        seen.iter().map(|p| p.ip()).collect::<Vec<_>>(),
        vec![std::net::IpAddr::from(router_outside_ip)],
        "the outside sees the ship's address, not the container's"
    );
    let table = nft_in(
        &router,
        &["list", "table", "ip", &net::outbound_table(&ship)],
    );
    assert_eq!(
        table.matches("masquerade").count(),
        1,
        "ensuring twice writes one rule: {table}"
    );
    assert!(table.contains("ip saddr 10.78.0.0/24"), "{table}");
    assert!(net::run_in_netns(&router_path, || net::has_outbound(&ship))
        .unwrap()
        .unwrap());

    in_router(|_, ship| net::remove_outbound(ship));
    in_router(|_, ship| net::remove_outbound(ship));
    assert!(
        !net::run_in_netns(&router_path, || net::has_outbound(&ship))
            .unwrap()
            .unwrap()
    );
    assert!(
        !nft_in(&router, &["list", "tables"]).contains("starphleet-"),
        "remove_outbound leaves no table"
    );
    let (code, _) = attempt("after");
    assert_ne!(code, 0, "reached outside after remove_outbound");
}

#[test]
#[ignore = "root tier (runc, network namespaces, cgroups): run by scripts/test"]
fn bad_names_are_refused_before_nft_runs() {
    let err = net::ensure_outbound("spb0", Ipv4Addr::new(10, 1, 0, 0), 24, "x; flush ruleset")
        .unwrap_err();
    assert!(err.to_string().contains("invalid ship id"), "{err}");
    let err = net::ensure_outbound(
        "a-bridge-name-too-long",
        Ipv4Addr::new(10, 1, 0, 0),
        24,
        "ok",
    )
    .unwrap_err();
    assert!(err.to_string().contains("interface name"), "{err}");
    assert!(net::remove_outbound("../x").is_err());
}
