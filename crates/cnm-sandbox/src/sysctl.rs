//! Per-namespace sysctls (`net.*`), read and written through /proc/sys on a thread inside the
//! namespace: /proc/sys/net shows the namespace of the thread that opens it.

use std::path::PathBuf;

use crate::{NetNs, SandboxError};

/// Turns `net.ipv4.ip_forward` into `/proc/sys/net/ipv4/ip_forward`, refusing anything outside
/// `net.` and any path trickery. Pure.
///
/// As sysctl(8) does, a key may use `/` as separator instead, so that interface names with dots
/// survive: `net/ipv6/conf/eth0.100/disable_ipv6`.
pub fn sysctl_path(key: &str) -> Result<PathBuf, SandboxError> {
    let bad = |reason| SandboxError::invalid("sysctl key", key, reason);
    let sep = if key.contains('/') { '/' } else { '.' };
    if !key.starts_with(&format!("net{sep}")) {
        return Err(bad("only net.* sysctls are per namespace"));
    }
    let mut path = PathBuf::from("/proc/sys");
    for part in key.split(sep) {
        if part.is_empty()
            || part == "."
            || part == ".."
            || part.contains('/')
            || part.contains('\0')
        {
            return Err(bad("each dot-separated part must be a plain name"));
        }
        path.push(part);
    }
    Ok(path)
}

/// A sysctl of one interface, `net.<family>.<table>.<interface>.<name>`, with the interface
/// left out: it is filled in with the interface's final name when the sysctl is applied
/// ([`InterfaceConfig::sysctls`](crate::InterfaceConfig::sysctls)). Docker's endpoint option
/// `com.docker.network.endpoint.sysctls` writes these as `net.ipv4.conf.IFNAME.forwarding=1`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterfaceSysctl {
    family: String,
    table: String,
    name: String,
    value: String,
}

impl InterfaceSysctl {
    /// `net.<family>.<table>.<interface>.<name> = value`: `family` is `ipv4`, `ipv6` or `mpls`
    /// (the per-interface trees of /proc/sys/net), `table` and `name` plain names (`conf`,
    /// `forwarding`), and `value` one line.
    pub fn new(family: &str, table: &str, name: &str, value: &str) -> Result<Self, SandboxError> {
        let shown = || format!("net.{family}.{table}.IFNAME.{name}");
        if !matches!(family, "ipv4" | "ipv6" | "mpls") {
            return Err(SandboxError::invalid(
                "interface sysctl",
                shown(),
                "the family must be ipv4, ipv6 or mpls (the per-interface sysctls)",
            ));
        }
        for part in [table, name] {
            if part.is_empty()
                || part == "."
                || part == ".."
                || part.contains(['/', '.', '\0'])
                || part.contains(char::is_whitespace)
            {
                return Err(SandboxError::invalid(
                    "interface sysctl",
                    shown(),
                    "each dot-separated part must be a plain name",
                ));
            }
        }
        if value.contains(['\n', '\0']) {
            return Err(SandboxError::invalid(
                "interface sysctl value",
                value,
                "a sysctl value is one line",
            ));
        }
        Ok(Self {
            family: family.to_owned(),
            table: table.to_owned(),
            name: name.to_owned(),
            value: value.to_owned(),
        })
    }

    /// The key for interface `ifname`, '/'-separated (interface names may hold dots).
    pub fn key(&self, ifname: &str) -> String {
        format!("net/{}/{}/{ifname}/{}", self.family, self.table, self.name)
    }

    /// The value to write.
    pub fn value(&self) -> &str {
        &self.value
    }
}

impl std::fmt::Display for InterfaceSysctl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "net.{}.{}.IFNAME.{}={}",
            self.family, self.table, self.name, self.value
        )
    }
}

/// Sets one sysctl inside `ns`; `key` like `net.ipv4.ip_forward`.
pub async fn set_sysctl(ns: &NetNs, key: &str, value: &str) -> Result<(), SandboxError> {
    set_sysctls(ns, &[(key, value)]).await
}

/// Sets many sysctls inside `ns` on one thread, in order; stops at the first failure.
pub async fn set_sysctls(ns: &NetNs, settings: &[(&str, &str)]) -> Result<(), SandboxError> {
    let mut owned = Vec::with_capacity(settings.len());
    for (key, value) in settings {
        owned.push((key.to_string(), sysctl_path(key)?, value.to_string()));
    }
    let shown = ns.to_string();
    ns.run(move || {
        for (key, path, value) in owned {
            std::fs::write(&path, value.as_bytes())
                .map_err(|e| SandboxError::kernel("set sysctl", format!("{key} in {shown}"), e))?;
        }
        Ok(())
    })
    .await?
}

/// Reads one sysctl inside `ns`, trimmed of its trailing newline.
pub async fn get_sysctl(ns: &NetNs, key: &str) -> Result<String, SandboxError> {
    let path = sysctl_path(key)?;
    let key = key.to_owned();
    let shown = ns.to_string();
    ns.run(move || {
        std::fs::read_to_string(&path)
            .map(|s| s.trim_end().to_owned())
            .map_err(|e| SandboxError::kernel("read sysctl", format!("{key} in {shown}"), e))
    })
    .await?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_to_proc_paths() {
        assert_eq!(
            sysctl_path("net.ipv4.ip_forward").unwrap(),
            PathBuf::from("/proc/sys/net/ipv4/ip_forward")
        );
        assert_eq!(
            sysctl_path("net.ipv6.conf.eth0.disable_ipv6").unwrap(),
            PathBuf::from("/proc/sys/net/ipv6/conf/eth0/disable_ipv6")
        );
        for bad in [
            "kernel.hostname",
            "net..x",
            "net.ipv4/../../x",
            "net.ipv4.",
            "net",
        ] {
            assert!(sysctl_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn interface_sysctls_are_per_interface_plain_names() {
        let s = InterfaceSysctl::new("ipv4", "conf", "log_martians", "1").unwrap();
        assert_eq!(s.key("eth0.5"), "net/ipv4/conf/eth0.5/log_martians");
        assert_eq!(
            sysctl_path(&s.key("eth0")).unwrap(),
            PathBuf::from("/proc/sys/net/ipv4/conf/eth0/log_martians")
        );
        assert_eq!(s.to_string(), "net.ipv4.conf.IFNAME.log_martians=1");
        for (family, table, name, value) in [
            ("core", "conf", "x", "1"),
            ("ipv4", "..", "x", "1"),
            ("ipv4", "conf", "a.b", "1"),
            ("ipv4", "conf", "a/b", "1"),
            ("ipv4", "conf", "", "1"),
            ("ipv4", "conf", "x", "1\n2"),
        ] {
            let e = InterfaceSysctl::new(family, table, name, value).unwrap_err();
            assert_eq!(e.kind(), cnm_types::ErrorKind::InvalidInput, "{e}");
        }
    }
}
