//! Golden files of the rendered ruleset for a matrix of network options.
//! `CNM_BLESS=1 cargo test -p cnm-firewall --test golden` rewrites them after a reviewed change.

use std::path::PathBuf;

use cnm_firewall::{
    Action, ChainHook, ChainType, ElementChange, EndpointPort, FieldType, FragmentChain,
    FragmentSet, FragmentSpec, GatewayMode, Key, Match, NetworkRules, PortMapping, Protocol, Rule,
    Ruleset, SetElement, Value,
};
use cnm_sandbox::IpFamily;

fn net(id: &str, v4: bool, v6: bool) -> NetworkRules {
    NetworkRules {
        id: id.into(),
        bridge: format!("br-{id}").parse().unwrap(),
        subnets_v4: if v4 {
            vec!["172.18.0.0/16".parse().unwrap()]
        } else {
            vec![]
        },
        subnets_v6: if v6 {
            vec!["fd00:18::/64".parse().unwrap()]
        } else {
            vec![]
        },
        icc: true,
        masquerade: true,
        internal: false,
        host_access: false,
        gateway_mode_v4: GatewayMode::Nat,
        gateway_mode_v6: GatewayMode::Nat,
        trusted_interfaces: vec![],
    }
}

fn ports(v4: bool, v6: bool) -> Vec<PortMapping> {
    let mut out = Vec::new();
    if v4 {
        let c = "172.18.0.2".parse().unwrap();
        out.push(PortMapping {
            proto: Protocol::Tcp,
            host_ip: None,
            host_ports: (8080, 8080),
            container_ip: c,
            container_ports: (80, 80),
        });
        out.push(PortMapping {
            proto: Protocol::Udp,
            host_ip: None,
            host_ports: (5000, 5009),
            container_ip: c,
            container_ports: (5000, 5009),
        });
        out.push(PortMapping {
            proto: Protocol::Tcp,
            host_ip: Some("127.0.0.1".parse().unwrap()),
            host_ports: (9000, 9000),
            container_ip: c,
            container_ports: (9000, 9000),
        });
        out.push(PortMapping {
            proto: Protocol::Sctp,
            host_ip: Some("10.0.0.1".parse().unwrap()),
            host_ports: (7000, 7002),
            container_ip: c,
            container_ports: (8000, 8002),
        });
    }
    if v6 {
        let c = "fd00:18::2".parse().unwrap();
        out.push(PortMapping {
            proto: Protocol::Tcp,
            host_ip: None,
            host_ports: (8080, 8080),
            container_ip: c,
            container_ports: (80, 80),
        });
        out.push(PortMapping {
            proto: Protocol::Tcp,
            host_ip: Some("2001:db8::1".parse().unwrap()),
            host_ports: (6000, 6099),
            container_ip: c,
            container_ports: (6000, 6099),
        });
    }
    out
}

fn cases() -> Vec<(&'static str, Ruleset)> {
    let mut cases = Vec::new();
    let mut add = |name: &'static str, n: NetworkRules, with_ports: bool| {
        let mut r = Ruleset::new();
        let (v4, v6) = (!n.subnets_v4.is_empty(), !n.subnets_v6.is_empty());
        r.add_network(&n).unwrap();
        if with_ports {
            r.add_port_mappings(&n.id, "ep1", &ports(v4, v6)).unwrap();
        }
        cases.push((name, r));
    };
    add("v4-defaults", net("a", true, false), false);
    add("v4-ports", net("a", true, false), true);
    add("v6-ports", net("a", false, true), true);
    add("dual-ports", net("a", true, true), true);
    add(
        "icc-off",
        NetworkRules {
            icc: false,
            ..net("a", true, false)
        },
        false,
    );
    add(
        "no-masquerade",
        NetworkRules {
            masquerade: false,
            ..net("a", true, true)
        },
        false,
    );
    add(
        "internal",
        NetworkRules {
            internal: true,
            ..net("a", true, true)
        },
        true,
    );
    add(
        "routed-ports",
        NetworkRules {
            gateway_mode_v4: GatewayMode::Routed,
            gateway_mode_v6: GatewayMode::Routed,
            masquerade: false,
            ..net("a", true, true)
        },
        true,
    );
    add(
        "nat-unprotected-ports",
        NetworkRules {
            gateway_mode_v4: GatewayMode::NatUnprotected,
            gateway_mode_v6: GatewayMode::NatUnprotected,
            ..net("a", true, true)
        },
        true,
    );
    add(
        "trusted-interfaces",
        NetworkRules {
            trusted_interfaces: vec!["eth1".parse().unwrap(), "wg0".parse().unwrap()],
            ..net("a", true, true)
        },
        true,
    );
    add(
        "isolated",
        NetworkRules {
            gateway_mode_v4: GatewayMode::Isolated,
            gateway_mode_v6: GatewayMode::Isolated,
            ..net("a", true, true)
        },
        true,
    );
    // a mode per family: each family's rules follow its own mode (Docker's common case first)
    add(
        "mixed-nat4-routed6",
        NetworkRules {
            gateway_mode_v6: GatewayMode::Routed,
            ..net("a", true, true)
        },
        true,
    );
    add(
        "mixed-routed4-nat-unprotected6",
        NetworkRules {
            gateway_mode_v4: GatewayMode::Routed,
            gateway_mode_v6: GatewayMode::NatUnprotected,
            trusted_interfaces: vec!["eth1".parse().unwrap()],
            ..net("a", true, true)
        },
        true,
    );
    add(
        "mixed-nat4-isolated6",
        NetworkRules {
            gateway_mode_v6: GatewayMode::Isolated,
            ..net("a", true, true)
        },
        false,
    );
    add(
        "internal-host-access",
        NetworkRules {
            internal: true,
            host_access: true,
            ..net("a", true, false)
        },
        false,
    );
    // a joined endpoint's guarded port, on a host whose forwarding cnm turned on
    let mut guarded = Ruleset::new();
    guarded.add_network(&net("a", true, true)).unwrap();
    guarded
        .add_endpoint(&EndpointPort {
            endpoint_id: "ep1".into(),
            network_id: "a".into(),
            port: "veth0123456".parse().unwrap(),
            mac: "02:42:ac:12:00:02".parse().unwrap(),
            ipv4: Some("172.18.0.2".parse().unwrap()),
            ipv6: Some("fd00:18::2".parse().unwrap()),
        })
        .unwrap();
    guarded.set_forward_drop(IpFamily::V4, true);
    guarded.set_forward_drop(IpFamily::V6, true);
    cases.push(("guarded-endpoint", guarded));
    let mut two = Ruleset::new();
    two.add_network(&net("a", true, false)).unwrap();
    two.add_network(&NetworkRules {
        subnets_v4: vec!["172.19.0.0/16".parse().unwrap()],
        ..net("b", false, false)
    })
    .unwrap();
    cases.push(("two-networks", two));
    // cnm turned forwarding on and has no network (left): only the firewall's own table
    let mut guard_only = Ruleset::new();
    guard_only.set_forward_drop(IpFamily::V4, true);
    cases.push(("forward-drop-only", guard_only));
    // a second driver's fragment beside the bridge's: tables of its own
    let mut both = Ruleset::new();
    both.add_network(&net("a", true, false)).unwrap();
    both.fragment(&blocklist()).unwrap();
    let ifname = "tdrv0".parse().unwrap();
    both.apply(
        "tdrv",
        &ElementChange::new()
            .add("ifaces", SetElement::new([Value::from(&ifname)]))
            .add(
                "blocked",
                SetElement::new([Value::Ipv4("192.0.2.9".parse().unwrap())]),
            )
            .claim_interface(&ifname),
    )
    .unwrap();
    cases.push(("bridge-and-fragment", both));
    cases
}

/// A driver's fragment: its containers may not reach the addresses of `blocked`.
fn blocklist() -> FragmentSpec {
    FragmentSpec::new("tdrv")
        .set(FragmentSet::new("ifaces", [FieldType::IfName]))
        .set(FragmentSet::new("blocked", [FieldType::Ipv4]))
        .chain(
            FragmentChain::base("screen", ChainHook::Forward, ChainType::Filter, -10)
                .rule(Rule::new(
                    [
                        Match::in_set([Key::IifName], "ifaces"),
                        Match::in_set([Key::IpDaddr], "blocked"),
                    ],
                    Action::Drop,
                ))
                .rule(Rule::new(
                    [Match::in_set([Key::IifName], "ifaces")],
                    Action::Allow,
                )),
        )
}

#[test]
fn nothing_installed_renders_nothing() {
    assert_eq!(Ruleset::new().render(), "");
    // forward drop off again, no network: nothing left
    let mut r = Ruleset::new();
    r.set_forward_drop(IpFamily::V4, true);
    r.set_forward_drop(IpFamily::V4, false);
    assert_eq!(r.render(), "");
}

#[test]
fn rendered_rulesets_match_golden_files() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let bless = std::env::var_os("CNM_BLESS").is_some();
    let mut failures = Vec::new();
    for (name, ruleset) in cases() {
        let path = dir.join(format!("{name}.nft"));
        let got = ruleset.render();
        if bless {
            std::fs::write(&path, &got).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&path).unwrap_or_default();
        if got != want {
            failures.push(format!(
                "{name}: differs from {} (CNM_BLESS=1 to regenerate)\n{got}",
                path.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
