//! The bridge driver's view of `cnm-firewall`: the host namespace's one firewall, which the
//! controller hands every driver ([`cnm_core::spi::DriverContext::firewall`]); the bridge's
//! rules are its built-in bridge fragment (`table inet cnm-bridge`, `table bridge cnm-bridge`).

use std::future::Future;

use cnm_core::undo::Cleanup;
use cnm_firewall::{
    EndpointMappings, EndpointPort, Firewall, FirewallError, NetworkRules, PortMapping,
};
use cnm_sandbox::IpFamily;
use cnm_types::{IfName, MacAddress};

use crate::{BridgeError, BridgePlan};

fn fw_err(
    op: &'static str,
    object: impl Into<String>,
) -> impl FnOnce(FirewallError) -> BridgeError {
    let object = object.into();
    move |e| BridgeError::firewall(op, object, e.kind(), e)
}

/// A shared handle on the driver's firewall (cheap to clone).
#[derive(Debug, Clone)]
pub(crate) struct FirewallHandle {
    fw: Firewall,
}

impl FirewallHandle {
    /// The bridge's view of the shared firewall.
    pub(crate) fn new(fw: Firewall) -> Self {
        Self { fw }
    }

    /// Whether the firewall is loading (a restart): changes only fill its model until the
    /// controller commits every driver's rules.
    pub(crate) fn is_loading(&self) -> bool {
        self.fw.is_loading()
    }

    /// Runs `action` once the rules are in the kernel (at once unless loading).
    pub(crate) async fn after_loading(
        &self,
        what: String,
        action: impl Future<Output = Result<(), cnm_firewall::BoxError>> + Send + 'static,
    ) -> Result<(), BridgeError> {
        let object = self.fw.netns().to_string();
        self.fw
            .after_loading(what, action)
            .await
            .map_err(fw_err("defer until the firewall is committed", object))
    }

    /// Drops (or stops dropping) forwarded traffic of `family` that is not cnm's.
    pub(crate) async fn set_forward_drop(
        &self,
        family: IpFamily,
        on: bool,
    ) -> Result<(), BridgeError> {
        self.fw.set_forward_drop(family, on).await.map_err(fw_err(
            "set the drop of foreign forwarded traffic",
            format!("{family:?} in {}", self.fw.netns()),
        ))
    }

    /// Guards an endpoint's bridge port before it exists (anti-spoofing).
    pub(crate) async fn guard_port(
        &self,
        network_id: &str,
        endpoint_id: &str,
        port: &IfName,
        mac: MacAddress,
        ipv4: Option<std::net::Ipv4Addr>,
        ipv6: Option<std::net::Ipv6Addr>,
    ) -> Result<(), BridgeError> {
        self.fw
            .add_endpoint(&EndpointPort {
                endpoint_id: endpoint_id.to_owned(),
                network_id: network_id.to_owned(),
                port: port.clone(),
                mac,
                ipv4,
                ipv6,
            })
            .await
            .map_err(fw_err(
                "guard the bridge port of",
                format!("endpoint {endpoint_id} ({port})"),
            ))
    }

    /// Guards many endpoints' bridge ports in one transaction (a restore).
    pub(crate) async fn guard_ports(&self, ports: Vec<EndpointPort>) -> Result<(), BridgeError> {
        let count = ports.len();
        self.fw.add_endpoints(ports).await.map_err(fw_err(
            "guard the bridge ports of",
            format!("{count} endpoints"),
        ))
    }

    /// Forgets an endpoint: its guarded port and its published ports (one transaction).
    pub(crate) async fn remove_endpoint(&self, endpoint_id: &str) -> Result<(), BridgeError> {
        self.fw.remove_endpoint(endpoint_id).await.map_err(fw_err(
            "remove the firewall elements of",
            format!("endpoint {endpoint_id}"),
        ))
    }

    #[cfg(feature = "test-hooks")]
    pub(crate) fn firewall(&self) -> &Firewall {
        &self.fw
    }

    pub(crate) fn transactions(&self) -> u64 {
        self.fw.transactions()
    }

    /// Installs the network's rules, then makes sure a FORWARD DROP policy of iptables (Docker's)
    /// lets cnm's forwarded traffic through.
    pub(crate) async fn add_network(&self, plan: &BridgePlan) -> Result<(), BridgeError> {
        // A mode per family. A family the network does not carry takes the other's mode, so a
        // single-family network's rules are what its one mode says, whatever the other option.
        let (m4, m6) = match (plan.ipv4, plan.ipv6) {
            (true, true) => (plan.gateway_mode_v4, plan.gateway_mode_v6),
            (true, false) => (plan.gateway_mode_v4, plan.gateway_mode_v4),
            (false, _) => (plan.gateway_mode_v6, plan.gateway_mode_v6),
        };
        let rules = NetworkRules {
            id: plan.network_id.clone(),
            bridge: plan.bridge.clone(),
            subnets_v4: plan.subnets_v4.clone(),
            subnets_v6: plan.subnets_v6.clone(),
            icc: plan.icc,
            masquerade: plan.masquerade,
            internal: plan.internal,
            host_access: plan.host_access,
            gateway_mode_v4: m4,
            gateway_mode_v6: m6,
            trusted_interfaces: plan.trusted_host_interfaces.clone(),
        };
        let object = format!("network {}", plan.network_id);
        self.fw
            .add_network(&rules)
            .await
            .map_err(fw_err("add firewall rules", &object))?;
        if let Err(e) = self.fw.ensure_iptables_compat().await {
            let err = fw_err("add the iptables FORWARD rule", &object)(e);
            if let Err(cleanup) = self.remove_network(&plan.network_id).await {
                return Err(err.with_cleanup(vec![cleanup]));
            }
            return Err(err);
        }
        Ok(())
    }

    pub(crate) async fn remove_network(&self, network_id: &str) -> Result<(), BridgeError> {
        self.fw.remove_network(network_id).await.map_err(fw_err(
            "remove firewall rules",
            format!("network {network_id}"),
        ))
    }

    /// Publishes the ports of one or many endpoints in one transaction (see
    /// [`Firewall::add_port_mappings_batch`]); an error names the endpoint when there is one.
    pub(crate) async fn add_port_mappings_batch(
        &self,
        batch: Vec<EndpointMappings>,
    ) -> Result<(), BridgeError> {
        let object = match batch.as_slice() {
            [one] => format!("endpoint {}", one.endpoint_id),
            all => format!("{} endpoints", all.len()),
        };
        self.fw
            .add_port_mappings_batch(batch)
            .await
            .map_err(fw_err("add port mappings", object))
    }

    pub(crate) async fn remove_port_mappings(&self, endpoint_id: &str) -> Result<(), BridgeError> {
        self.fw
            .remove_port_mappings(endpoint_id)
            .await
            .map_err(fw_err(
                "remove port mappings",
                format!("endpoint {endpoint_id}"),
            ))
    }

    /// Deletes conntrack entries towards the mappings' host ports, so flows that predate the
    /// mapping (or went to a previous container) follow the new DNAT at once.
    pub(crate) async fn flush_conntrack(
        &self,
        mappings: &[PortMapping],
    ) -> Result<(), BridgeError> {
        for m in mappings {
            for port in m.host_ports.0..=m.host_ports.1 {
                cnm_firewall::flush_conntrack(self.fw.netns(), m.proto, port, m.host_ip)
                    .await
                    .map_err(fw_err(
                        "flush conntrack entries",
                        format!("{}/{port}", m.proto),
                    ))?;
            }
        }
        Ok(())
    }
}
