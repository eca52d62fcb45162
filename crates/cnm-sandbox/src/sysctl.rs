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
}
