//! Compiling a declared fragment into tables: validation of everything the kernel would refuse
//! (or that could not work), and the rule language encoded as nft 1.0.6 encodes the same text.

use std::collections::{HashMap, HashSet};

use cnm_sandbox::IpFamily;

use crate::FirewallError;
use crate::fragment::{
    Action, ChainHook, ChainType, Family, FieldType, FragmentChain, FragmentSet, FragmentSpec, Key,
    Match, Rule, Value,
};
use crate::model::SetId;
use crate::nftnl::{Expr, MetaKey, Table, Verdict};
use crate::registry::Declared;
use crate::ruleset::{BRIDGE_OWNER, OWNER_PREFIX, allow_chain, allow_rule};
use crate::table::{ChainDef, Hook, Name, RuleDef, SetDef, TableDef, Ty};

/// `[a-z][a-z0-9_]*` (with `-` too when `dash`), at most `max` bytes.
fn check_name(field: &str, name: &str, max: usize, dash: bool) -> Result<(), FirewallError> {
    let mut bytes = name.bytes();
    let ok = bytes.next().is_some_and(|b| b.is_ascii_lowercase())
        && bytes.all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || (dash && b == b'-')
        })
        && name.len() <= max;
    if ok {
        return Ok(());
    }
    let pattern = if dash {
        "[a-z][a-z0-9_-]*"
    } else {
        "[a-z][a-z0-9_]*"
    };
    Err(FirewallError::invalid(
        field,
        name,
        format!("must match {pattern}, at most {max} bytes"),
    ))
}

/// The register a field at byte `offset` of a concatenation is loaded into, as nft numbers
/// them: a 16-byte register where the offset allows it, else a 4-byte one.
fn reg_at(offset: u32) -> u32 {
    if offset.is_multiple_of(16) {
        offset / 16 + 1
    } else {
        8 + offset / 4
    }
}

/// The expressions that load `keys` (concatenated) from register 1 on, as nft does; `interval`
/// sets get `meta l4proto` widened to network order.
fn load_keys(keys: &[Key], interval: bool, out: &mut Vec<Expr>) {
    let mut offset = 0;
    for k in keys {
        let reg = if keys.len() == 1 { 1 } else { reg_at(offset) };
        out.push(k.load(reg));
        if interval && keys.len() > 1 && *k == Key::L4Proto {
            out.push(Expr::ByteorderHton { reg });
        }
        offset += k.ty().len().div_ceil(4) * 4;
    }
}

/// The protocol context a rule has established so far.
#[derive(Default)]
struct Context {
    family: Option<IpFamily>,
    l4proto: bool,
}

/// The implicit dependency nft puts before a field of `need`'s header, unless the rule already
/// established it.
fn dependency(
    family: Family,
    need: Option<IpFamily>,
    ctx: &mut Context,
    out: &mut Vec<Expr>,
) -> Result<(), &'static str> {
    let Some(need) = need else { return Ok(()) };
    match ctx.family {
        Some(have) if have == need => return Ok(()),
        Some(_) => return Err("it reads IPv4 and IPv6 fields in one rule"),
        None => {}
    }
    match family {
        Family::Inet => {
            let proto = match need {
                IpFamily::V4 => crate::nftnl::NFPROTO_IPV4,
                IpFamily::V6 => crate::nftnl::NFPROTO_IPV6,
            };
            out.extend([
                Expr::Meta {
                    key: MetaKey::NfProto,
                    dreg: 1,
                },
                Expr::Cmp {
                    sreg: 1,
                    neq: false,
                    data: vec![proto],
                },
            ]);
        }
        Family::Bridge => {
            let ether: u16 = match need {
                IpFamily::V4 => 0x0800,
                IpFamily::V6 => 0x86dd,
            };
            out.extend([
                Expr::Meta {
                    key: MetaKey::Protocol,
                    dreg: 1,
                },
                Expr::Cmp {
                    sreg: 1,
                    neq: false,
                    data: ether.to_be_bytes().to_vec(),
                },
            ]);
        }
    }
    ctx.family = Some(need);
    Ok(())
}

/// The one address family `keys` read from (`Err` if both).
fn keys_family(keys: &[Key]) -> Result<Option<IpFamily>, &'static str> {
    let mut out = None;
    for k in keys {
        match (out, k.needs()) {
            (_, None) => {}
            (None, n) => out = n,
            (Some(a), Some(b)) if a != b => {
                return Err("it reads IPv4 and IPv6 fields in one rule");
            }
            _ => {}
        }
    }
    Ok(out)
}

fn value_text(v: &Value) -> String {
    match v {
        Value::IfName(n) => format!("\"{n}\""),
        Value::Ipv4(a) => a.to_string(),
        Value::Ipv6(a) => a.to_string(),
        Value::Proto(p) => p.name().to_string(),
        Value::Port(p) => p.to_string(),
        Value::Mac(m) => m.to_string(),
        Value::Family(IpFamily::V4) => "ipv4".into(),
        Value::Family(IpFamily::V6) => "ipv6".into(),
    }
}

fn keys_text(keys: &[Key]) -> String {
    keys.iter()
        .map(|k| k.text())
        .collect::<Vec<_>>()
        .join(" . ")
}

/// Compiles a spec into the owner's tables, checking everything the kernel would refuse later.
pub(crate) fn compile(spec: &FragmentSpec, owner: u16) -> Result<Declared, FirewallError> {
    let who = &spec.owner;
    check_name("fragment owner", who, 24, true)?;
    if who == BRIDGE_OWNER {
        return Err(FirewallError::invalid(
            "fragment owner",
            who,
            "the built-in bridge fragment's name",
        ));
    }
    let invalid = |field: String, value: &str, reason: &str| {
        FirewallError::invalid(format!("fragment {who} {field}"), value, reason)
    };
    // sets
    let mut sets: HashMap<String, SetId> = HashMap::new();
    let mut set_specs: HashMap<&str, &FragmentSet> = HashMap::new();
    let mut defs: Vec<(Family, SetId, SetDef)> = Vec::new();
    for (i, s) in spec.sets.iter().enumerate() {
        check_name(&format!("fragment {who} set name"), &s.name, 32, false)?;
        let field = format!("set {}", s.name);
        if set_specs.insert(&s.name, s).is_some() {
            return Err(invalid(field, &s.name, "declared twice"));
        }
        if s.key.is_empty() {
            return Err(invalid(field, "", "a set needs a key"));
        }
        let def = s.def();
        if SetDef::width(&def.key) > 64 || SetDef::width(&def.data) > 64 {
            return Err(invalid(
                field,
                &s.name,
                "a key or value is at most 64 bytes",
            ));
        }
        if s.interval && s.key.len() < 2 {
            return Err(invalid(
                field,
                &s.name,
                "an interval set needs a concatenated key (two fields or more)",
            ));
        }
        if s.interval && s.key.contains(&FieldType::Family) {
            return Err(invalid(
                field,
                &s.name,
                "an interval set cannot have a family field",
            ));
        }
        if s.family == Family::Bridge && !s.data.is_empty() {
            return Err(invalid(field, &s.name, "maps live in the inet table"));
        }
        let id = SetId::Custom(owner, i as u16);
        sets.insert(s.name.clone(), id);
        defs.push((s.family, id, def));
    }
    // chains: names, then jump targets and cycles, then rules
    let mut names: HashSet<(Family, &str)> = HashSet::new();
    for c in &spec.chains {
        check_name(&format!("fragment {who} chain name"), &c.name, 32, false)?;
        let field = format!("chain {}", c.name);
        if c.name == "allow" {
            return Err(invalid(
                field,
                &c.name,
                "`allow` is the chain the firewall provides",
            ));
        }
        if !names.insert((c.family, &c.name)) {
            return Err(invalid(field, &c.name, "declared twice"));
        }
        if let Some((hook, ty, prio)) = c.base
            && ty == ChainType::Nat
        {
            if c.family != Family::Inet {
                return Err(invalid(field, &c.name, "NAT chains live in the inet table"));
            }
            if hook == ChainHook::Forward {
                return Err(invalid(
                    field,
                    &c.name,
                    "there is no NAT at the forward hook",
                ));
            }
            if prio <= -200 {
                return Err(invalid(
                    field,
                    &prio.to_string(),
                    "a NAT chain's priority must be above conntrack's (-200)",
                ));
            }
        }
    }
    let regular: HashMap<(Family, &str), &FragmentChain> = spec
        .chains
        .iter()
        .filter(|c| c.base.is_none())
        .map(|c| ((c.family, c.name.as_str()), c))
        .collect();
    let jumps = |c: &FragmentChain| -> Vec<String> {
        c.rules
            .iter()
            .filter_map(|r| match &r.action {
                Action::Jump(t) => Some(t.clone()),
                _ => None,
            })
            .collect()
    };
    // no cycles through regular chains (the kernel refuses a loop at commit)
    fn visit<'a>(
        at: (Family, &'a str),
        regular: &HashMap<(Family, &'a str), &'a FragmentChain>,
        jumps: &dyn Fn(&FragmentChain) -> Vec<String>,
        path: &mut Vec<String>,
    ) -> Result<(), String> {
        if path.iter().any(|p| p == at.1) {
            path.push(at.1.to_string());
            return Err(path.join(" -> "));
        }
        let Some(c) = regular.get(&at) else {
            return Ok(());
        };
        path.push(at.1.to_string());
        for t in jumps(c) {
            if let Some((k, _)) = regular.get_key_value(&(at.0, t.as_str())) {
                visit(*k, regular, jumps, path)?;
            }
        }
        path.pop();
        Ok(())
    }
    for c in &spec.chains {
        if let Err(cycle) = visit((c.family, &c.name), &regular, &jumps, &mut Vec::new()) {
            return Err(invalid(
                format!("chain {}", c.name),
                &cycle,
                "jumps loop back to a chain on the path",
            ));
        }
    }
    // `allow` marks for iptables' FORWARD chain (filter, priority 0): it only works from a
    // forward chain that runs before it
    fn allows(
        c: &FragmentChain,
        regular: &HashMap<(Family, &str), &FragmentChain>,
        seen: &mut HashSet<String>,
    ) -> bool {
        if !seen.insert(c.name.clone()) {
            return false;
        }
        c.rules.iter().any(|r| match &r.action {
            Action::Allow => true,
            Action::Jump(t) => regular
                .get(&(c.family, t.as_str()))
                .is_some_and(|next| allows(next, regular, seen)),
            _ => false,
        })
    }
    for c in &spec.chains {
        if let Some((ChainHook::Forward, _, prio)) = c.base
            && prio >= 0
            && allows(c, &regular, &mut HashSet::new())
        {
            return Err(invalid(
                format!("chain {} priority", c.name),
                &prio.to_string(),
                "`allow` marks packets for iptables' FORWARD chain, which runs at priority 0: \
                 a forward chain that allows needs a priority below 0",
            ));
        }
    }
    let mut tables = Vec::new();
    for family in [Family::Inet, Family::Bridge] {
        let table_sets: Vec<(SetId, SetDef)> = defs
            .iter()
            .filter(|(f, _, _)| *f == family)
            .map(|(_, id, d)| (*id, d.clone()))
            .collect();
        let chains: Vec<&FragmentChain> =
            spec.chains.iter().filter(|c| c.family == family).collect();
        if table_sets.is_empty() && chains.is_empty() {
            continue;
        }
        let mut chain_defs = Vec::new();
        let mut rules = Vec::new();
        for c in &chains {
            chain_defs.push(ChainDef {
                name: Name::Owned(c.name.clone()),
                hook: c.base.map(|(hook, ty, prio)| Hook {
                    num: hook.num(),
                    prio,
                    ty: match ty {
                        ChainType::Filter => "filter",
                        ChainType::Nat => "nat",
                    },
                    prio_text: Name::Owned(prio.to_string()),
                    name: hook.name(),
                }),
            });
            for (i, r) in c.rules.iter().enumerate() {
                let at = format!("chain {} rule {i}", c.name);
                rules.push(
                    compile_rule(family, c, r, &set_specs, &sets, &regular)
                        .map_err(|(value, reason)| invalid(at, &value, &reason))?,
                );
            }
        }
        if family == Family::Inet {
            chain_defs.push(allow_chain());
            rules.push(allow_rule());
        }
        tables.push(TableDef {
            table: Table {
                family: family.nfproto(),
                name: Name::Owned(format!("{OWNER_PREFIX}{who}")),
            },
            sets: table_sets,
            chains: chain_defs,
            rules,
        });
    }
    Ok(Declared {
        spec: spec.clone(),
        tables,
        sets,
    })
}

/// Compiles one rule; `Err((value, reason))` names what is wrong.
fn compile_rule(
    family: Family,
    chain: &FragmentChain,
    rule: &Rule,
    set_specs: &HashMap<&str, &FragmentSet>,
    sets: &HashMap<String, SetId>,
    regular: &HashMap<(Family, &str), &FragmentChain>,
) -> Result<RuleDef, (String, String)> {
    let err = |value: &str, reason: &str| (value.to_string(), reason.to_string());
    let mut exprs = Vec::new();
    let mut text = Vec::new();
    let mut ctx = Context::default();
    let own_set = |name: &str, keys: &[Key], map: bool| -> Result<&FragmentSet, (String, String)> {
        let s = set_specs
            .get(name)
            .copied()
            .ok_or_else(|| err(name, "no such set in the fragment"))?;
        debug_assert!(sets.contains_key(name));
        if s.family != family {
            return Err(err(name, "the set is in the other family's table"));
        }
        let is_map = !s.data.is_empty();
        if map != is_map {
            return Err(err(
                name,
                if map { "not a map" } else { "a map, not a set" },
            ));
        }
        let want: Vec<Ty> = s.key.iter().map(|t| t.ty()).collect();
        let got: Vec<Ty> = keys.iter().map(|k| k.ty()).collect();
        if want != got {
            return Err(err(
                &keys_text(keys),
                "the fields do not have the set's key type",
            ));
        }
        Ok(s)
    };
    for m in &rule.matches {
        match m {
            Match::InSet { keys, set, negate } => {
                if keys.is_empty() {
                    return Err(err(set, "a lookup needs fields"));
                }
                if let Some(k) = keys.iter().find(|k| !k.allowed_in(family)) {
                    return Err(err(k.text(), "not a field of this family's packets"));
                }
                let s = own_set(set, keys, false)?;
                let need = keys_family(keys).map_err(|r| err(&keys_text(keys), r))?;
                dependency(family, need, &mut ctx, &mut exprs)
                    .map_err(|r| err(&keys_text(keys), r))?;
                load_keys(keys, s.interval, &mut exprs);
                exprs.push(Expr::Lookup {
                    sreg: 1,
                    dreg: None,
                    set: Name::Owned(set.clone()),
                    inv: *negate,
                });
                let op = if *negate { "!= " } else { "" };
                text.push(format!("{} {op}@{set}", keys_text(keys)));
            }
            Match::Is { key, value, negate } => {
                if !key.allowed_in(family) {
                    return Err(err(key.text(), "not a field of this family's packets"));
                }
                let field = value.field();
                if !key.ty().admits(&field) {
                    return Err(err(&value_text(value), "not a value of the field's type"));
                }
                dependency(family, key.needs(), &mut ctx, &mut exprs)
                    .map_err(|r| err(key.text(), r))?;
                exprs.push(key.load(1));
                let mut data = field.bytes();
                if key.ty() == Ty::IfName {
                    data.resize(16, 0);
                }
                exprs.push(Expr::Cmp {
                    sreg: 1,
                    neq: *negate,
                    data,
                });
                if !negate {
                    match (key, value) {
                        (Key::Family, Value::Family(f)) => {
                            if ctx.family.is_some_and(|have| have != *f) {
                                return Err(err(key.text(), "contradicts an earlier match"));
                            }
                            ctx.family = Some(*f);
                        }
                        (Key::L4Proto, _) => ctx.l4proto = true,
                        _ => {}
                    }
                }
                let op = if *negate { "!= " } else { "" };
                text.push(format!("{} {op}{}", key.text(), value_text(value)));
            }
        }
    }
    let nat = chain.base.filter(|(_, ty, _)| *ty == ChainType::Nat);
    let verdict = |v: Verdict| Expr::Immediate(v);
    match &rule.action {
        Action::Accept => {
            exprs.push(verdict(Verdict::Accept));
            text.push("accept".into());
        }
        Action::Drop => {
            exprs.push(verdict(Verdict::Drop));
            text.push("drop".into());
        }
        Action::Return => {
            exprs.push(verdict(Verdict::Return));
            text.push("return".into());
        }
        Action::Jump(target) => {
            if !regular.contains_key(&(family, target.as_str())) {
                return Err(err(target, "no such regular chain in this family's table"));
            }
            exprs.push(verdict(Verdict::Jump(Name::Owned(target.clone()))));
            text.push(format!("jump {target}"));
        }
        Action::Allow => {
            if family != Family::Inet {
                return Err(err("allow", "the allow chain is in the inet table"));
            }
            exprs.push(verdict(Verdict::Jump(Name::Borrowed("allow"))));
            text.push("jump allow".into());
        }
        Action::Masquerade => {
            if !matches!(nat, Some((ChainHook::Postrouting, _, _))) {
                return Err(err("masquerade", "only in a NAT chain at postrouting"));
            }
            exprs.push(Expr::Masq);
            text.push("masquerade".into());
        }
        Action::Dnat { keys, map } => {
            if !matches!(nat, Some((ChainHook::Prerouting | ChainHook::Output, _, _))) {
                return Err(err("dnat", "only in a NAT chain at prerouting or output"));
            }
            if keys.is_empty() {
                return Err(err(map, "a map lookup needs fields"));
            }
            let s = own_set(map, keys, true)?;
            let (to, port) = match s.data.as_slice() {
                [FieldType::Ipv4] => (IpFamily::V4, false),
                [FieldType::Ipv4, FieldType::Port] => (IpFamily::V4, true),
                [FieldType::Ipv6] => (IpFamily::V6, false),
                [FieldType::Ipv6, FieldType::Port] => (IpFamily::V6, true),
                _ => {
                    return Err(err(
                        map,
                        "a DNAT map's value is an address, or an address and a port",
                    ));
                }
            };
            let need = keys_family(keys).map_err(|r| err(&keys_text(keys), r))?;
            if need.is_some_and(|n| n != to) {
                return Err(err(&keys_text(keys), "reads the other family's addresses"));
            }
            if need.is_none() && ctx.family != Some(to) {
                return Err(err(
                    map,
                    "the rule must match the address family first (meta nfproto)",
                ));
            }
            if port && !ctx.l4proto {
                return Err(err(
                    map,
                    "a port mapping needs a transport protocol match first (meta l4proto)",
                ));
            }
            dependency(family, need, &mut ctx, &mut exprs).map_err(|r| err(map, r))?;
            load_keys(keys, s.interval, &mut exprs);
            exprs.push(Expr::Lookup {
                sreg: 1,
                dreg: Some(1),
                set: Name::Owned(map.clone()),
                inv: false,
            });
            let addr_len = match to {
                IpFamily::V4 => 4,
                IpFamily::V6 => 16,
            };
            exprs.push(Expr::Dnat {
                family: match to {
                    IpFamily::V4 => crate::nftnl::NFPROTO_IPV4,
                    IpFamily::V6 => crate::nftnl::NFPROTO_IPV6,
                },
                addr: 1,
                proto: port.then(|| reg_at(addr_len)),
            });
            let ip = match to {
                IpFamily::V4 => "ip",
                IpFamily::V6 => "ip6",
            };
            text.push(format!("dnat {ip} to {} map @{map}", keys_text(keys)));
        }
    }
    Ok(RuleDef {
        chain: Name::Owned(chain.name.clone()),
        text: Name::Owned(text.join(" ")),
        exprs,
    })
}
