//! The nf_tables netlink encoding: attributes, expressions and one batch of messages.
//!
//! Written from the kernel's uapi (`linux/netfilter/nf_tables.h`, `nfnetlink.h`) and checked
//! byte for byte against what `nft --debug=mnl` 1.0.6 sends for the same ruleset (see the unit
//! tests), so that `nft list` shows our rules exactly as if `nft -f` had added them.

use std::collections::HashMap;

pub(crate) const NETLINK_NETFILTER: isize = 12;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
pub(crate) const NLMSG_ERROR: u16 = 2;

pub(crate) const NLM_F_REQUEST: u16 = 0x1;
pub(crate) const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;

const NFPROTO_INET: u8 = 1;
pub(crate) const NFPROTO_IPV4: u8 = 2;
pub(crate) const NFPROTO_IPV6: u8 = 10;

/// nf_tables message types (`enum nf_tables_msg_types`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub(crate) enum MsgType {
    NewTable = 0,
    DelTable = 2,
    NewChain = 3,
    NewRule = 6,
    NewSet = 9,
    NewSetElem = 12,
    DelSetElem = 14,
}

impl MsgType {
    fn verb(self) -> &'static str {
        match self {
            Self::NewTable => "add table",
            Self::DelTable => "delete table",
            Self::NewChain => "add chain",
            Self::NewRule => "add rule",
            Self::NewSet => "add set",
            Self::NewSetElem => "add element",
            Self::DelSetElem => "delete element",
        }
    }
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
    Jump(&'static str),
}

/// A meta key (`enum nft_meta_keys`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum MetaKey {
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
        set: &'static str,
        inv: bool,
    },
    /// A lookup in an anonymous constant set of 1-byte protocol numbers.
    LookupProtos {
        sreg: Reg,
        protos: &'static [u8],
    },
    Immediate(Verdict),
    /// `with_op` mirrors nft, which sends `NFTA_BITWISE_OP` for some rules and not others.
    Bitwise {
        reg: Reg,
        mask: u32,
        xor: u32,
        with_op: bool,
    },
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
            Self::Lookup { .. } | Self::LookupProtos { .. } => "lookup",
            Self::Immediate(_) => "immediate",
            Self::Bitwise { .. } => "bitwise",
            Self::ByteorderHton { .. } => "byteorder",
            Self::Ct { .. } => "ct",
            Self::FibDaddrType { .. } => "fib",
            Self::Dnat { .. } => "nat",
            Self::Masq => "masq",
        }
    }

    /// Encodes the expression's `NFTA_EXPR_DATA`; `anon` is the id of its anonymous set.
    fn encode(&self, a: &mut Attrs<'_>, set_ids: &HashMap<String, u32>, anon: Option<u32>) {
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
                if let Some(id) = set_ids.get(*set) {
                    a.be32(4, *id);
                }
                if *inv {
                    a.be32(5, 1);
                }
            }
            Self::LookupProtos { sreg, .. } => {
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
                a.be32(3, 4)
                    .data(4, &mask.to_ne_bytes())
                    .data(5, &xor.to_ne_bytes());
            }
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

/// One element as bytes.
#[derive(Debug, Clone)]
pub(crate) struct ElemBytes {
    pub key: Vec<u8>,
    pub key_end: Option<Vec<u8>>,
    pub data: Option<Vec<u8>>,
}

/// One nfnetlink batch: BEGIN, messages, END. Every message asks for an ack so errors are
/// matched to the message that caused them (by sequence number).
pub(crate) struct Batch {
    buf: Vec<u8>,
    seq: u32,
    /// sequence number → decoded description of the message, for error reports
    described: Vec<(u32, String)>,
    next_set_id: u32,
    set_ids: HashMap<String, u32>,
}

impl Batch {
    pub fn new(first_seq: u32) -> Self {
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
            |_| {},
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

    fn msg(&mut self, ty: MsgType, flags: u16, what: String, attrs: impl FnOnce(&mut Attrs<'_>)) {
        let seq = self.header(
            (NFNL_SUBSYS_NFTABLES << 8) | ty as u16,
            NLM_F_REQUEST | NLM_F_ACK | flags,
            NFPROTO_INET,
            0,
            attrs,
        );
        self.described.push((seq, format!("{} {what}", ty.verb())));
    }

    pub fn add_table(&mut self, table: &str) {
        self.msg(
            MsgType::NewTable,
            NLM_F_CREATE,
            format!("inet {table}"),
            |a| {
                a.str(1, table).be32(2, 0);
            },
        );
    }

    pub fn delete_table(&mut self, table: &str) {
        self.msg(MsgType::DelTable, 0, format!("inet {table}"), |a| {
            a.str(1, table);
        });
    }

    /// A chain; `hook` is (hook number, priority, type name) for base chains, policy accept.
    pub fn add_chain(&mut self, table: &str, name: &str, hook: Option<(u32, i32, &str)>) {
        self.msg(
            MsgType::NewChain,
            NLM_F_CREATE,
            format!("inet {table} {name}"),
            |a| {
                a.str(1, table).str(3, name);
                if let Some((num, prio, ty)) = hook {
                    a.str(7, ty).be32(5, 1).nest(4, |h| {
                        h.be32(1, num).be32(2, prio as u32);
                    });
                }
            },
        );
    }

    pub fn add_set(&mut self, table: &str, spec: &SetSpec) -> u32 {
        let id = self.next_set_id;
        self.next_set_id += 1;
        if spec.name != "__set%d" {
            self.set_ids.insert(spec.name.clone(), id);
        }
        self.msg(
            MsgType::NewSet,
            NLM_F_CREATE,
            format!("inet {table} {}", spec.name),
            |a| {
                a.str(1, table)
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
        table: &str,
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
        let set_id = set_id.or_else(|| self.set_ids.get(set).copied());
        self.msg(ty, flags, format!("inet {table} {set} {{ {text} }}"), |a| {
            a.str(1, table).str(2, set);
            if let Some(id) = set_id {
                a.be32(4, id);
            }
            a.nest(3, |l| {
                // nft numbers the list entries 1, 2, 3… (the kernel ignores the type)
                for (i, e) in elems.iter().enumerate() {
                    l.nest(i as u16 + 1, |el| {
                        el.data(1, &e.key);
                        if let Some(end) = &e.key_end {
                            el.data(10, end);
                        }
                        if let Some(d) = &e.data {
                            el.data(2, d);
                        }
                    });
                }
            });
        });
    }

    /// A rule appended to `chain`; anonymous sets it uses are created just before it.
    pub fn add_rule(&mut self, table: &str, chain: &str, exprs: &[Expr], text: &str) {
        let mut anon = Vec::new();
        for e in exprs {
            if let Expr::LookupProtos { protos, .. } = e {
                let spec = SetSpec {
                    name: "__set%d".into(),
                    flags: 0x3, // NFT_SET_ANONYMOUS | NFT_SET_CONSTANT
                    key_type: 12,
                    key_len: 1,
                    data: None,
                    concat: vec![],
                    size: Some(protos.len() as u32),
                    userdata: ANON_PROTO_UDATA.to_vec(),
                };
                let id = self.add_set(table, &spec);
                let elems: Vec<ElemBytes> = protos
                    .iter()
                    .map(|p| ElemBytes {
                        key: vec![*p],
                        key_end: None,
                        data: None,
                    })
                    .collect();
                let text = protos
                    .iter()
                    .map(u8::to_string)
                    .collect::<Vec<_>>()
                    .join(", ");
                self.set_elems(table, "__set%d", Some(id), &elems, false, text);
                anon.push(id);
            }
        }
        let set_ids = std::mem::take(&mut self.set_ids);
        self.msg(
            MsgType::NewRule,
            NLM_F_CREATE | NLM_F_APPEND,
            format!("inet {table} {chain} {text}"),
            |a| {
                a.str(1, table).str(2, chain).nest(4, |list| {
                    let mut anon = anon.iter();
                    for e in exprs {
                        let id = match e {
                            Expr::LookupProtos { .. } => anon.next().copied(),
                            _ => None,
                        };
                        list.nest(1, |el| {
                            el.str(1, e.name()).nest(2, |d| e.encode(d, &set_ids, id));
                        });
                    }
                });
            },
        );
        self.set_ids = set_ids;
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

/// nft 1.0.6's user data for `{ tcp, udp, sctp }`-style sets: key byteorder host, and the
/// typeof description `meta l4proto` so the listing prints protocol names.
const ANON_PROTO_UDATA: &[u8] = &[
    0x00, 0x04, 0x01, 0x00, 0x00, 0x00, 0x03, 0x0e, 0x00, 0x04, 0x09, 0x00, 0x00, 0x00, 0x01, 0x06,
    0x00, 0x04, 0x10, 0x00, 0x00, 0x00,
];
