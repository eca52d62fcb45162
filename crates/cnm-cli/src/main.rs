//! `cnm`, the command line of cnm: docker's network commands (`cnm network create|ls|inspect|rm|
//! prune`, `cnm connect|disconnect`), sandboxes (`cnm sandbox …`) and `cnm run`, which runs a
//! command inside a fresh sandbox.
//!
//! **Owns**: the command grammar and help, talking to cnmd over its unix socket, starting cnmd
//! when none runs at the default socket, human tables and JSON output, error hints, and running
//! a command inside a sandbox (`cnm run`, through the hidden `cnm __exec`).
//!
//! **Does not**: manage networks itself (cnmd does), or keep any state.
//!
//! ```text
//! cnm network create --subnet 10.89.0.0/24 demo
//! cnm run --network demo --name web -p 8080:80 -- python3 -m http.server 80
//! cnm network rm demo
//! ```
//!
//! Exit codes: 0 success, 1 failure, 2 bad usage; `cnm run` exits with its command's code
//! (128+N when killed by signal N; 125 when it could not enter the sandbox, 126/127 when the
//! command cannot be executed / was not found).

mod args;
mod autostart;
mod client;
mod hint;
mod network;
mod output;
mod run;
mod sandbox;
mod table;

use std::path::Path;
use std::process::ExitCode;

use clap::{CommandFactory as _, Parser as _};

use crate::args::{Cli, Command};
use crate::client::{Client, Endpoint};
use crate::output::{Outcome, Printer};

fn main() -> ExitCode {
    // Parsing is single-threaded, so the hidden re-exec helpers can still unshare the mount
    // namespace and setsid before anything starts a thread.
    let cli = Cli::parse();
    match cli.command {
        Command::Exec(a) => run::exec_in_sandbox(a),
        Command::Detach { command } => run::detach(&command),
        Command::Completion { shell } => {
            clap_complete::generate(
                shell,
                &mut completion_command(),
                "cnm",
                &mut std::io::stdout(),
            );
            ExitCode::SUCCESS
        }
        _ => {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    output::report(
                        &anyhow::Error::new(e).context("cannot start the async runtime"),
                    );
                    return ExitCode::from(1);
                }
            };
            match runtime.block_on(dispatch(cli)) {
                Ok(outcome) => outcome.into(),
                Err(e) => {
                    output::report(&e);
                    output::exit_code(&e)
                }
            }
        }
    }
}

/// The grammar without the hidden helpers, which clap_complete would otherwise offer.
fn completion_command() -> clap::Command {
    let full = Cli::command();
    clap::Command::new("cnm")
        .version(env!("CARGO_PKG_VERSION"))
        .args(full.get_arguments().cloned())
        .subcommands(full.get_subcommands().filter(|s| !s.is_hide_set()).cloned())
}

async fn dispatch(cli: Cli) -> anyhow::Result<Outcome> {
    let endpoint = Endpoint::parse(cli.host.as_deref(), Path::new(autostart::DEFAULT_SOCKET))?;
    let client = Client::new(&endpoint);
    let out = Printer { format: cli.format };
    match cli.command {
        Command::Network(cmd) => network::run(&client, cmd, &out).await,
        Command::Sandbox(cmd) => sandbox::run(&client, cmd, &out).await,
        Command::Connect(a) => network::connect(&client, a, &out).await,
        Command::Disconnect(a) => network::disconnect(&client, a).await,
        Command::Run(a) => run::run(&client, a).await,
        Command::Info => {
            let info: cnm_api::v1::Info = client.get("/cnm/v1/info", hint::Target::None).await?;
            match out.format {
                args::Format::Json => out.json(&info),
                args::Format::Table => {
                    for (key, value) in [
                        ("Version", info.version.as_str()),
                        ("ApiVersion", &info.api_version),
                        ("Drivers", &info.drivers.join(", ")),
                        ("Store", &info.store),
                        ("StateDir", &info.state_dir),
                        ("RunDir", &info.run_dir),
                    ] {
                        out.line(&format!("{key}: {value}"));
                    }
                }
            }
            Ok(Outcome::Ok)
        }
        Command::Completion { .. } | Command::Exec(_) | Command::Detach { .. } => {
            unreachable!("handled before the runtime starts")
        }
    }
}
