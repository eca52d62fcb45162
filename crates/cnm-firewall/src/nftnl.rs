//! The nf_tables netlink encoding: attributes, expressions and one batch of messages.
//!
//! Written from the kernel's uapi (`linux/netfilter/nf_tables.h`, `nfnetlink.h`) and checked
//! byte for byte against what `nft --debug=mnl` 1.0.6 sends for the same ruleset (see the unit
//! tests), so that `nft list` shows our rules exactly as if `nft -f` had added them.

use std::borrow::Cow;
use std::collections::HashMap;

pub(crate) const NETLINK_NETFILTER: isize = 12;
pub(crate) const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
/// `NFNL_BATCH_GENID`: the batch is refused with `ERESTART` unless the ruleset generation is
/// still this one (optimistic concurrency, as nft uses it).
const NFNL_BATCH_GENID: u16 = 1;
/// The multicast group of nf_tables change notifications.
pub(crate) const NFNLGRP_NFTABLES: u32 = 7;
pub(crate) const NLMSG_ERROR: u16 = 2;
pub(crate) const NLMSG_DONE: u16 = 3;

pub(crate) const NLM_F_REQUEST: u16 = 0x1;
pub(crate) const NLM_F_ACK: u16 = 0x4;
pub(crate) const NLM_F_DUMP: u16 = 0x300;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;

pub(crate) const NFPROTO_INET: u8 = 1;
pub(crate) const NFPROTO_IPV4: u8 = 2;
pub(crate) const NFPROTO_BRIDGE: u8 = 7;
pub(crate) const NFPROTO_IPV6: u8 = 10;

/// nf_tables message types (`enum nf_tables_msg_types`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub(crate) enum MsgType {
    NewTable = 0,
    GetTable = 1,
    DelTable = 2,
    NewChain = 3,
    GetChain = 4,
    NewRule = 6,
    GetRule = 7,
    DelRule = 8,
    NewSet = 9,
    NewSetElem = 12,
    DelSetElem = 14,
    NewGen = 15,
    GetGen = 16,
}

impl MsgType {
    fn verb(self) -> &'static str {
        match self {
            Self::NewTable => "add table",
            Self::GetTable => "list tables",
            Self::DelTable => "delete table",
            Self::NewChain => "add chain",
            Self::GetChain => "get chain",
            Self::NewRule => "add rule",
            Self::GetRule => "list rules",
            Self::DelRule => "delete rule",
            Self::NewSet => "add set",
            Self::NewSetElem => "add element",
            Self::DelSetElem => "delete element",
            Self::NewGen => "new generation",
            Self::GetGen => "get generation",
        }
    }
}

/// The nfnetlink message type of an nf_tables message.
pub(crate) const fn nft_type(ty: MsgType) -> u16 {
    (NFNL_SUBSYS_NFTABLES << 8) | ty as u16
}

/// The family keyword of an nfproto value, as nft writes it.
pub(crate) fn family_name(family: u8) -> &'static str {
    match family {
        NFPROTO_INET => "inet",
        NFPROTO_IPV4 => "ip",
        NFPROTO_BRIDGE => "bridge",
        NFPROTO_IPV6 => "ip6",
        _ => "unknown",
    }
}

/// One table: its family and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Table {
    pub family: u8,
    pub name: Cow<'static, str>,
}

impl Table {
    pub(crate) const fn new(family: u8, name: &'static str) -> Self {
        Self {
            family,
            name: Cow::Borrowed(name),
        }
    }
}

impl std::fmt::Display for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", family_name(self.family), self.name)
    }
}

/// Splits netlink attributes into (type without flags, payload).
pub(crate) fn attributes(mut buf: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while buf.len() >= 4 {
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        let ty = u16::from_ne_bytes([buf[2], buf[3]]) & 0x3fff;
        if len < 4 || len > buf.len() {
            break;
        }
        out.push((ty, &buf[4..len]));
        let next = len.div_ceil(4) * 4;
        buf = buf.get(next..).unwrap_or(&[]);
    }
    out
}

/// The first attribute of type `ty`.
pub(crate) fn attribute(buf: &[u8], ty: u16) -> Option<&[u8]> {
    attributes(buf)
        .into_iter()
        .find(|(t, _)| *t == ty)
        .map(|(_, v)| v)
}

/// A NUL-terminated string attribute.
pub(crate) fn attr_str(buf: &[u8], ty: u16) -> Option<&str> {
    let v = attribute(buf, ty)?;
    let end = v.iter().position(|&b| b == 0).unwrap_or(v.len());
    std::str::from_utf8(&v[..end]).ok()
}

/// A big-endian u32 attribute.
pub(crate) fn attr_be32(buf: &[u8], ty: u16) -> Option<u32> {
    let v = attribute(buf, ty)?;
    Some(u32::from_be_bytes(v.get(..4)?.try_into().ok()?))
}

/// A big-endian u64 attribute.
pub(crate) fn attr_be64(buf: &[u8], ty: u16) -> Option<u64> {
    let v = attribute(buf, ty)?;
    Some(u64::from_be_bytes(v.get(..8)?.try_into().ok()?))
}

/// One request message outside a batch (a get or a dump), with its sequence number.
pub(crate) fn request(
    ty: MsgType,
    flags: u16,
    family: u8,
    seq: u32,
    attrs: impl FnOnce(&mut Attrs<'_>),
) -> Vec<u8> {
    let mut buf = Vec::with_capacity(64);
    buf.extend_from_slice(&[0; 4]);
    buf.extend_from_slice(&nft_type(ty).to_ne_bytes());
    buf.extend_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes());
    buf.push(family);
    buf.push(0);
    buf.extend_from_slice(&0u16.to_be_bytes());
    attrs(&mut Attrs { buf: &mut buf });
    let len = buf.len() as u32;
    buf[..4].copy_from_slice(&len.to_ne_bytes());
    buf
}

const NLA_F_NESTED: u16 = 0x8000;

/// Appends netlink attributes to a buffer.
pub(crate) struct Attrs<'a> {
    buf: &'a mut Vec<u8>,
}

impl Attrs<'_> {
    pub fn bytes(&mut self, ty: u16, data: &[u8]) -> &mut Self {
        let len = 4 + data.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        pad(self.buf);
        self
    }
    pub fn str(&mut self, ty: u16, s: &str) -> &mut Self {
        let mut d = s.as_bytes().to_vec();
        d.push(0);
        self.bytes(ty, &d)
    }
    pub fn be32(&mut self, ty: u16, v: u32) -> &mut Self {
        self.bytes(ty, &v.to_be_bytes())
    }
    pub fn nest(&mut self, ty: u16, f: impl FnOnce(&mut Attrs<'_>)) -> &mut Self {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0, 0, 0, 0]);
        f(&mut Attrs { buf: self.buf });
        let len = (self.buf.len() - start) as u16;
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        self.buf[start + 2..start + 4].copy_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        self
    }
    /// `NFTA_DATA_VALUE` nested in `ty`.
    pub fn data(&mut self, ty: u16, value: &[u8]) -> &mut Self {
        self.nest(ty, |a| {
            a.bytes(1, value);
        })
    }
}

fn pad(buf: &mut Vec<u8>) {
    while !buf.len().is_multiple_of(4) {
        buf.push(0);
    }
}

/// Registers as nft numbers them: 1..=4 are 16-byte registers, 8.. are 4-byte ones.
pub(crate) type Reg = u32;

/// Verdicts (`NF_DROP`, `NF_ACCEPT`, `NFT_JUMP`, `NFT_RETURN`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    Drop,
    Accept,
    Return,
    Jump(Cow<'static, str>),
}

/// A meta key (`enum nft_meta_keys`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum MetaKey {
    /// The link-layer protocol (`meta protocol`, an ether type in network order).
    Protocol = 1,
    Mark = 3,
    IifName = 6,
    OifName = 7,
    NfProto = 15,
    L4Proto = 16,
}

/// A ct key (`enum nft_ct_keys`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum CtKey {
    State = 0,
    Status = 2,
}

/// One nf_tables expression, with the attributes in the order nft emits them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Expr {
    Meta {
        key: MetaKey,
        dreg: Reg,
    },
    MetaSet {
        key: MetaKey,
        sreg: Reg,
    },
    /// `eq` (false) or `neq` (true).
    Cmp {
        sreg: Reg,
        neq: bool,
        data: Vec<u8>,
    },
    /// Base 1 = network header, 2 = transport header.
    Payload {
        dreg: Reg,
        base: u32,
        offset: u32,
        len: u32,
    },
    /// A lookup in a named set; `dreg` for maps.
    Lookup {
        sreg: Reg,
        dreg: Option<Reg>,
        set: Cow<'static, str>,
        inv: bool,
    },
    /// A lookup in an anonymous constant set, created with the rule.
    LookupAnon {
        sreg: Reg,
        set: &'static AnonSet,
    },
    Immediate(Verdict),
    /// `with_op` mirrors nft, which sends `NFTA_BITWISE_OP` for some rules and not others.
    /// `mask` and `xor` have the operand's length.
    Bitwise {
        reg: Reg,
        mask: Vec<u8>,
        xor: Vec<u8>,
        with_op: bool,
    },
    /// A packet and byte counter (what iptables-nft puts in every rule).
    Counter,
    /// hton of a 1-byte value widened to 2 bytes, as nft emits for `meta l4proto` in concats.
    ByteorderHton {
        reg: Reg,
    },
    Ct {
        key: CtKey,
        dreg: Reg,
    },
    /// `fib daddr type`.
    FibDaddrType {
        dreg: Reg,
    },
    Dnat {
        family: u8,
        addr: Reg,
        proto: Option<Reg>,
    },
    Masq,
}

impl Expr {
    fn name(&self) -> &'static str {
        match self {
            Self::Meta { .. } | Self::MetaSet { .. } => "meta",
            Self::Cmp { .. } => "cmp",
            Self::Payload { .. } => "payload",
            Self::Lookup { .. } | Self::LookupAnon { .. } => "lookup",
            Self::Immediate(_) => "immediate",
            Self::Bitwise { .. } => "bitwise",
            Self::Counter => "counter",
            Self::ByteorderHton { .. } => "byteorder",
            Self::Ct { .. } => "ct",
            Self::FibDaddrType { .. } => "fib",
            Self::Dnat { .. } => "nat",
            Self::Masq => "masq",
        }
    }

    /// Encodes the expression's `NFTA_EXPR_DATA`; `anon` is the id of its anonymous set.
    fn encode(&self, a: &mut Attrs<'_>, table: &Table, set_ids: &SetIds, anon: Option<u32>) {
        match self {
            Self::Meta { key, dreg } => {
                a.be32(2, *key as u32).be32(1, *dreg);
            }
            Self::MetaSet { key, sreg } => {
                a.be32(2, *key as u32).be32(3, *sreg);
            }
            Self::Cmp { sreg, neq, data } => {
                a.be32(1, *sreg).be32(2, u32::from(*neq)).data(3, data);
            }
            Self::Payload {
                dreg,
                base,
                offset,
                len,
            } => {
                a.be32(1, *dreg)
                    .be32(2, *base)
                    .be32(3, *offset)
                    .be32(4, *len);
            }
            Self::Lookup {
                sreg,
                dreg,
                set,
                inv,
            } => {
                a.be32(2, *sreg);
                if let Some(d) = dreg {
                    a.be32(3, *d);
                }
                a.str(1, set);
                if let Some(id) = set_ids.get(&(table.clone(), set.to_string())) {
                    a.be32(4, *id);
                }
                if *inv {
                    a.be32(5, 1);
                }
            }
            Self::LookupAnon { sreg, .. } => {
                a.be32(2, *sreg).str(1, "__set%d");
                if let Some(id) = anon {
                    a.be32(4, id);
                }
            }
            Self::Immediate(v) => {
                a.be32(1, 0).nest(2, |d| {
                    d.nest(2, |v2| match v {
                        Verdict::Drop => {
                            v2.be32(1, 0);
                        }
                        Verdict::Accept => {
                            v2.be32(1, 1);
                        }
                        Verdict::Return => {
                            v2.be32(1, (-5i32) as u32);
                        }
                        Verdict::Jump(chain) => {
                            v2.be32(1, (-3i32) as u32).str(2, chain);
                        }
                    });
                });
            }
            Self::Bitwise {
                reg,
                mask,
                xor,
                with_op,
            } => {
                a.be32(1, *reg).be32(2, *reg);
                if *with_op {
                    a.be32(6, 0);
                }
                a.be32(3, mask.len() as u32).data(4, mask).data(5, xor);
            }
            Self::Counter => {}
            Self::ByteorderHton { reg } => {
                a.be32(1, *reg)
                    .be32(2, *reg)
                    .be32(3, 1)
                    .be32(4, 1)
                    .be32(5, 2);
            }
            Self::Ct { key, dreg } => {
                a.be32(2, *key as u32).be32(1, *dreg);
            }
            Self::FibDaddrType { dreg } => {
                // NFTA_FIB_FLAGS = NFTA_FIB_F_DADDR, NFTA_FIB_RESULT = NFT_FIB_RESULT_ADDRTYPE
                a.be32(3, 2).be32(2, 3).be32(1, *dreg);
            }
            Self::Dnat {
                family,
                addr,
                proto,
            } => {
                a.be32(1, 1).be32(2, u32::from(*family)).be32(3, *addr);
                if let Some(p) = proto {
                    a.be32(5, *p);
                }
            }
            Self::Masq => {}
        }
    }
}

/// A set's type information (`NFTA_SET_*`), as nft describes it.
#[derive(Debug, Clone)]
pub(crate) struct SetSpec {
    pub name: String,
    pub flags: u32,
    pub key_type: u32,
    pub key_len: u32,
    pub data: Option<(u32, u32)>,
    /// Field lengths of a concatenated interval key (`NFTA_SET_DESC_CONCAT`).
    pub concat: Vec<u32>,
    /// `NFTA_SET_DESC_SIZE` (anonymous sets).
    pub size: Option<u32>,
    pub userdata: Vec<u8>,
}

/// An anonymous constant set (`{ tcp, udp, sctp }`), as nft describes it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct AnonSet {
    pub key_type: u32,
    pub key_len: u32,
    /// Each element's key bytes.
    pub elems: &'static [&'static [u8]],
    /// The set's user data (byte order and typeof, so that nft lists names).
    pub userdata: &'static [u8],
    /// The elements as nft writes them.
    pub text: &'static str,
}

/// One element as bytes.
#[derive(Debug, Clone)]
pub(crate) struct ElemBytes {
    pub key: Vec<u8>,
    pub key_end: Option<Vec<u8>>,
    pub data: Option<Vec<u8>>,
}

/// (table, set name) → the id of a set created in a batch.
type SetIds = HashMap<(Table, String), u32>;

/// One nfnetlink batch: BEGIN, messages, END. Every message asks for an ack so errors are
/// matched to the message that caused them (by sequence number).
pub(crate) struct Batch {
    buf: Vec<u8>,
    seq: u32,
    /// sequence number → decoded description of the message, for error reports
    described: Vec<(u32, String)>,
    next_set_id: u32,
    /// (table, set name) → the id of a set created in this batch
    set_ids: SetIds,
}

impl Batch {
    /// A batch whose BEGIN carries `genid` when given: the kernel then refuses the whole
    /// batch with `ERESTART` if another transaction committed since that generation.
    pub fn new(first_seq: u32, genid: Option<u32>) -> Self {
        let mut b = Self {
            buf: Vec::with_capacity(4096),
            seq: first_seq,
            described: Vec::new(),
            next_set_id: 1,
            set_ids: HashMap::new(),
        };
        b.header(
            NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            0,
            NFNL_SUBSYS_NFTABLES,
            |a| {
                if let Some(g) = genid {
                    a.be32(NFNL_BATCH_GENID, g);
                }
            },
        );
        b
    }

    fn header(
        &mut self,
        ty: u16,
        flags: u16,
        family: u8,
        res_id: u16,
        attrs: impl FnOnce(&mut Attrs<'_>),
    ) -> u32 {
        let seq = self.seq;
        self.seq += 1;
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0; 4]);
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        self.buf.push(family);
        self.buf.push(0); // NFNETLINK_V0
        self.buf.extend_from_slice(&res_id.to_be_bytes());
        attrs(&mut Attrs { buf: &mut self.buf });
        let len = (self.buf.len() - start) as u32;
        self.buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
        seq
    }

    fn msg(
        &mut self,
        family: u8,
        ty: MsgType,
        flags: u16,
        what: String,
        attrs: impl FnOnce(&mut Attrs<'_>),
    ) {
        let seq = self.header(
            nft_type(ty),
            NLM_F_REQUEST | NLM_F_ACK | flags,
            family,
            0,
            attrs,
        );
        self.described.push((seq, format!("{} {what}", ty.verb())));
    }

    pub fn add_table(&mut self, t: &Table) {
        self.msg(
            t.family,
            MsgType::NewTable,
            NLM_F_CREATE,
            t.to_string(),
            |a| {
                a.str(1, &t.name).be32(2, 0);
            },
        );
    }

    pub fn delete_table(&mut self, t: &Table) {
        self.msg(t.family, MsgType::DelTable, 0, t.to_string(), |a| {
            a.str(1, &t.name);
        });
    }

    /// A chain; `hook` is (hook number, priority, type name) for base chains, policy accept.
    pub fn add_chain(&mut self, t: &Table, name: &str, hook: Option<(u32, i32, &str)>) {
        self.msg(
            t.family,
            MsgType::NewChain,
            NLM_F_CREATE,
            format!("{t} {name}"),
            |a| {
                a.str(1, &t.name).str(3, name);
                if let Some((num, prio, ty)) = hook {
                    a.str(7, ty).be32(5, 1).nest(4, |h| {
                        h.be32(1, num).be32(2, prio as u32);
                    });
                }
            },
        );
    }

    /// Gives the named sets of a batch their ids up front, in this order, as nft does for
    /// every table of a ruleset before it creates the first one (rules refer to sets by id).
    pub fn declare_set(&mut self, t: &Table, name: &str) {
        let id = self.next_set_id;
        self.next_set_id += 1;
        self.set_ids.insert((t.clone(), name.to_string()), id);
    }

    pub fn add_set(&mut self, t: &Table, spec: &SetSpec) -> u32 {
        let id = match self.set_ids.get(&(t.clone(), spec.name.clone())) {
            Some(id) if spec.name != "__set%d" => *id,
            _ => {
                let id = self.next_set_id;
                self.next_set_id += 1;
                if spec.name != "__set%d" {
                    self.set_ids.insert((t.clone(), spec.name.clone()), id);
                }
                id
            }
        };
        self.msg(
            t.family,
            MsgType::NewSet,
            NLM_F_CREATE,
            format!("{t} {}", spec.name),
            |a| {
                a.str(1, &t.name)
                    .str(2, &spec.name)
                    .be32(3, spec.flags)
                    .be32(4, spec.key_type)
                    .be32(5, spec.key_len);
                if let Some((ty, len)) = spec.data {
                    a.be32(6, ty).be32(7, len);
                }
                a.be32(10, id);
                if let Some(size) = spec.size {
                    a.nest(9, |d| {
                        d.be32(1, size);
                    });
                } else if !spec.concat.is_empty() {
                    a.nest(9, |d| {
                        d.nest(2, |c| {
                            for len in &spec.concat {
                                c.nest(1, |f| {
                                    f.be32(1, *len);
                                });
                            }
                        });
                    });
                }
                a.bytes(13, &spec.userdata);
            },
        );
        id
    }

    /// Adds (`delete == false`) or deletes elements of a set; `text` describes them.
    pub fn set_elems(
        &mut self,
        t: &Table,
        set: &str,
        set_id: Option<u32>,
        elems: &[ElemBytes],
        delete: bool,
        text: String,
    ) {
        let (ty, flags) = if delete {
            (MsgType::DelSetElem, 0)
        } else {
            (MsgType::NewSetElem, NLM_F_CREATE)
        };
        let set_id = set_id.or_else(|| self.set_ids.get(&(t.clone(), set.to_string())).copied());
        self.msg(
            t.family,
            ty,
            flags,
            format!("{t} {set} {{ {text} }}"),
            |a| {
                a.str(1, &t.name).str(2, set);
                if let Some(id) = set_id {
                    a.be32(4, id);
                }
                a.nest(3, |l| {
                    // nft numbers the list entries 1, 2, 3… (the kernel ignores the type)
                    for (i, e) in elems.iter().enumerate() {
                        l.nest((i % 0x3fff) as u16 + 1, |el| {
                            encode_elem(el, e);
                        });
                    }
                });
            },
        );
    }

    /// A rule appended to `chain` (`insert`: put at its top instead) with optional user data;
    /// anonymous sets it uses are created just before it.
    pub fn add_rule(
        &mut self,
        t: &Table,
        chain: &str,
        exprs: &[Expr],
        userdata: Option<&[u8]>,
        insert: bool,
        text: &str,
    ) {
        let mut anon = Vec::new();
        for e in exprs {
            if let Expr::LookupAnon { set, .. } = e {
                let spec = SetSpec {
                    name: "__set%d".into(),
                    flags: 0x3, // NFT_SET_ANONYMOUS | NFT_SET_CONSTANT
                    key_type: set.key_type,
                    key_len: set.key_len,
                    data: None,
                    concat: vec![],
                    size: Some(set.elems.len() as u32),
                    userdata: set.userdata.to_vec(),
                };
                let id = self.add_set(t, &spec);
                let elems: Vec<ElemBytes> = set
                    .elems
                    .iter()
                    .map(|k| ElemBytes {
                        key: k.to_vec(),
                        key_end: None,
                        data: None,
                    })
                    .collect();
                self.set_elems(t, "__set%d", Some(id), &elems, false, set.text.to_string());
                anon.push(id);
            }
        }
        let set_ids = std::mem::take(&mut self.set_ids);
        let flags = if insert {
            NLM_F_CREATE
        } else {
            NLM_F_CREATE | NLM_F_APPEND
        };
        self.msg(
            t.family,
            MsgType::NewRule,
            flags,
            format!("{t} {chain} {text}"),
            |a| {
                a.str(1, &t.name).str(2, chain).nest(4, |list| {
                    let mut anon = anon.iter();
                    for e in exprs {
                        let id = match e {
                            Expr::LookupAnon { .. } => anon.next().copied(),
                            _ => None,
                        };
                        list.nest(1, |el| {
                            el.str(1, e.name())
                                .nest(2, |d| e.encode(d, t, &set_ids, id));
                        });
                    }
                });
                if let Some(ud) = userdata {
                    a.bytes(7, ud);
                }
            },
        );
        self.set_ids = set_ids;
    }

    /// Deletes the rule with `handle` from `chain`.
    pub fn delete_rule(&mut self, t: &Table, chain: &str, handle: u64, text: &str) {
        self.msg(
            t.family,
            MsgType::DelRule,
            0,
            format!("{t} {chain} handle {handle} ({text})"),
            |a| {
                a.str(1, &t.name)
                    .str(2, chain)
                    .bytes(3, &handle.to_be_bytes());
            },
        );
    }

    /// Closes the batch; returns the bytes and the description of each acked message.
    pub fn finish(mut self) -> (Vec<u8>, Vec<(u32, String)>) {
        self.header(
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            0,
            NFNL_SUBSYS_NFTABLES,
            |_| {},
        );
        (self.buf, self.described)
    }
}

/// One element's attributes: key, key end, data.
fn encode_elem(el: &mut Attrs<'_>, e: &ElemBytes) {
    el.data(1, &e.key);
    if let Some(end) = &e.key_end {
        el.data(10, end);
    }
    if let Some(d) = &e.data {
        el.data(2, d);
    }
}

/// The bytes one element adds to an `NFTA_SET_ELEM_LIST_ELEMENTS` nest (for chunking).
pub(crate) fn elem_size(e: &ElemBytes) -> usize {
    let data = |v: &[u8]| 4 + 4 + v.len().div_ceil(4) * 4;
    4 + data(&e.key)
        + e.key_end.as_ref().map_or(0, |v| data(v))
        + e.data.as_ref().map_or(0, |v| data(v))
}

/// nft 1.0.6's user data for `{ tcp, udp, sctp }`-style sets: key byteorder host, and the
/// typeof description `meta l4proto` so the listing prints protocol names.
const ANON_PROTO_UDATA: &[u8] = &[
    0x00, 0x04, 0x01, 0x00, 0x00, 0x00, 0x03, 0x0e, 0x00, 0x04, 0x09, 0x00, 0x00, 0x00, 0x01, 0x06,
    0x00, 0x04, 0x10, 0x00, 0x00, 0x00,
];

/// `meta l4proto { tcp, udp, sctp }`.
pub(crate) static TCP_UDP_SCTP: AnonSet = AnonSet {
    key_type: 12,
    key_len: 1,
    elems: &[&[6], &[17], &[132]],
    userdata: ANON_PROTO_UDATA,
    text: "6, 17, 132",
};

/// `meta l4proto { icmp, ipv6-icmp }`.
pub(crate) static ICMP_ICMPV6: AnonSet = AnonSet {
    key_type: 12,
    key_len: 1,
    elems: &[&[1], &[58]],
    userdata: ANON_PROTO_UDATA,
    text: "1, 58",
};

/// `icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert }` (user data: byteorder big
/// endian, typeof `icmpv6 type`).
pub(crate) static ND_NS_NA: AnonSet = AnonSet {
    key_type: 29,
    key_len: 1,
    elems: &[&[135], &[136]],
    userdata: &[
        0x00, 0x04, 0x02, 0x00, 0x00, 0x00, 0x03, 0x14, 0x00, 0x04, 0x07, 0x00, 0x00, 0x00, 0x01,
        0x0c, 0x00, 0x04, 0x0e, 0x00, 0x00, 0x00, 0x01, 0x04, 0x01, 0x00, 0x00, 0x00,
    ],
    text: "nd-neighbor-solicit, nd-neighbor-advert",
};

/// `ether type { 8021q, 8021ad }` (user data: byteorder big endian, typeof `ether type`).
pub(crate) static VLAN_ETHERTYPES: AnonSet = AnonSet {
    key_type: 10,
    key_len: 2,
    elems: &[&[0x81, 0x00], &[0x88, 0xa8]],
    userdata: &[
        0x00, 0x04, 0x02, 0x00, 0x00, 0x00, 0x03, 0x14, 0x00, 0x04, 0x07, 0x00, 0x00, 0x00, 0x01,
        0x0c, 0x00, 0x04, 0x11, 0x00, 0x00, 0x00, 0x01, 0x04, 0x03, 0x00, 0x00, 0x00,
    ],
    text: "8021q, 8021ad",
};
