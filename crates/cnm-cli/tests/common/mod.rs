//! Shared by the end-to-end tests: the `cnm` under test and a `cnmd` built beside it.

#![allow(dead_code, clippy::print_stderr)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The `cnm` binary under test.
pub const CNM: &str = env!("CARGO_BIN_EXE_cnm");

/// `cnmd` from the same target dir as `cnm`, built once per test run so it is never stale.
pub fn cnmd() -> &'static Path {
    static CNMD: OnceLock<PathBuf> = OnceLock::new();
    CNMD.get_or_init(|| {
        let bin_dir = Path::new(CNM).parent().expect("cnm lives in a directory");
        let target_dir = bin_dir.parent().expect("the profile dir has a parent");
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml");
        let mut build = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        build
            .args(["build", "-q", "-p", "cnm-daemon", "--manifest-path"])
            .arg(&manifest)
            .env("CARGO_TARGET_DIR", target_dir);
        if bin_dir.file_name().is_some_and(|n| n == "release") {
            build.arg("--release");
        }
        let built = build.status().expect("cargo runs").success();
        let cnmd = bin_dir.join("cnmd");
        assert!(
            cnmd.is_file(),
            "cargo build -p cnm-daemon failed and there is no {} from before",
            cnmd.display()
        );
        if !built {
            // The daemon crate may be mid-edit in a shared tree; the last good build still
            // tests the CLI, and saying so keeps that visible.
            eprintln!(
                "cargo build -p cnm-daemon failed; testing the existing {}",
                cnmd.display()
            );
        }
        cnmd
    })
}
