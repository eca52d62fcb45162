//! How a network's containers meet the outside: Docker's bridge `gateway_mode_ipv4/ipv6`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ErrorKind;

/// How traffic between a network and the outside is treated (the bridge driver parses it from
/// its options, the firewall renders it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum GatewayMode {
    /// Outbound traffic is masqueraded; inbound reaches containers only through published ports
    /// (DNAT from host addresses), direct access to container addresses from outside the host is
    /// dropped (Docker 28).
    #[default]
    Nat,
    /// No address translation: container addresses are routed as they are, and their published
    /// ports are reachable directly.
    Routed,
    /// Outbound traffic is masqueraded as with [`Nat`](Self::Nat), but direct access to
    /// container addresses from outside is not filtered: any port of a container is reachable
    /// by whoever routes to its address (Docker 28's `nat-unprotected`).
    NatUnprotected,
    /// No gateway: the bridge has no address of the family and the network is internal for it
    /// (no route out, nothing in; Docker 28's `isolated`).
    Isolated,
}

impl GatewayMode {
    /// Every mode, in the order the error message lists them.
    pub const ALL: [Self; 4] = [
        Self::Nat,
        Self::NatUnprotected,
        Self::Routed,
        Self::Isolated,
    ];

    /// The option value: `nat`, `nat-unprotected`, `routed` or `isolated`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Nat => "nat",
            Self::Routed => "routed",
            Self::NatUnprotected => "nat-unprotected",
            Self::Isolated => "isolated",
        }
    }

    /// Whether outbound traffic is masqueraded and ports are published by DNAT from host
    /// addresses (`nat` and `nat-unprotected`).
    pub fn is_nat(self) -> bool {
        matches!(self, Self::Nat | Self::NatUnprotected)
    }
}

impl fmt::Display for GatewayMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A value that is not a [`GatewayMode`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid gateway mode {0:?}: expected nat, nat-unprotected, routed or isolated")]
pub struct GatewayModeError(pub String);

impl GatewayModeError {
    /// Always invalid input.
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::InvalidInput
    }
}

impl FromStr for GatewayMode {
    type Err = GatewayModeError;
    fn from_str(s: &str) -> Result<Self, GatewayModeError> {
        Self::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| GatewayModeError(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_the_rest() {
        for m in GatewayMode::ALL {
            assert_eq!(m.to_string().parse::<GatewayMode>(), Ok(m));
        }
        assert!("nat_unprotected".parse::<GatewayMode>().is_err());
        assert_eq!(GatewayMode::default(), GatewayMode::Nat);
        let e = "NAT".parse::<GatewayMode>().unwrap_err();
        assert!(e.to_string().contains("\"NAT\""), "{e}");
    }
}
