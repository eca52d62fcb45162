//! How a network's containers meet the outside: Docker's bridge `gateway_mode_ipv4/ipv6`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ErrorKind;

/// How traffic between a network and the outside is treated (the bridge driver parses it from
/// its options, the firewall renders it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
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
}

impl GatewayMode {
    /// The option value: `nat` or `routed`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Nat => "nat",
            Self::Routed => "routed",
        }
    }
}

impl fmt::Display for GatewayMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A value that is not a [`GatewayMode`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid gateway mode {0:?}: expected nat or routed")]
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
        match s {
            "nat" => Ok(Self::Nat),
            "routed" => Ok(Self::Routed),
            _ => Err(GatewayModeError(s.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_the_rest() {
        for m in [GatewayMode::Nat, GatewayMode::Routed] {
            assert_eq!(m.to_string().parse::<GatewayMode>(), Ok(m));
        }
        assert_eq!(GatewayMode::default(), GatewayMode::Nat);
        let e = "NAT".parse::<GatewayMode>().unwrap_err();
        assert!(e.to_string().contains("\"NAT\""), "{e}");
    }
}
