//! Running cargo: plainly, or with stdout streamed live and captured for counting.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use anyhow::{Context, Result};

/// The cargo that invoked us (`$CARGO`), so the pinned toolchain is used throughout.
pub fn cargo_program() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned())
}

/// `--workspace`, or `-p A -p B` when packages were named.
pub fn scope_args(packages: &[String]) -> Vec<String> {
    if packages.is_empty() {
        vec!["--workspace".to_owned()]
    } else {
        package_args(packages)
    }
}

/// `-p A -p B`.
pub fn package_args(packages: &[String]) -> Vec<String> {
    packages
        .iter()
        .flat_map(|p| ["-p".to_owned(), p.clone()])
        .collect()
}

fn describe(program: &str, args: &[String]) -> String {
    std::iter::once(program)
        .chain(args.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs a command with inherited stdio; returns whether it succeeded.
pub fn status(program: &str, args: &[String]) -> Result<bool> {
    println!("xtask: $ {}", describe(program, args));
    let status = Command::new(program)
        .args(args)
        .status()
        .with_context(|| format!("failed to start `{}`", describe(program, args)))?;
    Ok(status.success())
}

/// Runs a command, copying its stdout to ours line by line as it arrives (stderr is inherited, so
/// compiler messages stay live and coloured) and returning the captured stdout.
pub fn tee(program: &str, args: &[String]) -> Result<(bool, String)> {
    tee_with_env(program, args, &[])
}

/// [`tee`] with extra environment variables for the child.
pub fn tee_with_env(
    program: &str,
    args: &[String],
    envs: &[(&str, &str)],
) -> Result<(bool, String)> {
    println!("xtask: $ {}", describe(program, args));
    let mut child = Command::new(program)
        .args(args)
        .envs(envs.iter().copied())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("failed to start `{}`", describe(program, args)))?;
    let stdout = child.stdout.take().context("child stdout was not piped")?;
    let mut reader = BufReader::new(stdout);
    let mut captured = String::new();
    let mut line = Vec::new();
    let mut out = std::io::stdout().lock();
    loop {
        line.clear();
        // Bytes, not read_line: a test may print invalid UTF-8 and that must not stop the count.
        let read = reader
            .read_until(b'\n', &mut line)
            .context("failed to read cargo's output")?;
        if read == 0 {
            break;
        }
        out.write_all(&line)
            .context("failed to copy cargo's output")?;
        out.flush().context("failed to copy cargo's output")?;
        captured.push_str(&String::from_utf8_lossy(&line));
    }
    drop(out);
    let status = child
        .wait()
        .with_context(|| format!("failed to wait for `{}`", describe(program, args)))?;
    Ok((status.success(), captured))
}
