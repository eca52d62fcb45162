//! Coexistence with Docker's iptables rules.
//!
//! Docker sets the iptables `FORWARD` policy to DROP. With iptables-nft that chain is a base
//! chain of `table ip filter`, and in nftables a drop in any base chain is final: our accept in
//! `table inet cnm` would not save the packet. So cnm's `forward` chain (priority filter - 1,
//! before iptables' filter 0) sets [`FORWARD_MARK`] on everything it accepts, and this module
//! adds one rule of our own at the top of the iptables `FORWARD` chain:
//!
//! ```text
//! -A FORWARD -m mark --mark 0x1000000/0x1000000 -m comment --comment cnm -j ACCEPT
//! ```
//!
//! It is installed through the `iptables` binary (so iptables-nft keeps understanding its
//! table), only when that chain exists, and never touches Docker's own rules. Only
//! iptables-nft is detected: with iptables-legacy the chain is invisible to nftables.

use cnm_sandbox::NetNs;

use crate::FirewallError;
use crate::firewall::{run_in, run_nft};
use crate::ruleset::FORWARD_MARK;

fn rule() -> Vec<String> {
    let mark = format!("{FORWARD_MARK:#x}/{FORWARD_MARK:#x}");
    [
        "-m",
        "mark",
        "--mark",
        &mark,
        "-m",
        "comment",
        "--comment",
        "cnm",
        "-j",
        "ACCEPT",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn iptables(args: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = ["-w", "-t", "filter"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    v.extend(args.iter().map(|s| s.to_string()));
    v.extend(rule());
    v
}

/// Does `table ip filter` have a `FORWARD` chain? Asked through nft so that listing cannot
/// create the table (iptables-nft may create built-in chains when asked about them).
async fn forward_chain_exists(ns: &NetNs) -> Result<bool, FirewallError> {
    let args = ["list", "chain", "ip", "filter", "FORWARD"];
    match run_nft(
        ns,
        "look for the iptables FORWARD chain",
        args.map(String::from).to_vec(),
        None,
    )
    .await
    {
        Ok(_) => Ok(true),
        Err(FirewallError::Command { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Our rule is present (`iptables -C` exits 0) or not (exit 1).
async fn present(ns: &NetNs, op: &str) -> Result<bool, FirewallError> {
    match run_in(ns, op, "iptables", iptables(&["-C", "FORWARD"]), None).await {
        Ok(_) => Ok(true),
        Err(FirewallError::Command { status, .. }) if status.ends_with(" 1") => Ok(false),
        Err(FirewallError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Err(FirewallError::Unavailable {
                op: op.into(),
                reason: "an iptables FORWARD chain exists but the iptables binary is not installed"
                    .into(),
            })
        }
        Err(e) => Err(e),
    }
}

/// Installs the rule if the chain exists and the rule does not. Returns whether the rule is
/// in place afterwards (false: no iptables FORWARD chain, nothing to do).
pub(crate) async fn ensure(ns: &NetNs) -> Result<bool, FirewallError> {
    let op = "install the iptables compatibility rule";
    if !forward_chain_exists(ns).await? {
        return Ok(false);
    }
    if !present(ns, op).await? {
        run_in(ns, op, "iptables", iptables(&["-I", "FORWARD", "1"]), None).await?;
    }
    Ok(true)
}

/// Removes the rule; returns whether there was one.
pub(crate) async fn remove(ns: &NetNs) -> Result<bool, FirewallError> {
    let op = "remove the iptables compatibility rule";
    if !forward_chain_exists(ns).await? || !present(ns, op).await? {
        return Ok(false);
    }
    run_in(ns, op, "iptables", iptables(&["-D", "FORWARD"]), None).await?;
    Ok(true)
}
