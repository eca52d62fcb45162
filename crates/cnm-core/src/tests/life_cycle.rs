//! The whole life cycle, as libnetwork's: network → endpoint → join (the sandbox made on the
//! way) → leave → delete, and what each step leaves in the kernel, the driver and the store.

use std::net::IpAddr;

use cnm_sandbox::RouteSpec;
use cnm_types::IfName;

use super::{World, ep_opts};
use crate::testing::{DriverStep, KernelStep};
use crate::{CoreError, JoinOption, NetworkOptions};

#[tokio::test]
async fn create_join_leave_delete_and_nothing_is_left() {
    let w = World::new().await;
    let empty = w.snapshot().await;

    let net = w.net("net1", "10.50.0.0/24").await;
    assert_eq!(net.ipv4()[0].gateway.unwrap().to_string(), "10.50.0.1/24");
    let ep = net.create_endpoint("ep1", ep_opts()).await.unwrap();
    assert_eq!(ep.ipv4().unwrap().to_string(), "10.50.0.2/24");
    let sandbox = ep
        .join(
            "c1",
            [
                JoinOption::hostname("web"),
                JoinOption::domainname("example"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(sandbox.container_id(), "c1");
    assert!(sandbox.key().starts_with(w.run.path()));
    assert_eq!(ep.sandbox_id().as_deref(), Some(sandbox.id()));

    // The kernel: a namespace with loopback and eth0 (born there by the driver), its address,
    // up, and the default route through the network's gateway; the files.
    let k = w.kernel.state();
    let ns = &k.namespaces[sandbox.key()];
    assert!(ns.loopback_up);
    let eth0 = &ns.interfaces[&IfName::new("eth0").unwrap()];
    assert!(eth0.up && !eth0.ipv6);
    assert_eq!(eth0.addresses, [ep.ipv4().unwrap().into()]);
    assert_eq!(
        ns.routes,
        [RouteSpec::default_via(
            "10.50.0.1".parse::<IpAddr>().unwrap(),
            Some(eth0.index)
        )]
    );
    let hosts = &k.files[&sandbox.hosts_path()];
    assert!(hosts.contains("10.50.0.2\tweb.example web"), "{hosts}");
    assert_eq!(
        k.files[&sandbox.resolv_conf_path()],
        "nameserver 192.0.2.53\n"
    );
    // The handles read the committed state without waiting.
    let joined = sandbox.endpoints();
    assert_eq!(joined.len(), 1);
    assert_eq!(joined[0].1.as_ref().map(IfName::as_str), Some("eth0"));
    assert_eq!(sandbox.gateway_endpoint().unwrap().id(), ep.id());

    ep.leave("c1").await.unwrap();
    assert_eq!(ep.sandbox_id(), None);
    let ns = &w.kernel.state().namespaces[sandbox.key()];
    assert!(ns.interfaces.is_empty() && ns.routes.is_empty(), "{ns:?}");
    sandbox.delete().await.unwrap();
    ep.delete().await.unwrap();
    net.delete().await.unwrap();
    let end = w.snapshot().await;
    // The directories the controller made stay (run_dir/sandboxes is a parent, not a sandbox's).
    assert_eq!(end.driver, empty.driver);
    assert_eq!(end.records, empty.records);
    assert_eq!(end.ipam, empty.ipam);
    assert_eq!(end.objects, empty.objects);
    assert_eq!(end.kernel.namespaces, empty.kernel.namespaces);
    assert_eq!(end.kernel.files, empty.kernel.files);
}

#[tokio::test]
async fn a_join_costs_one_interface_call_one_route_and_one_hosts_write() {
    // The kernel seam is where round trips are spent: one call sets the interface up (the real
    // one pipelines its messages), the default route is one more, the hosts file one write.
    let w = World::new().await;
    let net = w.net("n", "10.51.0.0/24").await;
    let ep = net.create_endpoint("e", ep_opts()).await.unwrap();
    let sb = w.ctl.new_sandbox("c", []).await.unwrap();
    w.kernel.faults().reset_calls();
    ep.join_sandbox(&sb, []).await.unwrap();
    let calls = w.kernel.faults().calls();
    assert_eq!(
        calls.into_iter().collect::<Vec<_>>(),
        [
            (KernelStep::ConfigureInterface, 1),
            (KernelStep::AddRoute, 1),
            (KernelStep::WriteHosts, 1),
        ]
    );
}

#[tokio::test]
async fn ipv6_is_turned_on_only_for_an_ipv6_endpoint() {
    let w = World::new().await;
    let net = w
        .ctl
        .new_network(
            "fake",
            "ds",
            NetworkOptions::default()
                .subnet("10.52.0.0/24".parse().unwrap())
                .enable_ipv6(true)
                .subnet("fd00:52::/64".parse().unwrap()),
        )
        .await
        .unwrap();
    let ep = net.create_endpoint("e", ep_opts()).await.unwrap();
    let sb = ep.join("c", []).await.unwrap();
    let k = w.kernel.state();
    let eth0 = &k.namespaces[sb.key()].interfaces[&IfName::new("eth0").unwrap()];
    // The fake kernel refuses an IPv6 address on an interface whose IPv6 is still off.
    assert!(eth0.ipv6);
    assert_eq!(eth0.addresses.len(), 2);
}

#[tokio::test]
async fn a_moved_in_interface_gets_its_mac_and_mtu_and_goes_back_on_leave() {
    let w = World::with_driver(|k| {
        crate::testing::FakeDriver::new("fake", Some(k))
            .with_mode(crate::testing::FakeInterfaceMode::MoveIn)
    })
    .await;
    let net = w
        .ctl
        .new_network(
            "fake",
            "mv",
            NetworkOptions::default()
                .subnet("10.53.0.0/24".parse().unwrap())
                .driver_option(crate::options::KEY_DRIVER_MTU, "1400"),
        )
        .await
        .unwrap();
    assert_eq!(
        w.driver.state().networks[net.id()],
        Some(1400),
        "the driver got the MTU parsed"
    );
    let ep = net
        .create_endpoint("e", ep_opts().mac("02:42:0a:35:00:09".parse().unwrap()))
        .await
        .unwrap();
    let sb = ep.join("c", []).await.unwrap();
    let k = w.kernel.state();
    assert!(k.host_interfaces.is_empty(), "moved out of the host");
    let eth0 = &k.namespaces[sb.key()].interfaces[&IfName::new("eth0").unwrap()];
    assert_eq!(eth0.mac, ep.mac());
    assert_eq!(eth0.mtu, Some(1400));
    ep.leave("c").await.unwrap();
    let k = w.kernel.state();
    assert!(
        k.namespaces[sb.key()].interfaces.is_empty() && k.host_interfaces.is_empty(),
        "given back and deleted by the driver: {k:?}"
    );
    assert_eq!(w.driver.faults().calls()[&DriverStep::Leave], 1);
}

#[tokio::test]
async fn a_sandbox_is_found_by_full_id_then_container_id_then_unique_prefix() {
    let w = World::new().await;
    let a = w.ctl.new_sandbox("c-a", []).await.unwrap();
    let b = w.ctl.new_sandbox("c-b", []).await.unwrap();
    // Named like another sandbox's full id: the full id wins (Docker's rule).
    let named_like_a = w.ctl.new_sandbox(a.id(), []).await.unwrap();
    assert_eq!(w.ctl.sandbox(a.id()).unwrap().id(), a.id());
    assert_eq!(w.ctl.sandbox("c-b").unwrap().id(), b.id());
    assert_eq!(
        w.ctl.sandbox(named_like_a.id()).unwrap().id(),
        named_like_a.id()
    );
    // A unique prefix of the id, still by the scan.
    let prefix = &b.id()[..12];
    let others = [a.id(), named_like_a.id()];
    if others.iter().all(|id| !id.starts_with(prefix)) {
        assert_eq!(w.ctl.sandbox(prefix).unwrap().id(), b.id());
    }
    assert!(matches!(
        w.ctl.sandbox("no-such-container"),
        Err(CoreError::NotFound { .. })
    ));
    // Deleted: found by nothing.
    let b_id = b.id().to_owned();
    b.delete().await.unwrap();
    assert!(w.ctl.sandbox("c-b").is_err());
    assert!(w.ctl.sandbox(&b_id).is_err());
}
