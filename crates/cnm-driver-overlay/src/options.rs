//! The overlay driver's network options, parsed once, and the allocation every host gets.

use cnm_core::spi::DriverOptions;

use crate::OverlayError;

/// Docker's option naming the VXLAN id of an overlay network (libnetwork's
/// `netlabel.OverlayVxlanIDList`); cnm takes one id per network.
pub const VXLANID_LIST: &str = "com.docker.network.driver.overlay.vxlanid_list";
/// The UDP port of the network's VXLAN tunnels (cnm's own key; Docker sets it swarm-wide
/// with `--data-path-port`). The same on every host: it is part of the allocation.
pub const VXLAN_PORT: &str = "com.cnm.overlay.vxlan_port";
/// Multicast and broadcast between the network's endpoints across hosts (cnm's own key;
/// libnetwork has none, moby/libnetwork#552): `true` replicates broadcast, multicast and
/// unknown-unicast frames head-end to the VTEP of every other host with endpoints on the
/// network. Off by default: without it such frames stay on their host. The same on every
/// host: it is part of the allocation.
pub const BUM: &str = "com.cnm.overlay.bum";
/// Encryption of the network's traffic between hosts (Docker's option name, `-o encrypted`):
/// present with an empty value, or `true`, turns it on (`false` leaves it off). Its VXLAN
/// traffic then goes through this host's WireGuard (see [`crate::wg`]). The same on every host:
/// it is part of the allocation.
pub const ENCRYPTED: &str = "encrypted";
/// The first VNI handed out when none is asked for (Docker's swarm starts at 4096 too).
pub const FIRST_VNI: u32 = 4096;
/// The largest VNI (24 bits).
pub const MAX_VNI: u32 = (1 << 24) - 1;
/// The IANA VXLAN port.
pub const DEFAULT_PORT: u16 = 4789;

/// The keys of [`cnm_core::spi::NetworkSpec::allocation`].
pub(crate) const ALLOC_VNI: &str = "vni";
pub(crate) const ALLOC_PORT: &str = "port";
pub(crate) const ALLOC_BUM: &str = "bum";
pub(crate) const ALLOC_ENCRYPTED: &str = "encrypted";

/// A network's options as the user gave them, typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverlayOptions {
    /// The VNI asked for, if any (otherwise the lowest free one from [`FIRST_VNI`]).
    pub vni: Option<u32>,
    /// The tunnels' UDP port.
    pub port: u16,
    /// Broadcast and multicast replicated to the other hosts ([`BUM`]).
    pub bum: bool,
    /// Traffic between hosts encrypted ([`ENCRYPTED`]).
    pub encrypted: bool,
}

impl Default for OverlayOptions {
    fn default() -> Self {
        Self {
            vni: None,
            port: DEFAULT_PORT,
            bum: false,
            encrypted: false,
        }
    }
}

impl TryFrom<&DriverOptions> for OverlayOptions {
    type Error = OverlayError;

    fn try_from(raw: &DriverOptions) -> Result<Self, OverlayError> {
        let mut opts = Self::default();
        for (key, value) in raw {
            match key.as_str() {
                VXLANID_LIST => opts.vni = Some(parse_vni(key, value)?),
                VXLAN_PORT => opts.port = parse_port(key, value)?,
                BUM => opts.bum = parse_bool(key, value)?,
                // Docker's `-o encrypted` comes with an empty value: on.
                ENCRYPTED if value.trim().is_empty() => opts.encrypted = true,
                ENCRYPTED => opts.encrypted = parse_bool(key, value)?,
                _ => return Err(OverlayError::UnknownOption { key: key.clone() }),
            }
        }
        Ok(opts)
    }
}

/// One VNI in 1..=2^24-1. Docker's list form gives one per subnet; cnm's networks have one.
pub(crate) fn parse_vni(key: &str, value: &str) -> Result<u32, OverlayError> {
    let v = value.trim();
    if v.contains(',') {
        return Err(OverlayError::invalid(
            key,
            value,
            "one VXLAN id per network (a list is not supported)",
        ));
    }
    match v.parse::<u32>() {
        Ok(n) if (1..=MAX_VNI).contains(&n) => Ok(n),
        _ => Err(OverlayError::invalid(
            key,
            value,
            format!("must be a number from 1 to {MAX_VNI}"),
        )),
    }
}

pub(crate) fn parse_port(key: &str, value: &str) -> Result<u16, OverlayError> {
    match value.trim().parse::<u16>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(OverlayError::invalid(
            key,
            value,
            "must be a UDP port from 1 to 65535",
        )),
    }
}

pub(crate) fn parse_bool(key: &str, value: &str) -> Result<bool, OverlayError> {
    match value.trim() {
        "true" | "1" => Ok(true),
        "false" | "0" | "" => Ok(false),
        _ => Err(OverlayError::invalid(key, value, "must be true or false")),
    }
}

/// What one network got cluster-wide, as every host reads it from the allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Allocation {
    pub vni: u32,
    pub port: u16,
    pub bum: bool,
    pub encrypted: bool,
}

impl Allocation {
    pub(crate) fn to_options(self) -> DriverOptions {
        let mut raw = DriverOptions::from([
            (ALLOC_VNI.to_owned(), self.vni.to_string()),
            (ALLOC_PORT.to_owned(), self.port.to_string()),
        ]);
        // Written only when on: an allocation from before the option reads as off.
        if self.bum {
            raw.insert(ALLOC_BUM.to_owned(), "true".to_owned());
        }
        if self.encrypted {
            raw.insert(ALLOC_ENCRYPTED.to_owned(), "true".to_owned());
        }
        raw
    }

    pub(crate) fn from_options(raw: &DriverOptions) -> Result<Self, OverlayError> {
        let vni = raw.get(ALLOC_VNI).ok_or_else(|| {
            OverlayError::invalid(ALLOC_VNI, "", "the network has no VNI allocated")
        })?;
        Ok(Self {
            vni: parse_vni(ALLOC_VNI, vni)?,
            port: match raw.get(ALLOC_PORT) {
                Some(p) => parse_port(ALLOC_PORT, p)?,
                None => DEFAULT_PORT,
            },
            bum: match raw.get(ALLOC_BUM) {
                Some(b) => parse_bool(ALLOC_BUM, b)?,
                None => false,
            },
            encrypted: match raw.get(ALLOC_ENCRYPTED) {
                Some(b) => parse_bool(ALLOC_ENCRYPTED, b)?,
                None => false,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(pairs: &[(&str, &str)]) -> DriverOptions {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn options_parse_and_bad_values_name_key_and_value() {
        assert_eq!(
            OverlayOptions::try_from(&opts(&[])).unwrap(),
            OverlayOptions::default()
        );
        let o = OverlayOptions::try_from(&opts(&[
            (VXLANID_LIST, "4242"),
            (VXLAN_PORT, "8472"),
            (BUM, "true"),
        ]))
        .unwrap();
        assert_eq!((o.vni, o.port, o.bum), (Some(4242), 8472, true));
        assert!(
            !OverlayOptions::try_from(&opts(&[(BUM, "false")]))
                .unwrap()
                .bum
        );
        for (v, on) in [("", true), ("true", true), ("false", false)] {
            let o = OverlayOptions::try_from(&opts(&[(ENCRYPTED, v)])).unwrap();
            assert_eq!(o.encrypted, on, "encrypted={v:?}");
        }
        for (k, v) in [
            (VXLANID_LIST, "0"),
            (VXLANID_LIST, "16777216"),
            (VXLANID_LIST, "10,11"),
            (VXLANID_LIST, "x"),
            (VXLAN_PORT, "0"),
            (VXLAN_PORT, "70000"),
            (BUM, "yes please"),
            (ENCRYPTED, "maybe"),
        ] {
            let e = OverlayOptions::try_from(&opts(&[(k, v)])).unwrap_err();
            let text = e.to_string();
            assert!(text.contains(k) && text.contains(v), "{text}");
            assert_eq!(e.kind(), cnm_types::ErrorKind::InvalidInput);
        }
        let e = OverlayOptions::try_from(&opts(&[("com.docker.network.bridge.name", "x")]))
            .unwrap_err();
        assert!(e.to_string().contains("com.docker.network.bridge.name"));
    }

    #[test]
    fn the_allocation_round_trips() {
        for (bum, encrypted) in [(false, false), (true, false), (false, true), (true, true)] {
            let a = Allocation {
                vni: 4097,
                port: 4789,
                bum,
                encrypted,
            };
            assert_eq!(Allocation::from_options(&a.to_options()).unwrap(), a);
        }
        let off = Allocation {
            vni: 4097,
            port: 4789,
            bum: false,
            encrypted: false,
        };
        assert!(
            !off.to_options().contains_key(ALLOC_BUM)
                && !off.to_options().contains_key(ALLOC_ENCRYPTED),
            "older hosts read it"
        );
        assert!(Allocation::from_options(&DriverOptions::new()).is_err());
    }
}
