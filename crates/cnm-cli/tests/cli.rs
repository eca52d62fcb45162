//! The `cnm` binary without a daemon: help, completions, usage errors and an unreachable --host.

use std::process::{Command, Output};

const CNM: &str = env!("CARGO_BIN_EXE_cnm");

fn cnm(args: &[&str]) -> Output {
    Command::new(CNM)
        .args(args)
        .env_remove("CNM_HOST")
        .output()
        .expect("cnm runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn every_subcommand_help_has_examples() {
    for sub in [
        &["network", "create"][..],
        &["network", "ls"],
        &["network", "inspect"],
        &["network", "rm"],
        &["network", "prune"],
        &["sandbox", "create"],
        &["sandbox", "ls"],
        &["sandbox", "inspect"],
        &["sandbox", "rm"],
        &["connect"],
        &["disconnect"],
        &["run"],
        &["info"],
        &["completion"],
        &[],
    ] {
        let mut args = sub.to_vec();
        args.push("--help");
        let out = cnm(&args);
        assert!(out.status.success(), "{args:?}");
        let help = text(&out.stdout);
        assert!(help.contains("Examples:"), "{args:?}: {help}");
    }
}

#[test]
fn completions_for_bash_zsh_and_fish() {
    for shell in ["bash", "zsh", "fish"] {
        let out = cnm(&["completion", shell]);
        assert!(out.status.success(), "{shell}");
        let script = text(&out.stdout);
        assert!(
            script.contains("network") && script.contains("prune"),
            "{shell}"
        );
        assert!(
            !script.contains("__exec"),
            "hidden helpers stay hidden ({shell})"
        );
    }
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["network", "create"][..],
        &["network", "bogus"],
        &["run"],
        &["connect", "onlyone"],
        &["--format", "yaml", "network", "ls"],
    ] {
        let out = cnm(args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
    // Checked by cnm itself before talking to any daemon.
    let out = cnm(&[
        "--host",
        "unix:///nonexistent/cnm.sock",
        "connect",
        "-p",
        "80:x",
        "n",
        "s",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let out = cnm(&["--host", "tcp://127.0.0.1:2375", "network", "ls"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}

#[test]
fn explicit_host_is_never_auto_started() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("cnm.sock");
    let host = format!("unix://{}", sock.display());
    for out in [
        cnm(&["--host", &host, "network", "ls"]),
        Command::new(CNM)
            .args(["network", "ls"])
            .env("CNM_HOST", &host)
            .output()
            .expect("cnm runs"),
    ] {
        assert_eq!(out.status.code(), Some(1));
        let err = text(&out.stderr);
        assert!(
            err.starts_with(&format!("error: cannot reach cnmd at {host}")),
            "{err}"
        );
        assert!(
            err.contains(&format!(
                "is it running? start it with `cnmd --socket {}`",
                sock.display()
            )),
            "{err}"
        );
        assert!(!sock.exists(), "nothing was started");
        assert_eq!(std::fs::read_dir(dir.path()).expect("readable").count(), 0);
    }
}
