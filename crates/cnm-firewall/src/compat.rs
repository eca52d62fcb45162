//! Coexistence with Docker's iptables rules, over netlink.
//!
//! Docker sets the iptables `FORWARD` policy to DROP. With iptables-nft that chain is a base
//! chain of `table ip filter` (and `table ip6 filter` for ip6tables), and in nftables a drop in
//! any base chain is final: our accept in `table inet cnm` would not save the packet. So cnm's
//! `forward` chain (priority filter - 1, before iptables' filter 0) sets [`FORWARD_MARK`] on
//! everything it accepts, and this module keeps one rule of our own at the top of each such
//! `FORWARD` chain, written exactly as iptables-nft would write
//!
//! ```text
//! -A FORWARD -m mark --mark 0x1000000/0x1000000 -m comment --comment cnm -j ACCEPT
//! ```
//!
//! (native `meta mark` expressions, a counter, and the comment in the rule's user data, which
//! iptables-nft reads back as `-m comment`), so `iptables -S FORWARD` shows it as above. No
//! program is run: the chain is looked up with `NFT_MSG_GETCHAIN`, our rule found in a dump of
//! the chain by its comment, and inserted or deleted in a transaction. When there is no such
//! chain there is nothing to do. Only iptables-nft is seen: with iptables-legacy the chain is
//! invisible to nftables.

use std::io;

use crate::nftnl::{
    Batch, Expr, MetaKey, NFPROTO_IPV4, NFPROTO_IPV6, Table, Verdict, attr_be64, attr_str,
    attribute, attributes,
};
use crate::ruleset::{FORWARD_MARK, masked_cmp};
use crate::transport::NfSocket;

/// The tables iptables-nft and ip6tables-nft keep their `filter` rules in.
pub(crate) const FILTER_TABLES: [Table; 2] = [
    Table::new(NFPROTO_IPV4, "filter"),
    Table::new(NFPROTO_IPV6, "filter"),
];

const CHAIN: &str = "FORWARD";
const COMMENT: &str = "cnm";
const TEXT: &str = "meta mark & 0x01000000 == 0x01000000 counter accept comment \"cnm\"";

/// The rule's user data: `NFTNL_UDATA_RULE_COMMENT` (0), "cnm" NUL-terminated.
fn userdata() -> Vec<u8> {
    let mut ud = vec![0, (COMMENT.len() + 1) as u8];
    ud.extend_from_slice(COMMENT.as_bytes());
    ud.push(0);
    ud
}

/// The rule's expressions, as iptables-nft 1.8.9 writes `-m mark --mark M/M -j ACCEPT`.
pub(crate) fn exprs() -> Vec<Expr> {
    let mark = FORWARD_MARK.to_ne_bytes();
    let [and, test] = masked_cmp(&mark, true, false, &mark);
    vec![
        Expr::Meta {
            key: MetaKey::Mark,
            dreg: 1,
        },
        and,
        test,
        Expr::Counter,
        Expr::Immediate(Verdict::Accept),
    ]
}

/// What a transaction does to the compatibility rules, found out just before it is encoded.
#[derive(Debug, Default, Clone)]
pub(crate) struct CompatOps {
    /// Tables whose `FORWARD` chain lacks our rule: insert it at the top.
    pub insert: Vec<Table>,
    /// Our rules to delete: (table, handle).
    pub delete: Vec<(Table, u64)>,
    /// Chains that already had our rule.
    pub present: usize,
}

impl CompatOps {
    pub fn is_empty(&self) -> bool {
        self.insert.is_empty() && self.delete.is_empty()
    }

    /// Appends the operations to a batch.
    pub fn encode(&self, b: &mut Batch) {
        for t in &self.insert {
            b.add_rule(t, CHAIN, &exprs(), Some(&userdata()), true, TEXT);
        }
        for (t, handle) in &self.delete {
            b.delete_rule(t, CHAIN, *handle, TEXT);
        }
    }
}

/// Whether a rule (its attributes) is ours: comment "cnm" in its user data, or, as the iptables
/// binary wrote it before, an xtables `comment` match saying "cnm".
fn is_ours(rule: &[u8]) -> bool {
    if let Some(ud) = attribute(rule, 7) {
        let mut i = 0;
        while i + 2 <= ud.len() {
            let (ty, len) = (ud[i], ud[i + 1] as usize);
            let value = ud.get(i + 2..i + 2 + len).unwrap_or(&[]);
            if ty == 0 && value.split(|&b| b == 0).next() == Some(COMMENT.as_bytes()) {
                return true;
            }
            i += 2 + len;
        }
    }
    let Some(list) = attribute(rule, 4) else {
        return false;
    };
    attributes(list).into_iter().any(|(_, expr)| {
        attr_str(expr, 1) == Some("match")
            && attribute(expr, 2).is_some_and(|data| {
                attr_str(data, 1) == Some("comment")
                    && attribute(data, 3)
                        .is_some_and(|info| info.split(|&b| b == 0).next() == Some(b"cnm"))
            })
    })
}

/// The handles of our rules in the `FORWARD` chain of `t` (`None`: no such chain).
fn ours(sock: &NfSocket, t: &Table) -> io::Result<Option<Vec<u64>>> {
    if !sock.chain_exists(t.family, &t.name, CHAIN)? {
        return Ok(None);
    }
    Ok(Some(
        sock.rules(t.family, &t.name, CHAIN)?
            .iter()
            .filter(|r| is_ours(r))
            .filter_map(|r| attr_be64(r, 3))
            .collect(),
    ))
}

/// The inserts that make the rule present in every existing `FORWARD` chain.
pub(crate) fn plan_ensure(sock: &NfSocket) -> io::Result<CompatOps> {
    let mut ops = CompatOps::default();
    for t in FILTER_TABLES {
        match ours(sock, &t)? {
            Some(handles) if handles.is_empty() => ops.insert.push(t),
            Some(_) => ops.present += 1,
            None => {}
        }
    }
    Ok(ops)
}

/// The deletes that remove every rule of ours.
pub(crate) fn plan_remove(sock: &NfSocket) -> io::Result<CompatOps> {
    let mut ops = CompatOps::default();
    for t in FILTER_TABLES {
        for h in ours(sock, &t)?.unwrap_or_default() {
            ops.delete.push((t.clone(), h));
        }
    }
    Ok(ops)
}

/// Whether a notification about `table` of `family` may concern our rule.
pub(crate) fn concerns(family: u8, table: &str) -> bool {
    FILTER_TABLES
        .iter()
        .any(|t| t.family == family && t.name == table)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The NEWRULE payload of
    /// `nft --debug=mnl insert rule ip filter FORWARD meta mark & 0x01000000 == 0x01000000
    /// counter accept comment "cnm"` (nft 1.0.6), whose listing `iptables -S` prints as
    /// `-A FORWARD -m mark --mark 0x1000000/0x1000000 -m comment --comment cnm -j ACCEPT`.
    const NFT_INSERT: &str = "020000000b00010066696c7465720000\
        0c000200464f525741524400e400048024000180090001006d6574610000000014000280080002000000\
        000308000100000000014c0001800c00010062697477697365003c00028008000100000000010800020000\
        000001080006000000000008000300000000040c00048008000100000000010c0005800800010000000000\
        2c00018008000100636d700020000280080001000000000108000200000000000c00038008000100000000\
        01140001800c000100636f756e7465720004000280300001800e000100696d6d656469617465000000\
        1c0002800800010000000000100002800c00028008000100000000010a0007000004636e6d000000";

    #[test]
    fn compat_rule_matches_nft_byte_for_byte() {
        let mut b = Batch::new(1, None);
        CompatOps {
            insert: vec![FILTER_TABLES[0].clone()],
            ..CompatOps::default()
        }
        .encode(&mut b);
        let (bytes, described) = b.finish();
        assert_eq!(described.len(), 1);
        // skip BATCH_BEGIN (20 bytes) and the rule's netlink header
        let len = u32::from_ne_bytes(bytes[20..24].try_into().unwrap()) as usize;
        let flags = u16::from_ne_bytes(bytes[26..28].try_into().unwrap());
        assert_eq!(flags & 0x800, 0, "inserted, not appended");
        let payload: String = bytes[36..20 + len]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(payload, NFT_INSERT);
        let rule = &bytes[40..20 + len];
        assert!(is_ours(rule));
    }

    #[test]
    fn rules_with_other_comments_are_not_ours() {
        let mut b = Batch::new(1, None);
        let mut ud = userdata();
        ud[2] = b'x';
        b.add_rule(&FILTER_TABLES[0], CHAIN, &exprs(), Some(&ud), true, TEXT);
        let (bytes, _) = b.finish();
        let len = u32::from_ne_bytes(bytes[20..24].try_into().unwrap()) as usize;
        assert!(!is_ours(&bytes[40..20 + len]));
        assert!(concerns(NFPROTO_IPV6, "filter") && !concerns(NFPROTO_IPV4, "nat"));
    }
}
