//! The registry of owners: every owner's compiled tables and sets (the firewall's own, the
//! bridge fragment's, each declared fragment's), immutable once built.

use std::collections::HashMap;

use crate::FirewallError;
use crate::compile::compile;
use crate::fragment::FragmentSpec;
use crate::model::{Owner, SetId};
use crate::nftnl::Table;
use crate::ruleset::BRIDGE_OWNER;
use crate::table::{SetDef, TableDef};

/// A declared fragment, compiled.
#[derive(Debug, Clone)]
pub(crate) struct Declared {
    pub spec: FragmentSpec,
    pub tables: Vec<TableDef>,
    pub sets: HashMap<String, SetId>,
}

/// Every owner's tables and sets: the firewall's own, the bridge fragment's, and each declared
/// fragment's (in declaration order). Immutable once built; declaring a fragment makes a new one.
#[derive(Debug, Clone)]
pub(crate) struct Registry {
    shared: Vec<TableDef>,
    bridge: Vec<TableDef>,
    custom: Vec<Declared>,
    sets: HashMap<SetId, (Table, SetDef)>,
}

impl Default for Registry {
    fn default() -> Self {
        let mut r = Self {
            shared: crate::ruleset::shared_tables(),
            bridge: crate::ruleset::bridge_tables(),
            custom: Vec::new(),
            sets: HashMap::new(),
        };
        let all: Vec<TableDef> = r.shared.iter().chain(&r.bridge).cloned().collect();
        r.index(&all);
        r
    }
}

impl Registry {
    fn index(&mut self, tables: &[TableDef]) {
        for t in tables {
            for (id, def) in &t.sets {
                self.sets.insert(*id, (t.table.clone(), def.clone()));
            }
        }
    }

    /// Every owner, in ruleset order: the firewall's own first.
    pub(crate) fn owners(&self) -> impl Iterator<Item = Owner> + '_ {
        [Owner::Shared, Owner::Bridge]
            .into_iter()
            .chain((0..self.custom.len()).map(|i| Owner::Custom(i as u16)))
    }

    /// An owner's tables, in ruleset order.
    pub(crate) fn tables(&self, owner: Owner) -> &[TableDef] {
        match owner {
            Owner::Shared => &self.shared,
            Owner::Bridge => &self.bridge,
            Owner::Custom(i) => self.custom.get(usize::from(i)).map_or(&[], |d| &d.tables),
        }
    }

    /// The table and definition of a set.
    pub(crate) fn set(&self, id: SetId) -> (&Table, &SetDef) {
        let (t, d) = self
            .sets
            .get(&id)
            .expect("every set id is made by the registry that defines it");
        (t, d)
    }

    /// A declared owner's name.
    pub(crate) fn owner_name(&self, owner: Owner) -> &str {
        match owner {
            Owner::Shared => "cnm",
            Owner::Bridge => BRIDGE_OWNER,
            Owner::Custom(i) => self
                .custom
                .get(usize::from(i))
                .map_or("?", |d| d.spec.owner.as_str()),
        }
    }

    /// The index of the declared owner called `name`.
    pub(crate) fn custom_index(&self, name: &str) -> Option<u16> {
        self.custom
            .iter()
            .position(|d| d.spec.owner == name)
            .map(|i| i as u16)
    }

    /// The set of a declared owner called `name`.
    pub(crate) fn custom_set(&self, owner: u16, name: &str) -> Option<SetId> {
        self.custom
            .get(usize::from(owner))
            .and_then(|d| d.sets.get(name).copied())
    }

    /// Declares a fragment; the same spec declared again is the same owner.
    pub(crate) fn declare(&mut self, spec: &FragmentSpec) -> Result<u16, FirewallError> {
        if let Some(i) = self.custom.iter().position(|d| d.spec.owner == spec.owner) {
            if self.custom[i].spec == *spec {
                return Ok(i as u16);
            }
            return Err(FirewallError::Conflict {
                op: "declare fragment".into(),
                object: spec.owner.clone(),
                reason: "a different fragment of that owner is declared already".into(),
            });
        }
        let index = u16::try_from(self.custom.len()).map_err(|_| {
            FirewallError::invalid("fragment owner", &spec.owner, "too many fragments")
        })?;
        let declared = compile(spec, index)?;
        self.index(&declared.tables);
        self.custom.push(declared);
        Ok(index)
    }
}
