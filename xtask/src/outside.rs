//! Crates outside the workspace's members: a driver written as a third party would write it
//! (`examples/ptp-driver`, its own workspace, depending on the `cnm` facade by path). `cargo
//! xtask test` formats, lints and tests them too — unit and privileged — building into the
//! workspace's target dir, so the crates they share with the workspace are not built into a
//! second one (those whose features differ are built once more, beside the others).

use std::path::{Path, PathBuf};

/// One crate outside the workspace.
#[derive(Debug, PartialEq, Eq)]
pub struct OutOfTree {
    /// Its package name, as `-p` names it.
    pub name: &'static str,
    /// Its manifest, relative to the workspace root.
    pub manifest: &'static str,
}

/// Every crate `cargo xtask test` checks beside the workspace.
pub const CRATES: &[OutOfTree] = &[OutOfTree {
    name: "ptp-driver",
    manifest: "examples/ptp-driver/Cargo.toml",
}];

/// What one `cargo xtask test` covers: the workspace (all of it, some packages, or none) and
/// some out-of-tree crates.
#[derive(Debug, PartialEq)]
pub struct Scope {
    /// `cargo` arguments selecting the workspace packages; `None` when only out-of-tree crates
    /// were named.
    pub workspace: Option<Vec<String>>,
    /// The out-of-tree crates.
    pub outside: Vec<&'static OutOfTree>,
}

/// Splits the `-p` names: none means the whole workspace and every out-of-tree crate.
pub fn scope(packages: &[String]) -> Scope {
    if packages.is_empty() {
        return Scope {
            workspace: Some(crate::run::scope_args(packages)),
            outside: CRATES.iter().collect(),
        };
    }
    let outside: Vec<_> = CRATES
        .iter()
        .filter(|c| packages.iter().any(|p| p == c.name))
        .collect();
    let inside: Vec<String> = packages
        .iter()
        .filter(|p| !outside.iter().any(|c| c.name == p.as_str()))
        .cloned()
        .collect();
    Scope {
        workspace: (!inside.is_empty()).then(|| crate::run::scope_args(&inside)),
        outside,
    }
}

pub(crate) fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

impl OutOfTree {
    /// `--manifest-path` of this crate.
    pub fn manifest_args(&self) -> Vec<String> {
        let manifest = root().join(self.manifest);
        vec![
            "--manifest-path".to_owned(),
            manifest.to_string_lossy().into_owned(),
        ]
    }

    /// `--manifest-path` and `--target-dir` (the workspace's, unless `CARGO_TARGET_DIR` says
    /// otherwise), for the commands that build.
    pub fn build_args(&self) -> Vec<String> {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map_or_else(|| root().join("target"), PathBuf::from);
        let mut args = self.manifest_args();
        args.extend([
            "--target-dir".to_owned(),
            target.to_string_lossy().into_owned(),
        ]);
        args
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::args as names;

    #[test]
    fn no_names_mean_everything_and_names_split_between_inside_and_outside() {
        let all = scope(&[]);
        assert_eq!(all.workspace, Some(names(&["--workspace"])));
        assert_eq!(all.outside.len(), CRATES.len());
        let only = scope(&names(&["ptp-driver"]));
        assert_eq!(only.workspace, None);
        assert_eq!(only.outside[0].name, "ptp-driver");
        let both = scope(&names(&["cnm", "ptp-driver"]));
        assert_eq!(both.workspace, Some(names(&["-p", "cnm"])));
        assert_eq!(both.outside.len(), 1);
        let inside = scope(&names(&["cnm-core"]));
        assert!(inside.outside.is_empty());
    }

    #[test]
    fn every_out_of_tree_manifest_exists_and_is_excluded_from_the_workspace() {
        let workspace = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
        for c in CRATES {
            assert!(root().join(c.manifest).exists(), "{}", c.manifest);
            let dir = c.manifest.trim_end_matches("/Cargo.toml");
            assert!(
                workspace.contains(&format!("\"{dir}\"")),
                "{dir} not in exclude"
            );
        }
    }
}
