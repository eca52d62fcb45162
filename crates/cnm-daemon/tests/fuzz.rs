//! Request decoding, fuzzed: arbitrary bytes and arbitrary JSON values (plain, and shaped like
//! each request type with random values) into every request type's decoder and converter. Never
//! a panic; always Ok or a 4xx with a message.

use std::sync::atomic::{AtomicU64, Ordering};

use cnm_api::docker::{NetworkConnectRequest, NetworkCreateRequest, NetworkDisconnectRequest};
use cnm_api::v1::{SandboxConnectRequest, SandboxCreateRequest, SandboxDisconnectRequest};
use cnm_daemon::ApiError;
use cnm_daemon::request::{Parse, decode, filters};
use proptest::prelude::*;
use serde_json::{Map, Value};

const CASES: u32 = 3000;
static EXECUTIONS: AtomicU64 = AtomicU64::new(0);

fn check<T>(r: Result<T, ApiError>) -> Result<(), TestCaseError> {
    EXECUTIONS.fetch_add(1, Ordering::Relaxed);
    if let Err(e) = r {
        prop_assert!(e.status.is_client_error(), "{e}");
        prop_assert!(!e.message.is_empty());
    }
    Ok(())
}

/// Runs every decoder (and its conversion into typed options) on `body`.
fn all_decoders(body: &[u8]) -> Result<(), TestCaseError> {
    check(decode::<NetworkCreateRequest>(body).and_then(Parse::parse))?;
    check(decode::<NetworkConnectRequest>(body).and_then(Parse::parse))?;
    check(decode::<NetworkDisconnectRequest>(body).and_then(Parse::parse))?;
    check(decode::<SandboxCreateRequest>(body).and_then(Parse::parse))?;
    check(decode::<SandboxConnectRequest>(body).and_then(Parse::parse))?;
    check(decode::<SandboxDisconnectRequest>(body).and_then(Parse::parse))?;
    Ok(())
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        // Strings that look like what the fields want, and arbitrary ones.
        prop_oneof![
            "[a-z0-9./:_-]{0,20}",
            "(10|172|192|fd00)[.:][0-9]{1,3}[.:][0-9]{0,3}[.:]?[0-9]{0,3}(/[0-9]{1,3})?",
            "[0-9.:]{0,8}:?[0-9]{1,6}(/(tcp|udp|sctp|icmp))?",
            any::<String>(),
        ]
        .prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(key(), inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Keys of every request type (so values land in real fields), and random ones.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "Name", "Driver", "Scope", "Internal", "Attachable", "Ingress", "ConfigOnly",
            "ConfigFrom", "Network", "EnableIPv4", "EnableIPv6", "IPAM", "Config", "Subnet",
            "IPRange", "Gateway", "AuxiliaryAddresses", "Options", "Labels", "Container",
            "EndpointConfig", "IPAMConfig", "IPv4Address", "IPv6Address", "Aliases", "DNSNames",
            "MacAddress", "DriverOpts", "GwPriority", "Force", "Hostname", "Domainname",
            "ExtraHosts", "Dns", "DnsSearch", "DnsOptions", "DnsNames", "Ports",
            "GatewayPriority", "com.docker.network.enable_ipv6", "com.docker.network.internal",
        ])
        .prop_map(str::to_owned),
        1 => any::<String>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: CASES,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_bytes(body in prop::collection::vec(any::<u8>(), 0..512)) {
        all_decoders(&body)?;
    }

    #[test]
    fn arbitrary_json(v in json_value()) {
        all_decoders(&serde_json::to_vec(&v).expect("a Value encodes"))?;
    }

    #[test]
    fn arbitrary_objects(m in prop::collection::btree_map(key(), json_value(), 0..12)) {
        let v = Value::Object(m.into_iter().collect());
        all_decoders(&serde_json::to_vec(&v).expect("a Value encodes"))?;
    }

    #[test]
    fn arbitrary_filters(q in any::<String>(), v in json_value()) {
        check(filters(Some(&q), &["name", "label"]))?;
        let encoded: String = serde_json::to_string(&v).expect("a Value encodes")
            .bytes()
            .map(|b| format!("%{b:02X}"))
            .collect();
        check(filters(Some(&format!("filters={encoded}")), &["name", "label", "id"]))?;
    }
}

#[test]
#[allow(clippy::print_stderr)]
fn zz_report_executions() {
    // Informational: how many decoder runs the properties above made (when run before this).
    eprintln!(
        "decoder executions so far: {}",
        EXECUTIONS.load(Ordering::Relaxed)
    );
}
