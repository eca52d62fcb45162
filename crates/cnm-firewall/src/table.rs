//! A table as data: its sets, chains and constant rules, whoever defined them (the firewall's
//! own guards, the built-in bridge fragment, or a driver's declared fragment). Encoded into a
//! batch by `firewall::encode`, rendered as nft text here.

use std::borrow::Cow;

use crate::model::{Element, Elements, Field, SetId};
use crate::nftnl::{ElemBytes, Expr, SetSpec, Table};

/// A name in a table: constant for the built-in tables, owned for declared fragments.
pub(crate) type Name = Cow<'static, str>;

/// The type of one field of a set's key or value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Ty {
    IfName,
    V4,
    V6,
    Proto,
    Port,
    Ether,
    NfProto,
    /// A 128-bit raw payload (`typeof @th,64,128`).
    Int128,
}

impl Ty {
    fn id(self) -> u32 {
        match self {
            Self::IfName => 41,
            Self::V4 => 7,
            Self::V6 => 8,
            Self::Proto => 12,
            Self::Port => 13,
            Self::Ether => 9,
            Self::NfProto => 2,
            Self::Int128 => 4,
        }
    }

    /// Bytes of one value.
    pub(crate) fn len(self) -> u32 {
        match self {
            Self::IfName | Self::V6 | Self::Int128 => 16,
            Self::V4 => 4,
            Self::Proto | Self::NfProto => 1,
            Self::Port => 2,
            Self::Ether => 6,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::IfName => "ifname",
            Self::V4 => "ipv4_addr",
            Self::V6 => "ipv6_addr",
            Self::Proto => "inet_proto",
            Self::Port => "inet_service",
            Self::Ether => "ether_addr",
            Self::NfProto => "nf_proto",
            Self::Int128 => "integer",
        }
    }

    /// nft's byte order user data for a lone field of this type (`NFTNL_UDATA_SET_*BYTEORDER`):
    /// host for interface names, big endian for addresses and ports, unspecified for the
    /// one-byte protocol numbers.
    fn byteorder(self) -> u32 {
        match self {
            Self::IfName => 1,
            Self::V4 | Self::V6 | Self::Port | Self::Ether => 2,
            Self::Proto | Self::NfProto | Self::Int128 => 0,
        }
    }

    /// Whether `field` is a value of this type.
    pub(crate) fn admits(self, field: &Field) -> bool {
        matches!(
            (self, field),
            (Self::IfName, Field::IfName(_))
                | (Self::V4, Field::V4(_))
                | (Self::V6, Field::V6(_))
                | (Self::Proto, Field::Proto(_))
                | (Self::Port, Field::Port(_))
                | (Self::Ether, Field::Mac(_))
                | (Self::NfProto, Field::NfProto(_))
                | (Self::Int128, Field::Raw128(_))
        )
    }
}

/// A set's declaration as nft 1.0.6 writes it where `type` cannot say it (a `typeof` set):
/// its user data and its declaration line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Typeof {
    pub udata: &'static [u8],
    pub decl: &'static str,
}

/// A named set or map: key and value types, and whether it holds intervals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SetDef {
    pub name: Name,
    pub key: Vec<Ty>,
    pub data: Vec<Ty>,
    pub interval: bool,
    pub typeof_: Option<Typeof>,
}

impl SetDef {
    pub(crate) fn new(name: impl Into<Name>, key: &[Ty], data: &[Ty], interval: bool) -> Self {
        Self {
            name: name.into(),
            key: key.to_vec(),
            data: data.to_vec(),
            interval,
            typeof_: None,
        }
    }

    /// Bytes of a key or value made of `tys`: concatenations pad each field to 4 bytes.
    pub(crate) fn width(tys: &[Ty]) -> u32 {
        if tys.len() == 1 {
            tys[0].len()
        } else {
            tys.iter().map(|t| t.len().div_ceil(4) * 4).sum()
        }
    }

    /// The netlink description, as nft 1.0.6 builds it.
    pub(crate) fn spec(&self) -> SetSpec {
        let (key, data) = (&self.key[..], &self.data[..]);
        let concat_key = key.len() > 1;
        let mut flags = 0;
        if self.interval {
            flags |= 0x4; // NFT_SET_INTERVAL
            if concat_key {
                flags |= 0x80; // NFT_SET_CONCAT
            }
        }
        if !data.is_empty() {
            flags |= 0x8; // NFT_SET_MAP
        }
        let type_of = |tys: &[Ty]| tys.iter().fold(0u32, |acc, t| (acc << 6) | t.id());
        // User data: NFTNL_UDATA_SET_KEYBYTEORDER (a lone field's byte order, else none), for
        // maps DATABYTEORDER likewise, the concat typeof markers and DATA_INTERVAL; nft reads
        // them back when listing.
        const CONCAT_TYPEOF: [u8; 8] = [0x00, 0x04, 0x0d, 0x00, 0x00, 0x00, 0x01, 0x00];
        let order = |tys: &[Ty]| {
            if tys.len() == 1 {
                tys[0].byteorder()
            } else {
                0
            }
        };
        let mut ud = vec![0x00, 0x04];
        ud.extend_from_slice(&order(key).to_le_bytes());
        if !data.is_empty() {
            ud.extend_from_slice(&[0x01, 0x04]);
            ud.extend_from_slice(&order(data).to_le_bytes());
        }
        if concat_key {
            ud.extend_from_slice(&[0x03, 0x08]);
            ud.extend_from_slice(&CONCAT_TYPEOF);
        }
        if data.len() > 1 {
            ud.extend_from_slice(&[0x04, 0x08]);
            ud.extend_from_slice(&CONCAT_TYPEOF);
        }
        if !data.is_empty() {
            ud.extend_from_slice(&[0x06, 0x04, 0, 0, 0, 0]);
        }
        if let Some(t) = &self.typeof_ {
            ud = t.udata.to_vec();
        }
        SetSpec {
            name: self.name.to_string(),
            flags,
            key_type: type_of(key),
            key_len: Self::width(key),
            data: (!data.is_empty()).then(|| (type_of(data), Self::width(data))),
            concat: if self.interval && concat_key {
                key.iter().map(|t| t.len()).collect()
            } else {
                vec![]
            },
            size: None,
            userdata: ud,
        }
    }

    /// The set's declaration lines (without elements).
    fn declaration(&self) -> String {
        let names = |tys: &[Ty]| tys.iter().map(|t| t.name()).collect::<Vec<_>>().join(" . ");
        let kind = if self.data.is_empty() { "set" } else { "map" };
        if let Some(t) = &self.typeof_ {
            return format!("\t{kind} {} {{\n\t\t{}\n", self.name, t.decl);
        }
        let mut s = format!("\t{kind} {} {{\n\t\ttype {}", self.name, names(&self.key));
        if !self.data.is_empty() {
            s.push_str(" : ");
            s.push_str(&names(&self.data));
        }
        s.push('\n');
        if self.interval {
            s.push_str("\t\tflags interval\n");
        }
        s
    }

    /// Encodes an element's fields; concatenations pad each field to 4 bytes.
    pub(crate) fn elem_bytes(&self, e: &Element) -> ElemBytes {
        let enc = |fields: &[Field]| -> Vec<u8> {
            let mut out = Vec::new();
            for f in fields {
                out.extend_from_slice(&f.bytes());
                if fields.len() > 1 {
                    while !out.len().is_multiple_of(4) {
                        out.push(0);
                    }
                }
            }
            out
        };
        ElemBytes {
            key: enc(&e.key),
            key_end: (self.key.len() > 1 && self.interval)
                .then(|| enc(e.key_end.as_deref().unwrap_or(&e.key))),
            data: (!e.data.is_empty()).then(|| enc(&e.data)),
        }
    }
}

/// A base chain's hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Hook {
    /// NF_INET_* / NF_BR_* number: prerouting 0, input 1, forward 2, output 3, postrouting 4.
    pub num: u32,
    pub prio: i32,
    /// `filter` or `nat`.
    pub ty: &'static str,
    /// The priority as nft writes it.
    pub prio_text: Name,
    /// The hook's name.
    pub name: &'static str,
}

/// A chain: its name, and its hook for a base chain (policy accept, always).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ChainDef {
    pub name: Name,
    pub hook: Option<Hook>,
}

/// One constant rule: its chain, its nft text and its expressions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RuleDef {
    pub chain: Name,
    pub text: Name,
    pub exprs: Vec<Expr>,
}

/// One table: the sets (by id, defined in the registry), chains and rules, in ruleset order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TableDef {
    pub table: Table,
    pub sets: Vec<(SetId, SetDef)>,
    pub chains: Vec<ChainDef>,
    pub rules: Vec<RuleDef>,
}

impl TableDef {
    /// The table as nft text, with `elements` in its sets (what `nft -f` accepts).
    pub(crate) fn render(&self, elements: &Elements, out: &mut String) {
        out.push_str(&format!("table {} {{\n", self.table));
        for (id, set) in &self.sets {
            out.push_str(&set.declaration());
            if let Some(elems) = elements.get(id).filter(|e| !e.is_empty()) {
                out.push_str("\t\telements = { ");
                out.push_str(
                    &elems
                        .iter()
                        .map(Element::text)
                        .collect::<Vec<_>>()
                        .join(",\n\t\t\t     "),
                );
                out.push_str(" }\n");
            }
            out.push_str("\t}\n\n");
        }
        for (i, chain) in self.chains.iter().enumerate() {
            out.push_str(&format!("\tchain {} {{\n", chain.name));
            if let Some(h) = &chain.hook {
                out.push_str(&format!(
                    "\t\ttype {} hook {} priority {}; policy accept;\n",
                    h.ty, h.name, h.prio_text
                ));
            }
            for rule in self.rules.iter().filter(|r| r.chain == chain.name) {
                out.push_str(&format!("\t\t{}\n", rule.text));
            }
            out.push_str("\t}\n");
            if i + 1 < self.chains.len() {
                out.push('\n');
            }
        }
        out.push_str("}\n");
    }
}
