//! Bridge and container netns over netlink, all inside a test-made network namespace.

mod common;

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{block_on_in, unique, TestEnv};
use starphleet_runtime::net;

/// `ip -n <ns> -o <args>` output: the test inspects with iproute2, the library never uses it.
fn ip_in(ns: &str, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["-n", ns, "-o"])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
#[ignore = "root tier (runc, network namespaces, cgroups): run by scripts/test"]
fn bridge_and_container_netns_are_idempotent_and_leave_nothing() {
    let mut env = TestEnv::new();
    let (test_ns, test_path) = env.netns("spn");
    let (bridge, host_if) = (unique("spb"), unique("sph"));
    let cns = unique("spc");
    env.track_netns(&cns);
    let gateway = Ipv4Addr::new(10, 77, 0, 1);

    block_on_in(&test_path, || async {
        for _ in 0..2 {
            net::ensure_bridge(&bridge, gateway, 24).await.unwrap();
        }
        let path = net::create_container_netns(
            &cns,
            &host_if,
            &bridge,
            Ipv4Addr::new(10, 77, 0, 2),
            24,
            gateway,
        )
        .await
        .unwrap();
        assert_eq!(path, net::netns_path(&cns));
        assert!(net::link_stats(&host_if).await.unwrap().is_some());

        // A second container netns with the same names is refused; the first is untouched.
        let again = net::create_container_netns(
            &cns,
            &unique("sph"),
            &bridge,
            Ipv4Addr::new(10, 77, 0, 3),
            24,
            gateway,
        )
        .await;
        assert!(again.is_err());
        assert!(net::create_container_netns(
            &unique("spc"),
            &host_if,
            &bridge,
            Ipv4Addr::new(10, 77, 0, 3),
            24,
            gateway
        )
        .await
        .is_err());
        assert!(net::link_stats(&host_if).await.unwrap().is_some());
    });

    let bridge_addrs = ip_in(&test_ns, &["addr", "show", "dev", &bridge]);
    assert_eq!(
        bridge_addrs.matches("inet 10.77.0.1/24").count(),
        1,
        "{bridge_addrs}"
    );
    let host_link = ip_in(&test_ns, &["link", "show", "dev", &host_if]);
    assert!(
        host_link.contains(&format!("master {bridge}")),
        "{host_link}"
    );
    assert!(host_link.contains("state UP"), "{host_link}");
    let eth0 = ip_in(&cns, &["addr", "show", "dev", "eth0"]);
    assert!(eth0.contains("inet 10.77.0.2/24"), "{eth0}");
    let lo = ip_in(&cns, &["link", "show", "dev", "lo"]);
    assert!(lo.contains("UP"), "{lo}");
    let routes = ip_in(&cns, &["route"]);
    assert!(
        routes.contains("default via 10.77.0.1 dev eth0"),
        "{routes}"
    );
    assert_eq!(net::list_netns(&cns).unwrap(), vec![cns.clone()]);

    // Deleting twice is fine, and the veth pair goes with the namespace.
    net::delete_netns(&cns).unwrap();
    net::delete_netns(&cns).unwrap();
    assert!(net::list_netns(&cns).unwrap().is_empty());
    block_on_in(&test_path, || async {
        let deadline = Instant::now() + Duration::from_secs(10);
        while net::link_stats(&host_if).await.unwrap().is_some() {
            assert!(Instant::now() < deadline, "{host_if} outlived its netns");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        net::delete_link(&bridge).await.unwrap();
        net::delete_link(&bridge).await.unwrap();
        assert!(net::link_stats(&bridge).await.unwrap().is_none());
    });
}

#[test]
#[ignore = "root tier (runc, network namespaces, cgroups): run by scripts/test"]
fn failed_container_netns_setup_is_rolled_back() {
    let mut env = TestEnv::new();
    let (test_ns, test_path) = env.netns("spn");
    let (bridge, host_if) = (unique("spb"), unique("sph"));
    let cns = unique("spc");
    env.track_netns(&cns);

    block_on_in(&test_path, || async {
        // No bridge yet: refused before anything is made.
        let err = net::create_container_netns(
            &cns,
            &host_if,
            &bridge,
            Ipv4Addr::new(10, 66, 0, 2),
            24,
            Ipv4Addr::new(10, 66, 0, 1),
        )
        .await
        .unwrap_err();
        assert!(format!("{err:#}").contains("ensure_bridge"), "{err:#}");

        // A gateway outside the subnet fails at the very last step: all of it is undone.
        net::ensure_bridge(&bridge, Ipv4Addr::new(10, 66, 0, 1), 24)
            .await
            .unwrap();
        let err = net::create_container_netns(
            &cns,
            &host_if,
            &bridge,
            Ipv4Addr::new(10, 66, 0, 2),
            24,
            Ipv4Addr::new(10, 99, 0, 1),
        )
        .await
        .unwrap_err();
        assert!(format!("{err:#}").contains("default route"), "{err:#}");
        assert!(net::link_stats(&host_if).await.unwrap().is_none());
    });
    assert!(net::list_netns(&cns).unwrap().is_empty());
    assert!(!ip_in(&test_ns, &["link"]).contains(&host_if));
}

#[test]
#[ignore = "root tier (runc, network namespaces, cgroups): run by scripts/test"]
fn names_that_do_not_fit_are_refused() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let long = "a-name-longer-than-15";
        assert!(net::ensure_bridge(long, Ipv4Addr::new(10, 1, 0, 1), 24)
            .await
            .is_err());
        assert!(net::delete_link(long).await.is_err());
    });
    assert!(net::create_netns("../escape").is_err());
    assert!(net::delete_netns("a/b").is_err());
}
