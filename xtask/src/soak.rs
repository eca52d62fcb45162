//! `cargo xtask soak [--kills N]`: the crash soak.
//!
//! Runs cnm's crash test binary (`crates/cnm/tests/crash.rs`) in its soak mode inside a private
//! mount namespace: a child controller performs random operations (networks, endpoints,
//! sandboxes, joins, leaves, deletes) and reports each one over a pipe; the parent kills it with
//! SIGKILL at a random moment, builds a controller on the same directories (the restart) and
//! checks that the interrupted operation happened completely or not at all, that the kernel
//! matches the records (links, netns mounts, nft elements) and that IPAM hands out no held
//! address. It prints the kills, the operations and the violations.

use anyhow::{Context, Result, bail};

use crate::{privileged, run};

/// Options of `cargo xtask soak`.
#[derive(Debug, PartialEq)]
pub struct SoakArgs {
    /// How many times the child is killed.
    pub kills: usize,
}

pub fn parse(args: &[String]) -> Result<SoakArgs> {
    let mut parsed = SoakArgs { kills: 200 };
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--kills" => {
                let n = iter.next().context("`--kills` needs a number")?;
                parsed.kills = n
                    .parse()
                    .with_context(|| format!("`--kills {n}`: not a number"))?;
            }
            other => bail!("unknown option `{other}` for `soak`"),
        }
    }
    Ok(parsed)
}

pub fn soak(args: &SoakArgs) -> Result<bool> {
    let cargo = run::cargo_program();
    let cargo_args: Vec<String> = [
        "test",
        "-p",
        "cnm",
        "--test",
        "crash",
        "--",
        "--soak",
        &args.kills.to_string(),
    ]
    .map(String::from)
    .to_vec();
    let (ok, _) = privileged::run_cargo(&cargo, &cargo_args)?;
    Ok(ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kills_default_and_parse() {
        assert_eq!(parse(&[]).unwrap(), SoakArgs { kills: 200 });
        let args = ["--kills".to_owned(), "20".to_owned()];
        assert_eq!(parse(&args).unwrap(), SoakArgs { kills: 20 });
        assert!(parse(&["--kills".to_owned()]).is_err());
        assert!(parse(&["-x".to_owned()]).is_err());
    }
}
