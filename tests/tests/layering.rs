//! The layering of DESIGN.md §3, read from the manifests: nothing depends on a binary crate
//! (cnmd, the CLI, the bench, xtask), no library crate depends on a store backend directly
//! (drivers and core persist through the store handle they are given; only the `cnm` facade
//! links the default store), and the wire types stay free of the daemon's HTTP stack.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// One workspace member: its package name, whether it builds a binary, its dependencies.
struct Member {
    name: String,
    has_bin: bool,
    /// Section (`dependencies`, `dev-dependencies`, `build-dependencies`) → crate names.
    deps: BTreeMap<String, BTreeSet<String>>,
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace")
        .to_path_buf()
}

/// The `members = [...]` of the workspace manifest.
fn member_dirs(root: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string(root.join("Cargo.toml")).expect("workspace manifest");
    let list = text
        .split_once("members = [")
        .and_then(|(_, rest)| rest.split_once(']'))
        .expect("a members list")
        .0;
    list.split(',')
        .map(|m| m.trim().trim_matches('"'))
        .filter(|m| !m.is_empty())
        .map(|m| root.join(m))
        .collect()
}

fn read_member(dir: &Path) -> Member {
    let text = std::fs::read_to_string(dir.join("Cargo.toml"))
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut name = String::new();
    let mut has_bin = dir.join("src/main.rs").exists();
    let mut section = String::new();
    let mut deps: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if let Some(header) = line.strip_prefix('[') {
            section = header.trim_end_matches(']').to_owned();
            has_bin |= section == "[bin]";
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let key = key.trim();
        if section == "package" && key == "name" {
            name = value.trim().trim_matches('"').to_owned();
        } else if section.ends_with("dependencies") {
            let dep = key.split('.').next().unwrap_or(key).to_owned();
            deps.entry(section.clone()).or_default().insert(dep);
        }
    }
    assert!(!name.is_empty(), "{}: no package name", dir.display());
    Member {
        name,
        has_bin,
        deps,
    }
}

#[test]
fn libraries_depend_on_no_binary_and_no_store_backend() {
    let root = workspace_root();
    let members: Vec<Member> = member_dirs(&root).iter().map(|d| read_member(d)).collect();
    let binaries: BTreeSet<&str> = members
        .iter()
        .filter(|m| m.has_bin)
        .map(|m| m.name.as_str())
        .collect();
    for expected in ["cnm-daemon", "cnm-cli", "xtask"] {
        assert!(binaries.contains(expected), "{expected} builds a binary");
    }
    // The manifests were read: the daemon (a binary) does link the store.
    let daemon = members.iter().find(|m| m.name == "cnm-daemon");
    assert!(daemon.is_some_and(|d| d.deps["dependencies"].contains("cnm-store")));
    // The facade is where a library user gets the default store; everything else is handed one.
    const STORE_BACKENDS: [&str; 1] = ["cnm-store"];
    const MAY_LINK_THE_STORE: [&str; 1] = ["cnm"];
    let mut wrong = Vec::new();
    for m in &members {
        for (section, deps) in &m.deps {
            for dep in deps {
                if binaries.contains(dep.as_str()) && *dep != m.name {
                    wrong.push(format!(
                        "{} [{section}] depends on binary crate {dep}",
                        m.name
                    ));
                }
                let library = !m.has_bin && m.name != "cnm-tests";
                if library
                    && section == "dependencies"
                    && STORE_BACKENDS.contains(&dep.as_str())
                    && !MAY_LINK_THE_STORE.contains(&m.name.as_str())
                {
                    wrong.push(format!("library {} depends on store backend {dep}", m.name));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "layering broken:\n{}", wrong.join("\n"));
}

#[test]
fn wire_types_stay_free_of_io_and_http() {
    let api = read_member(&workspace_root().join("crates/cnm-api"));
    let deps = &api.deps["dependencies"];
    for banned in ["axum", "hyper", "tokio", "cnm", "cnm-core", "cnm-daemon"] {
        assert!(!deps.contains(banned), "cnm-api depends on {banned}");
    }
    assert_eq!(
        deps.iter().map(String::as_str).collect::<Vec<_>>(),
        ["cnm-types", "serde"]
    );
}
