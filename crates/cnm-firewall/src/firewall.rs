//! The `Firewall` handle: the model, the serialisation of transactions, and the two backends.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use cnm_sandbox::NetNs;
use tokio::sync::Mutex;
use tracing::{Instrument, debug, info_span};

use crate::FirewallError;
use crate::model::{self, Elements, Model, NetworkRules, PortMapping};
use crate::nftnl::Batch;
use crate::ruleset::{self, CHAINS, SetName, TABLE};
use crate::transport::NfSocket;

/// How transactions reach the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// One nfnetlink batch sent in process (the default; about 1 ms for 50 port mappings).
    #[default]
    Netlink,
    /// One `nft -f -` run per transaction, from the same rendering: a debugging reference.
    NftCommand,
}

/// What one transaction changes.
pub(crate) enum Change {
    /// `add table` + `delete table` + the whole table: works whether or not it exists.
    Replace(Elements),
    /// Delete then add exactly these elements.
    Elements { del: Elements, add: Elements },
}

impl Change {
    fn added(add: Elements) -> Self {
        Self::Elements {
            del: Elements::new(),
            add,
        }
    }

    fn deleted(del: Elements) -> Self {
        Self::Elements {
            del,
            add: Elements::new(),
        }
    }
}

struct Inner {
    ns: NetNs,
    backend: Backend,
    socket: Option<Arc<NfSocket>>,
    /// Serialises transactions: held from planning to applying, so two operations never
    /// interleave and every change derives from the model, never read back from the kernel.
    tx: Mutex<()>,
    /// The model, locked briefly to plan or apply (never across an await), so `render` can
    /// read it without a copy per operation. Only the holder of `tx` changes it.
    model: std::sync::Mutex<Model>,
    transactions: AtomicU64,
    seq: AtomicU64,
}

/// cnm's nftables firewall in one network namespace (the "host" namespace of a controller).
///
/// Cheap to clone; all clones share the model and serialise their transactions.
#[derive(Clone)]
pub struct Firewall {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Firewall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Firewall")
            .field("netns", &self.inner.ns.id())
            .field("backend", &self.inner.backend)
            .finish_non_exhaustive()
    }
}

impl Firewall {
    /// Opens a netlink socket in `ns` and installs the base table, replacing any previous
    /// `table inet cnm` (one transaction). The caller then re-adds its networks and ports.
    pub async fn new(ns: &NetNs) -> Result<Firewall, FirewallError> {
        Self::with_backend(ns, Backend::Netlink).await
    }

    /// Like [`Firewall::new`] with an explicit backend.
    pub async fn with_backend(ns: &NetNs, backend: Backend) -> Result<Firewall, FirewallError> {
        let socket = match backend {
            Backend::Netlink => Some(Arc::new(
                ns.run(NfSocket::open)
                    .await
                    .map_err(|source| FirewallError::Namespace {
                        op: "open netfilter socket".into(),
                        source,
                    })?
                    .map_err(|e| FirewallError::io("open NETLINK_NETFILTER socket", e))?,
            )),
            Backend::NftCommand => None,
        };
        let fw = Firewall {
            inner: Arc::new(Inner {
                ns: ns.clone(),
                backend,
                socket,
                tx: Mutex::new(()),
                model: std::sync::Mutex::new(Model::default()),
                transactions: AtomicU64::new(0),
                seq: AtomicU64::new(1),
            }),
        };
        fw.reconcile().await?;
        Ok(fw)
    }

    /// The namespace this firewall programs.
    pub fn netns(&self) -> &NetNs {
        &self.inner.ns
    }

    /// Installs a network's filtering and masquerading (one transaction).
    pub async fn add_network(&self, net: &NetworkRules) -> Result<(), FirewallError> {
        let _tx = self.inner.tx.lock().await;
        let add = self.model().plan_add_network(net)?;
        self.commit(&format!("add network {}", net.id), Change::added(add))
            .await?;
        self.model().apply_add_network(net);
        Ok(())
    }

    /// Removes a network and every port it published: only its own elements (one transaction).
    pub async fn remove_network(&self, id: &str) -> Result<(), FirewallError> {
        let _tx = self.inner.tx.lock().await;
        let del = self.model().plan_remove_network(id)?;
        self.commit(&format!("remove network {id}"), Change::deleted(del))
            .await?;
        self.model().apply_remove_network(id);
        Ok(())
    }

    /// Publishes ports of an endpoint on a network (one transaction). Calling it again for
    /// the same endpoint adds more mappings. The batch holds only the new elements, so its
    /// cost does not depend on how many other ports are published.
    pub async fn add_port_mappings(
        &self,
        network_id: &str,
        endpoint_id: &str,
        mappings: &[PortMapping],
    ) -> Result<(), FirewallError> {
        let _tx = self.inner.tx.lock().await;
        let add = self
            .model()
            .plan_add_mappings(network_id, endpoint_id, mappings)?;
        if mappings.is_empty() {
            return Ok(());
        }
        self.commit(
            &format!("publish ports of endpoint {endpoint_id}"),
            Change::added(add),
        )
        .await?;
        self.model()
            .apply_add_mappings(network_id, endpoint_id, mappings);
        Ok(())
    }

    /// Unpublishes every port of an endpoint: deletes exactly its elements (one transaction;
    /// none when the endpoint published nothing).
    pub async fn remove_port_mappings(&self, endpoint_id: &str) -> Result<(), FirewallError> {
        let _tx = self.inner.tx.lock().await;
        let Some(del) = self.model().plan_remove_endpoint(endpoint_id) else {
            return Ok(());
        };
        self.commit(
            &format!("unpublish ports of endpoint {endpoint_id}"),
            Change::deleted(del),
        )
        .await?;
        self.model().apply_remove_endpoint(endpoint_id);
        Ok(())
    }

    /// Re-applies the whole desired ruleset in one transaction (recreating the table whether
    /// or not it exists), which also drops anything no longer in the model.
    pub async fn reconcile(&self) -> Result<(), FirewallError> {
        let _tx = self.inner.tx.lock().await;
        let elements = self.model().elements();
        self.commit("reconcile", Change::Replace(elements)).await
    }

    /// The whole desired ruleset as nft text (`nft -f` accepts it).
    pub fn render(&self) -> String {
        ruleset::render(&self.model().elements())
    }

    /// The number of transactions sent to the kernel so far.
    pub fn transactions(&self) -> u64 {
        self.inner.transactions.load(Ordering::Relaxed)
    }

    /// Coexistence with Docker: if this namespace has an iptables-nft `filter`/`FORWARD` chain
    /// (whose DROP policy would be final for packets cnm accepted), inserts once, through the
    /// `iptables` binary, our own rule
    /// `-m mark --mark 0x1000000/0x1000000 -m comment --comment cnm -j ACCEPT` at its top.
    /// cnm's forward chain (priority filter - 1) sets [`crate::FORWARD_MARK`] on everything it
    /// accepts. Idempotent; never touches other rules. Returns whether the rule is in place
    /// (false: no such chain, nothing to do). Call it at most once per network creation.
    pub async fn ensure_iptables_compat(&self) -> Result<bool, FirewallError> {
        crate::compat::ensure(&self.inner.ns).await
    }

    /// Removes the iptables FORWARD rule added by [`Firewall::ensure_iptables_compat`].
    pub async fn remove_iptables_compat(&self) -> Result<bool, FirewallError> {
        crate::compat::remove(&self.inner.ns).await
    }

    /// Deletes the conntrack entries of `proto`/`port` (and destination `dst` when given) in
    /// this namespace, so a re-published UDP port reaches its new container at once.
    /// Returns how many entries were deleted.
    pub async fn flush_conntrack(
        &self,
        proto: crate::Proto,
        port: u16,
        dst: Option<std::net::IpAddr>,
    ) -> Result<usize, FirewallError> {
        crate::conntrack::flush_conntrack(&self.inner.ns, proto, port, dst).await
    }

    fn model(&self) -> std::sync::MutexGuard<'_, Model> {
        // a panic while planning or applying cannot leave a half-applied model: planning does
        // not mutate, and applying is pure bookkeeping without fallible steps
        self.inner
            .model
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Sends `change` as one transaction (nothing when it is empty). The caller applies the
    /// change to the model only on success, so a refused batch leaves the model unchanged.
    async fn commit(&self, op: &str, change: Change) -> Result<(), FirewallError> {
        if let Change::Elements { del, add } = &change
            && del.is_empty()
            && add.is_empty()
        {
            return Ok(());
        }
        let span = info_span!("nft_transaction", op, backend = ?self.inner.backend);
        async {
            match self.inner.backend {
                Backend::Netlink => self.send_netlink(op, &change).await?,
                Backend::NftCommand => self.send_nft(op, &change).await?,
            }
            self.inner.transactions.fetch_add(1, Ordering::Relaxed);
            debug!("applied");
            Ok::<(), FirewallError>(())
        }
        .instrument(span)
        .await
    }

    async fn send_netlink(&self, op: &str, change: &Change) -> Result<(), FirewallError> {
        let first = self.inner.seq.fetch_add(1 << 20, Ordering::Relaxed) as u32;
        let (bytes, described) = encode(change, first);
        let socket = self
            .inner
            .socket
            .clone()
            .ok_or_else(|| FirewallError::io(op, std::io::Error::other("no netlink socket")))?;
        let op = op.to_string();
        tokio::task::spawn_blocking(move || socket.transact(&op, &bytes, &described))
            .await
            .map_err(|e| FirewallError::io("join the netlink sender", std::io::Error::other(e)))?
    }

    async fn send_nft(&self, op: &str, change: &Change) -> Result<(), FirewallError> {
        let script = nft_script(change);
        run_nft(
            &self.inner.ns,
            op,
            vec!["-f".into(), "-".into()],
            Some(script),
        )
        .await
        .map(|_| ())
    }
}

/// Encodes a change as one nfnetlink batch.
pub(crate) fn encode(change: &Change, first_seq: u32) -> (Vec<u8>, Vec<(u32, String)>) {
    let mut b = Batch::new(first_seq);
    match change {
        Change::Replace(elements) => {
            b.add_table(TABLE);
            b.delete_table(TABLE);
            b.add_table(TABLE);
            for c in &CHAINS {
                b.add_chain(TABLE, c.name, c.hook.map(|(n, p, t, _)| (n, p, t)));
            }
            for set in SetName::ALL {
                b.add_set(TABLE, &set.spec());
                if let Some(elems) = elements.get(&set).filter(|e| !e.is_empty()) {
                    push_elems(&mut b, set, elems, false);
                }
            }
            for rule in ruleset::rules() {
                b.add_rule(TABLE, rule.chain, &rule.exprs, rule.text);
            }
        }
        Change::Elements { del, add } => {
            for (set, elems) in del {
                push_elems(&mut b, *set, elems, true);
            }
            for (set, elems) in add {
                push_elems(&mut b, *set, elems, false);
            }
        }
    }
    b.finish()
}

/// Elements per message, to keep each message well under the kernel's size limits.
const ELEMS_PER_MSG: usize = 512;

fn push_elems(
    b: &mut Batch,
    set: SetName,
    elems: &std::collections::BTreeSet<model::Element>,
    delete: bool,
) {
    let all: Vec<&model::Element> = elems.iter().collect();
    for chunk in all.chunks(ELEMS_PER_MSG) {
        let bytes: Vec<_> = chunk.iter().map(|e| set.elem_bytes(e)).collect();
        let text = chunk
            .iter()
            .map(|e| e.text())
            .collect::<Vec<_>>()
            .join(", ");
        b.set_elems(TABLE, set.name(), None, &bytes, delete, text);
    }
}

/// Renders a change as an `nft -f` script.
pub(crate) fn nft_script(change: &Change) -> String {
    match change {
        Change::Replace(elements) => format!(
            "add table inet {TABLE}\ndelete table inet {TABLE}\n{}",
            ruleset::render(elements)
        ),
        Change::Elements { del, add } => {
            let mut s = String::new();
            for (verb, elems) in [("delete", del), ("add", add)] {
                for (set, es) in elems {
                    let list = es.iter().map(|e| e.text()).collect::<Vec<_>>().join(", ");
                    s.push_str(&format!(
                        "{verb} element inet {TABLE} {} {{ {list} }}\n",
                        set.name()
                    ));
                }
            }
            s
        }
    }
}

/// Runs `nft ARGS` inside `ns` (from a thread that entered it, so the child inherits the
/// namespace), feeding `stdin`; returns stdout.
pub(crate) async fn run_nft(
    ns: &NetNs,
    op: &str,
    args: Vec<String>,
    stdin: Option<String>,
) -> Result<String, FirewallError> {
    run_in(ns, op, "nft", args, stdin).await
}

/// Runs a program inside `ns`; a non-zero exit is a `Command` error.
pub(crate) async fn run_in(
    ns: &NetNs,
    op: &str,
    program: &'static str,
    args: Vec<String>,
    stdin: Option<String>,
) -> Result<String, FirewallError> {
    let cmdline = format!("{program} {}", args.join(" "));
    let op_owned = op.to_string();
    let out = ns
        .run(move || -> std::io::Result<std::process::Output> {
            let mut child = Command::new(program)
                .args(&args)
                .stdin(if stdin.is_some() {
                    Stdio::piped()
                } else {
                    Stdio::null()
                })
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()?;
            if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
                pipe.write_all(text.as_bytes())?;
            }
            child.wait_with_output()
        })
        .await
        .map_err(|source| FirewallError::Namespace {
            op: op_owned.clone(),
            source,
        })?
        .map_err(|e| FirewallError::io(format!("run {cmdline} for {op_owned}"), e))?;
    if !out.status.success() {
        return Err(FirewallError::Command {
            op: op.to_string(),
            command: cmdline,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn element_changes_render_as_nft_commands() {
        let net = NetworkRules {
            id: "n1".into(),
            bridge: "br-n1".parse().unwrap(),
            subnets_v4: vec!["172.18.0.0/16".parse().unwrap()],
            subnets_v6: vec![],
            icc: true,
            masquerade: true,
            internal: false,
            gateway_mode: model::GatewayMode::Nat,
        };
        let s = nft_script(&Change::Elements {
            del: Elements::new(),
            add: model::network_elements(&net),
        });
        assert_eq!(
            s,
            "add element inet cnm bridges { \"br-n1\" }\n\
             add element inet cnm same_bridge { \"br-n1\" . \"br-n1\" }\n\
             add element inet cnm masq4 { \"br-n1\" . 172.18.0.0/16 }\n"
        );
    }

    /// (type, payload) of each message in a batch, BEGIN and END excluded.
    fn split(bytes: &[u8]) -> Vec<(u16, Vec<u8>)> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            let len = u32::from_ne_bytes(bytes[i..i + 4].try_into().unwrap()) as usize;
            let ty = u16::from_ne_bytes(bytes[i + 4..i + 6].try_into().unwrap());
            out.push((ty, bytes[i + 16..i + len].to_vec()));
            i += len;
        }
        out.retain(|(ty, _)| *ty != 0x10 && *ty != 0x11);
        out
    }

    fn nft_reference() -> Vec<(u16, Vec<u8>)> {
        include_str!("../testdata/nft-1.0.6-batch.hex")
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| {
                let (ty, hex) = l.split_once(' ').unwrap();
                let bytes = (0..hex.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                    .collect();
                (ty.parse().unwrap(), bytes)
            })
            .collect()
    }

    const NEWCHAIN: u16 = 0xa03;
    const NEWRULE: u16 = 0xa06;
    const NEWSET: u16 = 0xa09;
    const NEWSETELEM: u16 = 0xa0c;

    #[test]
    fn chains_sets_and_rules_match_nft_byte_for_byte() {
        let (bytes, described) = encode(&Change::Replace(Elements::new()), 1);
        let ours = split(&bytes);
        assert_eq!(ours.len(), described.len());
        // nft's reference has elements in some named sets; compare everything else in order
        let named_elems =
            |(ty, p): &(u16, Vec<u8>)| *ty == NEWSETELEM && !p.windows(7).any(|w| w == b"__set%d");
        let pick = |v: Vec<(u16, Vec<u8>)>| -> Vec<(u16, Vec<u8>)> {
            v.into_iter()
                .filter(|m| [NEWCHAIN, NEWRULE, NEWSET, NEWSETELEM].contains(&m.0))
                .filter(|m| !named_elems(m))
                .collect()
        };
        let ours = pick(ours);
        let theirs = pick(nft_reference());
        assert_eq!(ours.len(), theirs.len());
        for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
            assert_eq!(
                a,
                b,
                "message {i} ({}) differs",
                described_at(&described, a)
            );
        }
    }

    fn described_at(described: &[(u32, String)], m: &(u16, Vec<u8>)) -> String {
        format!("type {:#x}, {} entries described", m.0, described.len())
    }

    #[test]
    fn set_elements_match_nft_byte_for_byte() {
        use crate::model::{Element, Field};
        let br = Field::ifname(&"br-a".parse().unwrap());
        let v4 = |s: &str| Field::V4(s.parse().unwrap());
        let mut elements = Elements::new();
        let mut put = |set, e| {
            elements.entry(set).or_default().insert(e);
        };
        put(
            SetName::Bridges,
            Element {
                key: vec![br],
                key_end: None,
                data: vec![],
            },
        );
        put(
            SetName::Bridges,
            Element {
                key: vec![Field::ifname(&"br-b".parse().unwrap())],
                key_end: None,
                data: vec![],
            },
        );
        put(
            SetName::SameBridge,
            Element {
                key: vec![br, br],
                key_end: None,
                data: vec![],
            },
        );
        put(
            SetName::Masq4,
            Element {
                key: vec![br, v4("172.18.0.0")],
                key_end: Some(vec![br, v4("172.18.255.255")]),
                data: vec![],
            },
        );
        let v6 = |s: &str| Field::V6(s.parse().unwrap());
        let point = |key: Vec<Field>, data: Vec<Field>| Element {
            key,
            key_end: None,
            data,
        };
        // hash sets and maps: single ports, no key end
        put(
            SetName::Published4,
            point(
                vec![v4("172.18.0.2"), Field::Proto(6), Field::Port(80)],
                vec![],
            ),
        );
        put(
            SetName::Published6,
            point(
                vec![v6("fd00:1::2"), Field::Proto(17), Field::Port(53)],
                vec![],
            ),
        );
        put(
            SetName::Dnat4,
            point(
                vec![v4("127.0.0.1"), Field::Proto(17), Field::Port(53)],
                vec![v4("172.18.0.3"), Field::Port(5353)],
            ),
        );
        put(
            SetName::Dnat4Any,
            point(
                vec![Field::Proto(6), Field::Port(80)],
                vec![v4("172.18.0.3"), Field::Port(8080)],
            ),
        );
        put(
            SetName::Dnat6,
            point(
                vec![v6("fd00::1"), Field::Proto(6), Field::Port(80)],
                vec![v6("fd00:1::2"), Field::Port(8080)],
            ),
        );
        put(
            SetName::Dnat6Any,
            point(
                vec![Field::Proto(132), Field::Port(443)],
                vec![v6("fd00:1::2"), Field::Port(8443)],
            ),
        );
        // interval sets and maps: real ranges only
        put(
            SetName::Published4Range,
            Element {
                key: vec![v4("172.18.0.2"), Field::Proto(6), Field::Port(8000)],
                key_end: Some(vec![v4("172.18.0.2"), Field::Proto(6), Field::Port(8010)]),
                data: vec![],
            },
        );
        put(
            SetName::Dnat4Range,
            Element {
                key: vec![v4("10.0.0.1"), Field::Proto(6), Field::Port(8000)],
                key_end: Some(vec![v4("10.0.0.1"), Field::Proto(6), Field::Port(8010)]),
                data: vec![v4("172.18.0.2")],
            },
        );
        put(
            SetName::Dnat4AnyRange,
            Element {
                key: vec![Field::Proto(17), Field::Port(5000)],
                key_end: Some(vec![Field::Proto(17), Field::Port(5009)]),
                data: vec![v4("172.18.0.4")],
            },
        );
        let (bytes, _) = encode(&Change::Replace(elements), 1);
        let elems = |v: Vec<(u16, Vec<u8>)>| -> Vec<Vec<u8>> {
            v.into_iter()
                .filter(|(ty, p)| *ty == NEWSETELEM && !p.windows(7).any(|w| w == b"__set%d"))
                .map(|(_, p)| p)
                .collect()
        };
        let ours = elems(split(&bytes));
        let theirs = elems(nft_reference());
        // the reference also has a masq6 element, which we did not build here
        assert_eq!(ours.len(), 12);
        for m in &ours {
            assert!(
                theirs.contains(m),
                "element message not sent by nft: {m:02x?}"
            );
        }
        assert_eq!(theirs.len(), ours.len() + 1);
    }
}
