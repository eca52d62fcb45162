//! The drivers' network options, parsed once into types: Docker's keys and words.

use cnm_core::DriverOptions;
use cnm_sandbox::{IpvlanMode, MacvlanMode};
use cnm_types::IfName;

use crate::MacvlanError;

/// `-o parent=IF`: the host link the network's endpoints hang off (`IF.VLAN` for an 802.1Q
/// sub-interface, created when missing). Absent: an internal network.
pub const PARENT: &str = "parent";
/// `-o macvlan_mode=bridge|private|vepa|passthru` (bridge by default).
pub const MACVLAN_MODE: &str = "macvlan_mode";
/// `-o ipvlan_mode=l2|l3|l3s` (l2 by default).
pub const IPVLAN_MODE: &str = "ipvlan_mode";

/// Which of the two drivers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Flavor {
    /// `macvlan`: each endpoint has a MAC of its own on the parent's LAN.
    Macvlan,
    /// `ipvlan`: endpoints share the parent's MAC.
    Ipvlan,
}

impl Flavor {
    /// The registered name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Macvlan => crate::MACVLAN,
            Self::Ipvlan => crate::IPVLAN,
        }
    }

    /// The kernel feature its links need.
    pub fn feature(self) -> &'static str {
        match self {
            Self::Macvlan => "macvlan",
            Self::Ipvlan => "ipvlan",
        }
    }

    fn mode_key(self) -> &'static str {
        match self {
            Self::Macvlan => MACVLAN_MODE,
            Self::Ipvlan => IPVLAN_MODE,
        }
    }

    /// The mode an empty `-o MODE_KEY=` stands for (as Docker words it in its refusal).
    fn default_mode(self) -> &'static str {
        match self {
            Self::Macvlan => "bridge",
            Self::Ipvlan => "l2",
        }
    }
}

/// The link mode of a network's endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// A macvlan mode.
    Macvlan(MacvlanMode),
    /// An ipvlan mode.
    Ipvlan(IpvlanMode),
}

impl Mode {
    /// Whether this is macvlan's passthru (one endpoint per parent, which takes the parent over).
    pub fn is_passthru(self) -> bool {
        self == Self::Macvlan(MacvlanMode::Passthru)
    }

    /// The mode as Docker names it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Macvlan(MacvlanMode::Bridge) => "bridge",
            Self::Macvlan(MacvlanMode::Private) => "private",
            Self::Macvlan(MacvlanMode::Vepa) => "vepa",
            Self::Macvlan(MacvlanMode::Passthru) => "passthru",
            Self::Ipvlan(IpvlanMode::L2) => "l2",
            Self::Ipvlan(IpvlanMode::L3) => "l3",
            Self::Ipvlan(IpvlanMode::L3s) => "l3s",
        }
    }
}

/// The parent as given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parent {
    /// A link of the host, by name. When it is missing and its name reads `LINK.VLAN`, the
    /// network makes it: an 802.1Q sub-interface of `LINK` (as Docker, which uses an existing
    /// link of that name as it is).
    Link {
        /// The parent's name.
        name: IfName,
        /// `LINK.VLAN` read from the name: the link and VLAN id, or why the name is not one.
        vlan: Option<Result<(IfName, u16), String>>,
    },
    /// No parent: a link cnm makes for this network alone (internal: no way off it).
    None,
}

impl Parent {
    /// The name given, if any.
    pub fn name(&self) -> Option<&IfName> {
        match self {
            Self::Link { name, .. } => Some(name),
            Self::None => None,
        }
    }
}

/// A network's options, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkOptions {
    /// Which driver.
    pub flavor: Flavor,
    /// `-o parent`.
    pub parent: Parent,
    /// `-o macvlan_mode` / `-o ipvlan_mode`.
    pub mode: Mode,
}

impl NetworkOptions {
    /// Parses `raw`: unknown keys and bad values are refused, naming them.
    pub fn parse(flavor: Flavor, raw: &DriverOptions) -> Result<Self, MacvlanError> {
        let driver = flavor.name();
        let mut parent = Parent::None;
        let mut mode = match flavor {
            Flavor::Macvlan => Mode::Macvlan(MacvlanMode::Bridge),
            Flavor::Ipvlan => Mode::Ipvlan(IpvlanMode::L2),
        };
        for (key, value) in raw {
            match key.as_str() {
                PARENT if value.is_empty() => {}
                PARENT => parent = parse_parent(driver, value)?,
                k if k == flavor.mode_key() => mode = parse_mode(flavor, value)?,
                // Kept and shown without effect, as dockerd keeps them (compose's
                // `driver_opts`, ipvlan's `ipvlan_flag`); named by `unknown`.
                _ => {}
            }
        }
        Ok(Self {
            flavor,
            parent,
            mode,
        })
    }

    /// The keys of `raw` the driver does not know (the caller warns about them).
    pub fn unknown(flavor: Flavor, raw: &DriverOptions) -> Vec<String> {
        raw.keys()
            .filter(|k| *k != PARENT && *k != flavor.mode_key())
            .cloned()
            .collect()
    }
}

fn parse_parent(driver: &'static str, value: &str) -> Result<Parent, MacvlanError> {
    let bad = |reason: String| MacvlanError::InvalidOption {
        driver,
        key: PARENT,
        value: value.to_owned(),
        reason,
    };
    if value == "lo" {
        return Err(bad(format!(
            "loopback interface is not a valid {driver} parent link"
        )));
    }
    let name = IfName::new(value).map_err(|e| bad(e.to_string()))?;
    let vlan = value.contains('.').then(|| parse_vlan(value));
    Ok(Parent::Link { name, vlan })
}

/// `LINK.VLAN`, in Docker's words when it is not one.
pub(crate) fn parse_vlan(name: &str) -> Result<(IfName, u16), String> {
    let parts: Vec<&str> = name.split('.').collect();
    let [link, vid] = parts[..] else {
        return Err(format!(
            "required interface name format is: name.vlan_id, ex. eth0.10 for vlan 10, instead received {name}"
        ));
    };
    let vid: i64 = vid.parse().map_err(|_| {
        format!("unable to parse a valid vlan id from: {vid} (ex. eth0.10 for vlan 10)")
    })?;
    if !(1..=4094).contains(&vid) {
        return Err(format!("vlan id must be between 1-4094, received: {vid}"));
    }
    let link = IfName::new(link).map_err(|e| e.to_string())?;
    Ok((link, vid as u16))
}

fn parse_mode(flavor: Flavor, value: &str) -> Result<Mode, MacvlanError> {
    let mode = match (flavor, value) {
        (Flavor::Macvlan, "" | "bridge") => Mode::Macvlan(MacvlanMode::Bridge),
        (Flavor::Macvlan, "private") => Mode::Macvlan(MacvlanMode::Private),
        (Flavor::Macvlan, "vepa") => Mode::Macvlan(MacvlanMode::Vepa),
        (Flavor::Macvlan, "passthru") => Mode::Macvlan(MacvlanMode::Passthru),
        (Flavor::Ipvlan, "" | "l2") => Mode::Ipvlan(IpvlanMode::L2),
        (Flavor::Ipvlan, "l3") => Mode::Ipvlan(IpvlanMode::L3),
        (Flavor::Ipvlan, "l3s") => Mode::Ipvlan(IpvlanMode::L3s),
        _ => {
            let (name, default) = (flavor.name(), flavor.default_mode());
            return Err(MacvlanError::InvalidOption {
                driver: name,
                key: flavor.mode_key(),
                value: value.to_owned(),
                reason: format!(
                    "requested {name} mode '{value}' is not valid, '{default}' mode is the {name} driver default"
                ),
            });
        }
    };
    Ok(mode)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cnm_types::ErrorKind;

    fn raw(pairs: &[(&str, &str)]) -> DriverOptions {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults_and_modes() {
        let o = NetworkOptions::parse(Flavor::Macvlan, &raw(&[])).unwrap();
        assert_eq!(o.parent, Parent::None);
        assert_eq!(o.mode, Mode::Macvlan(MacvlanMode::Bridge));
        for (s, m) in [
            ("bridge", MacvlanMode::Bridge),
            ("private", MacvlanMode::Private),
            ("vepa", MacvlanMode::Vepa),
            ("passthru", MacvlanMode::Passthru),
        ] {
            let o =
                NetworkOptions::parse(Flavor::Macvlan, &raw(&[(PARENT, "up0"), (MACVLAN_MODE, s)]))
                    .unwrap();
            assert_eq!(o.mode, Mode::Macvlan(m));
            assert_eq!(o.mode.as_str(), s);
            assert_eq!(o.parent.name().map(IfName::as_str), Some("up0"));
        }
        let o = NetworkOptions::parse(Flavor::Ipvlan, &raw(&[(IPVLAN_MODE, "l3s")])).unwrap();
        assert_eq!(o.mode, Mode::Ipvlan(IpvlanMode::L3s));
        assert_eq!(
            NetworkOptions::parse(Flavor::Ipvlan, &raw(&[]))
                .unwrap()
                .mode,
            Mode::Ipvlan(IpvlanMode::L2)
        );
    }

    #[test]
    fn bad_values_are_refused_in_dockers_words() {
        let e = NetworkOptions::parse(Flavor::Macvlan, &raw(&[(MACVLAN_MODE, "l2")])).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(
            e.to_string()
                .contains("requested macvlan mode 'l2' is not valid, 'bridge' mode is the macvlan driver default"),
            "{e}"
        );
        // Unknown keys are kept (as dockerd keeps them) and named for a warning.
        let kept = raw(&[(MACVLAN_MODE, "bridge"), ("ipvlan_flag", "private")]);
        NetworkOptions::parse(Flavor::Ipvlan, &kept).unwrap();
        assert_eq!(
            NetworkOptions::unknown(Flavor::Ipvlan, &kept),
            ["ipvlan_flag", "macvlan_mode"]
        );
        assert!(NetworkOptions::unknown(Flavor::Macvlan, &raw(&[(PARENT, "x")])).is_empty());
        let e = NetworkOptions::parse(Flavor::Macvlan, &raw(&[(PARENT, "lo")])).unwrap_err();
        assert!(
            e.to_string()
                .contains("loopback interface is not a valid macvlan parent link"),
            "{e}"
        );
        let e = NetworkOptions::parse(Flavor::Macvlan, &raw(&[(PARENT, "a/b")])).unwrap_err();
        assert!(e.to_string().contains("\"parent\""), "{e}");
    }

    #[test]
    fn vlan_names() {
        let o = NetworkOptions::parse(Flavor::Macvlan, &raw(&[(PARENT, "up0.10")])).unwrap();
        let Parent::Link { name, vlan } = o.parent else {
            panic!("a link")
        };
        assert_eq!(name.as_str(), "up0.10");
        let (link, id) = vlan.unwrap().unwrap();
        assert_eq!((link.as_str(), id), ("up0", 10));
        assert_eq!(
            parse_vlan("up0.4095").unwrap_err(),
            "vlan id must be between 1-4094, received: 4095"
        );
        assert_eq!(
            parse_vlan("up0.x").unwrap_err(),
            "unable to parse a valid vlan id from: x (ex. eth0.10 for vlan 10)"
        );
        assert!(parse_vlan("a.b.1").unwrap_err().contains("name.vlan_id"));
        // Without a dot, a plain link.
        let o = NetworkOptions::parse(Flavor::Macvlan, &raw(&[(PARENT, "up0")])).unwrap();
        assert!(matches!(o.parent, Parent::Link { vlan: None, .. }));
    }
}
