//! `openapi.yaml` documents the wire types: each schema lists exactly the fields `cnm-api`'s type
//! puts on the wire (found by encoding a value with every field set), and for Docker's lenient
//! request bodies every documented field is one the type reads. Every `$ref` resolves.

use std::collections::BTreeSet;

use cnm_api::docker::{
    Commit, ComponentVersion, ConfigReference, EndpointIpamConfig, EndpointResource,
    EndpointSettings, EventMessage, Ipam, IpamConfig, Network, NetworkConnectRequest,
    NetworkCreateRequest, NetworkCreateResponse, NetworkDisconnectRequest, NetworkPruneResponse,
    Platform, StringMap, SystemInfo, SystemVersion,
};
use cnm_api::v1::{
    Info, PublishedPort, Sandbox, SandboxConnectRequest, SandboxCreateRequest,
    SandboxDisconnectRequest, SandboxEndpoint,
};
use serde::Serialize;
use serde_json::Value;

const SPEC: &str = include_str!("../openapi.yaml");

/// Field names are Docker's: PascalCase identifiers (schema keywords are lowercase).
fn is_field(key: &str) -> bool {
    key.starts_with(|c: char| c.is_ascii_uppercase()) && key.chars().all(|c| c.is_alphanumeric())
}

/// The field names, at any depth, of `components.schemas.<name>`.
fn documented(name: &str) -> BTreeSet<String> {
    let header = format!("    {name}:");
    let mut out = BTreeSet::new();
    let mut found = false;
    for line in SPEC.lines().skip_while(|l| *l != "  schemas:") {
        if line == header {
            found = true;
            continue;
        }
        if !found {
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        if !line.trim().is_empty() && indent <= 4 {
            break;
        }
        if let Some((key, _)) = line.trim_start().split_once(':')
            && is_field(key)
        {
            out.insert(key.to_owned());
        }
    }
    assert!(found, "no schema {name} in openapi.yaml");
    out
}

/// The field names, at any depth, of `v` as encoded.
fn wire(v: &impl Serialize) -> BTreeSet<String> {
    fn walk(v: &Value, out: &mut BTreeSet<String>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    if is_field(k) {
                        out.insert(k.clone());
                    }
                    walk(v, out);
                }
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = BTreeSet::new();
    walk(
        &serde_json::to_value(v).expect("wire types encode"),
        &mut out,
    );
    out
}

fn some<T: Default>() -> Option<T> {
    Some(T::default())
}

fn strings() -> Option<Vec<String>> {
    Some(vec!["x".to_owned()])
}

#[test]
fn schemas_list_exactly_what_the_wire_types_carry() {
    let port = "10.0.0.1:8000-8001:9000-9001/udp"
        .parse()
        .expect("a valid binding");
    let ipam = Ipam {
        driver: "default".into(),
        config: Vec::new(), // `Config` items are the separate `IpamConfig` schema
        options: Some(StringMap::new()),
    };
    let cases: Vec<(&str, BTreeSet<String>)> = vec![
        (
            "NetworkCreate",
            wire(&NetworkCreateRequest {
                name: "n".into(),
                check_duplicate: some(),
                driver: some(),
                scope: some(),
                internal: some(),
                attachable: some(),
                ingress: some(),
                config_only: some(),
                config_from: some(),
                enable_ipv4: some(),
                enable_ipv6: some(),
                ipam: Some(ipam.clone()),
                options: some(),
                labels: some(),
            }),
        ),
        (
            "NetworkCreateResponse",
            wire(&NetworkCreateResponse::default()),
        ),
        (
            "NetworkPruneResponse",
            wire(&NetworkPruneResponse::default()),
        ),
        (
            "NetworkDisconnect",
            wire(&NetworkDisconnectRequest {
                container: "c".into(),
                force: some(),
            }),
        ),
        (
            "IpamConfig",
            wire(&IpamConfig {
                subnet: "10.0.0.0/24".into(),
                ip_range: "10.0.0.0/25".into(),
                gateway: "10.0.0.1".into(),
                auxiliary_addresses: StringMap::from([("r".into(), "10.0.0.2".into())]),
            }),
        ),
        (
            "Network",
            wire(&Network {
                ipam,
                enable_ipv4: some(),
                config_from: ConfigReference::default(),
                containers: [("sb".to_owned(), EndpointResource::default())].into(),
                // Shown for a network waiting for its plugin only.
                waiting: some(),
                ..Default::default()
            }),
        ),
        (
            "Version",
            wire(&SystemVersion {
                platform: Platform::default(),
                components: vec![ComponentVersion::default()],
                ..Default::default()
            }),
        ),
        (
            "Event",
            wire(&EventMessage::network(
                "connect",
                "id",
                "n",
                "bridge",
                Some("sb"),
            )),
        ),
        ("Info", wire(&Info::default())),
        ("SystemInfo", wire(&SystemInfo::default())),
        ("Commit", wire(&Commit::default())),
        (
            "SandboxCreate",
            wire(&SandboxCreateRequest {
                name: "s".into(),
                hostname: some(),
                domainname: some(),
                extra_hosts: strings(),
                dns: strings(),
                dns_search: strings(),
                dns_options: strings(),
                host_namespace: Some(true),
            }),
        ),
        (
            "SandboxConnect",
            wire(&SandboxConnectRequest {
                network: "n".into(),
                ipv4_address: some(),
                ipv6_address: some(),
                mac_address: some(),
                aliases: strings(),
                dns_names: strings(),
                ports: vec![port],
                gateway_priority: some(),
            }),
        ),
        (
            "SandboxDisconnect",
            wire(&SandboxDisconnectRequest::default()),
        ),
        (
            "Sandbox",
            wire(&Sandbox {
                endpoints: vec![SandboxEndpoint {
                    ports: vec![PublishedPort::from(&port)],
                    driver_opts: [("foo".to_owned(), "bar".to_owned())].into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
        ),
    ];
    for (schema, on_the_wire) in cases {
        assert_eq!(documented(schema), on_the_wire, "schema {schema}");
    }
}

#[test]
fn docker_connect_documents_only_fields_it_reads() {
    // Docker's EndpointSettings has more (operational data cnmd ignores); what is documented
    // must be read.
    let full = wire(&NetworkConnectRequest {
        container: "c".into(),
        endpoint_config: Some(EndpointSettings {
            ipam_config: Some(EndpointIpamConfig {
                ipv4_address: some(),
                ipv6_address: some(),
                link_local_ips: strings(),
            }),
            links: strings(),
            mac_address: some(),
            aliases: strings(),
            driver_opts: some(),
            gw_priority: some(),
            network_id: some(),
            endpoint_id: some(),
            gateway: some(),
            ip_address: some(),
            ip_prefix_len: some(),
            ipv6_gateway: some(),
            global_ipv6_address: some(),
            global_ipv6_prefix_len: some(),
            dns_names: strings(),
        }),
    });
    let documented = documented("NetworkConnect");
    assert!(
        documented.is_subset(&full),
        "documented but not read: {:?}",
        documented.difference(&full).collect::<Vec<_>>()
    );
}

#[test]
fn every_schema_reference_resolves() {
    for r in SPEC.split("$ref: \"#/components/schemas/").skip(1) {
        let name = r.split('"').next().unwrap_or_default();
        assert!(
            SPEC.contains(&format!("\n    {name}:\n")),
            "$ref to a missing schema {name}"
        );
    }
}
