//! The command line grammar: every subcommand, flag and help text, mirroring `docker network`
//! wherever docker has the same thing.

use clap::{Args, Parser, Subcommand, ValueEnum};
use cnm_types::PortBinding;

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns for people (the default).
    Table,
    /// The daemon's JSON, for programs.
    Json,
}

const TOP_EXAMPLES: &str = "\
Examples:
  cnm network create --subnet 10.89.0.0/24 demo
  cnm run --network demo --name web -p 8080:80 -- python3 -m http.server 80
  cnm network ls
  cnm --host unix:///tmp/cnm.sock network inspect demo

cnm talks to cnmd over /run/cnm/cnm.sock and starts it there when it is not running.
With --host (or CNM_HOST) it only talks to the daemon you named.";

/// cnm: container networking (Docker's network model) for plain Linux processes.
#[derive(Debug, Parser)]
#[command(name = "cnm", version, after_help = TOP_EXAMPLES, propagate_version = true)]
pub struct Cli {
    /// The daemon to talk to; no daemon is started for you when this is given.
    #[arg(long, global = true, env = "CNM_HOST", value_name = "unix:///PATH")]
    pub host: Option<String>,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Manage networks.
    #[command(subcommand)]
    Network(NetworkCommand),
    /// Manage sandboxes (a container's network stack: a netns plus its hosts and resolv.conf).
    #[command(subcommand)]
    Sandbox(SandboxCommand),
    /// Connect a sandbox to a network.
    #[command(after_help = "\
Examples:
  cnm connect demo web
  cnm connect --ip 10.89.0.10 --alias db -p 5432:5432 demo db1")]
    Connect(ConnectArgs),
    /// Disconnect a sandbox from a network.
    #[command(after_help = "\
Examples:
  cnm disconnect demo web")]
    Disconnect(DisconnectArgs),
    /// Run a command in a new sandbox connected to networks, then remove the sandbox.
    #[command(after_help = "\
Examples:
  cnm run -- ip -o addr                       # on the default network `bridge`
  cnm run --network demo --name srv --keep -- python3 -m http.server 8080
  cnm run --network demo -p 8080:80 -- sh -c 'cat /etc/hosts'

The command sees the sandbox's interfaces, /etc/hosts and /etc/resolv.conf; stdio is passed
through, SIGINT/SIGTERM/SIGHUP are forwarded, and cnm exits with the command's exit code
(128+N when it was killed by signal N).")]
    Run(RunArgs),
    /// Show the daemon's version, drivers and directories.
    #[command(after_help = "\
Examples:
  cnm info
  cnm info --format json")]
    Info,
    /// Print a shell completion script.
    #[command(after_help = "\
Examples:
  cnm completion bash > /etc/bash_completion.d/cnm
  cnm completion zsh > \"${fpath[1]}/_cnm\"
  cnm completion fish > ~/.config/fish/completions/cnm.fish")]
    Completion {
        /// The shell to generate completions for.
        shell: clap_complete::Shell,
    },
    /// Internal: enter a sandbox and exec a command (used by `cnm run`).
    #[command(name = "__exec", hide = true)]
    Exec(ExecArgs),
    /// Internal: start a new session and exec a program (used to start cnmd in the background).
    #[command(name = "__detach", hide = true)]
    Detach {
        /// The program and its arguments.
        #[arg(required = true, num_args = 1.., trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
}

/// `cnm network …`
#[derive(Debug, Subcommand)]
pub enum NetworkCommand {
    /// Create a network.
    #[command(after_help = "\
Examples:
  cnm network create demo
  cnm network create -d bridge --subnet 10.89.0.0/24 --gateway 10.89.0.1 demo
  cnm network create --subnet 10.90.0.0/16 --ip-range 10.90.5.0/24 --aux-address router=10.90.0.2 lab
  cnm network create --ipv6 --subnet fd00:89::/64 --internal -o com.docker.network.bridge.name=br-lab lab6")]
    Create(Box<NetworkCreateArgs>),
    /// List networks.
    #[command(
        visible_alias = "list",
        after_help = "\
Examples:
  cnm network ls
  cnm network ls -q
  cnm network ls -f name=demo -f driver=bridge
  cnm network ls --format json"
    )]
    Ls(NetworkLsArgs),
    /// Show one or more networks in detail (JSON).
    #[command(after_help = "\
Examples:
  cnm network inspect demo
  cnm network inspect bridge demo")]
    Inspect {
        /// Network names or ids.
        #[arg(required = true, value_name = "NETWORK")]
        networks: Vec<String>,
    },
    /// Remove one or more networks.
    #[command(
        visible_alias = "remove",
        after_help = "\
Examples:
  cnm network rm demo
  cnm network rm lab lab6"
    )]
    Rm {
        /// Network names or ids.
        #[arg(required = true, value_name = "NETWORK")]
        networks: Vec<String>,
    },
    /// Remove all networks no sandbox is connected to.
    #[command(after_help = "\
Examples:
  cnm network prune
  cnm network prune -f --filter label=env=test")]
    Prune {
        /// Do not prompt for confirmation.
        #[arg(short, long)]
        force: bool,
        /// Only prune networks matching KEY=VALUE.
        #[arg(long = "filter", value_name = "KEY=VALUE")]
        filters: Vec<String>,
    },
}

/// `cnm network create` flags, as `docker network create`.
#[derive(Debug, Args)]
pub struct NetworkCreateArgs {
    /// Driver to manage the network.
    #[arg(short, long, default_value = "bridge")]
    pub driver: String,
    /// Subnet in CIDR format (repeatable).
    #[arg(long = "subnet", value_name = "CIDR")]
    pub subnets: Vec<String>,
    /// Gateway for a subnet (repeatable, one per subnet).
    #[arg(long = "gateway", value_name = "IP")]
    pub gateways: Vec<String>,
    /// Allocate container addresses from this sub-range of a subnet (repeatable).
    #[arg(long = "ip-range", value_name = "CIDR")]
    pub ip_ranges: Vec<String>,
    /// Address the IPAM must not hand out, as NAME=IP (repeatable).
    #[arg(long = "aux-address", value_name = "NAME=IP")]
    pub aux_addresses: Vec<String>,
    /// IPAM driver.
    #[arg(long, default_value = "default")]
    pub ipam_driver: String,
    /// IPAM driver option KEY=VALUE (repeatable).
    #[arg(long = "ipam-opt", value_name = "KEY=VALUE")]
    pub ipam_opts: Vec<String>,
    /// Enable IPv6 on the network.
    #[arg(long)]
    pub ipv6: bool,
    /// Restrict external access to the network.
    #[arg(long)]
    pub internal: bool,
    /// Allow sandboxes to attach (accepted for docker compatibility; always true here).
    #[arg(long)]
    pub attachable: bool,
    /// Let the subnet overlap an address or route the host already has (a LAN it is on, a VPN
    /// route): the host loses its path to the overlapped part while the network exists.
    /// Refused without this flag. Sets option com.cnm.network.allow_host_overlap=true.
    #[arg(long)]
    pub allow_host_overlap: bool,
    /// Driver option KEY=VALUE (repeatable).
    #[arg(short = 'o', long = "opt", value_name = "KEY=VALUE")]
    pub opts: Vec<String>,
    /// Metadata KEY=VALUE (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Name of the network.
    pub name: String,
}

/// `cnm network ls` flags.
#[derive(Debug, Args)]
pub struct NetworkLsArgs {
    /// Only print network ids.
    #[arg(short, long)]
    pub quiet: bool,
    /// Filter KEY=VALUE: name, id, driver, label, type=custom|builtin (repeatable).
    #[arg(short = 'f', long = "filter", value_name = "KEY=VALUE")]
    pub filters: Vec<String>,
    /// Do not truncate ids.
    #[arg(long)]
    pub no_trunc: bool,
}

/// `cnm sandbox …`
#[derive(Debug, Subcommand)]
pub enum SandboxCommand {
    /// Create a sandbox (a network namespace with its own hosts and resolv.conf).
    #[command(after_help = "\
Examples:
  cnm sandbox create web
  cnm sandbox create --hostname web --domainname example.com --dns 1.1.1.1 --add-host db:10.0.0.5 web
  cnm connect demo web")]
    Create(SandboxCreateArgs),
    /// List sandboxes.
    #[command(
        visible_alias = "list",
        after_help = "\
Examples:
  cnm sandbox ls
  cnm sandbox ls -q
  cnm sandbox ls --format json"
    )]
    Ls {
        /// Only print sandbox ids.
        #[arg(short, long)]
        quiet: bool,
        /// Do not truncate ids.
        #[arg(long)]
        no_trunc: bool,
    },
    /// Show one or more sandboxes in detail (JSON).
    #[command(after_help = "\
Examples:
  cnm sandbox inspect web")]
    Inspect {
        /// Sandbox names or ids.
        #[arg(required = true, value_name = "SANDBOX")]
        sandboxes: Vec<String>,
    },
    /// Remove one or more sandboxes (disconnecting them from every network first).
    #[command(
        visible_alias = "remove",
        after_help = "\
Examples:
  cnm sandbox rm web
  cnm sandbox rm $(cnm sandbox ls -q)"
    )]
    Rm {
        /// Sandbox names or ids.
        #[arg(required = true, value_name = "SANDBOX")]
        sandboxes: Vec<String>,
    },
}

/// `cnm sandbox create` flags.
#[derive(Debug, Args)]
pub struct SandboxCreateArgs {
    #[command(flatten)]
    pub config: SandboxConfigArgs,
    /// Name of the sandbox.
    pub name: String,
}

/// Sandbox settings shared by `cnm sandbox create` and `cnm run`.
#[derive(Debug, Args, Default, Clone)]
pub struct SandboxConfigArgs {
    /// Hostname of the sandbox.
    #[arg(long)]
    pub hostname: Option<String>,
    /// Domain name of the sandbox.
    #[arg(long)]
    pub domainname: Option<String>,
    /// DNS server for resolv.conf (repeatable).
    #[arg(long = "dns", value_name = "IP")]
    pub dns: Vec<String>,
    /// DNS search domain (repeatable).
    #[arg(long = "dns-search", value_name = "DOMAIN")]
    pub dns_search: Vec<String>,
    /// DNS option for resolv.conf (repeatable).
    #[arg(long = "dns-option", value_name = "OPTION")]
    pub dns_options: Vec<String>,
    /// Extra /etc/hosts entry NAME:IP (repeatable).
    #[arg(long = "add-host", value_name = "NAME:IP")]
    pub add_hosts: Vec<String>,
}

/// `cnm connect` flags, as `docker network connect`.
#[derive(Debug, Args)]
pub struct ConnectArgs {
    /// IPv4 address on the network.
    #[arg(long)]
    pub ip: Option<String>,
    /// IPv6 address on the network.
    #[arg(long)]
    pub ip6: Option<String>,
    /// DNS alias on the network (repeatable).
    #[arg(long = "alias", value_name = "ALIAS")]
    pub aliases: Vec<String>,
    /// Publish a port: `[HOST_IP:][HOST_PORT:]CTR_PORT[/PROTO]` (repeatable).
    #[arg(short = 'p', long = "publish", value_name = "SPEC")]
    pub publish: Vec<PortBinding>,
    /// Network name or id.
    pub network: String,
    /// Sandbox name or id.
    pub sandbox: String,
}

/// `cnm disconnect` flags, as `docker network disconnect`.
#[derive(Debug, Args)]
pub struct DisconnectArgs {
    /// Disconnect even if the endpoint's state is inconsistent.
    #[arg(short, long)]
    pub force: bool,
    /// Network name or id.
    pub network: String,
    /// Sandbox name or id.
    pub sandbox: String,
}

/// `cnm run` flags.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Network to connect to (repeatable; default `bridge`).
    #[arg(long = "network", visible_alias = "net", value_name = "NETWORK")]
    pub networks: Vec<String>,
    /// Name of the sandbox (default: generated).
    #[arg(long)]
    pub name: Option<String>,
    /// IPv4 address on the first network.
    #[arg(long)]
    pub ip: Option<String>,
    /// IPv6 address on the first network.
    #[arg(long)]
    pub ip6: Option<String>,
    /// Publish a port on the first network: `[HOST_IP:][HOST_PORT:]CTR_PORT[/PROTO]` (repeatable).
    #[arg(short = 'p', long = "publish", value_name = "SPEC")]
    pub publish: Vec<PortBinding>,
    /// DNS alias on every network (repeatable).
    #[arg(
        long = "dns-alias",
        visible_alias = "network-alias",
        value_name = "ALIAS"
    )]
    pub dns_aliases: Vec<String>,
    #[command(flatten)]
    pub config: SandboxConfigArgs,
    /// Keep the sandbox after the command ends.
    #[arg(long)]
    pub keep: bool,
    /// The command and its arguments.
    #[arg(required = true, num_args = 1.., trailing_var_arg = true, allow_hyphen_values = true,
          value_name = "CMD")]
    pub command: Vec<String>,
}

/// `cnm __exec` flags (internal).
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// The sandbox key (path of its network namespace).
    #[arg(long)]
    pub netns: String,
    /// SRC:DST bind mount (repeatable).
    #[arg(long = "bind", value_name = "SRC:DST")]
    pub binds: Vec<String>,
    /// Hostname in a new UTS namespace.
    #[arg(long)]
    pub hostname: Option<String>,
    /// The command and its arguments.
    #[arg(required = true, num_args = 1.., trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("cnm").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    #[test]
    fn grammar_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn network_create_takes_dockers_flags() {
        let cli = parse(&[
            "network",
            "create",
            "-d",
            "bridge",
            "--subnet",
            "10.1.0.0/16",
            "--subnet",
            "fd00::/64",
            "--gateway",
            "10.1.0.1",
            "--ip-range",
            "10.1.5.0/24",
            "--aux-address",
            "r=10.1.0.2",
            "--ipv6",
            "--internal",
            "-o",
            "com.docker.network.bridge.name=br1",
            "--label",
            "env=test",
            "net1",
        ]);
        let Command::Network(NetworkCommand::Create(a)) = cli.command else {
            panic!("wrong subcommand")
        };
        assert_eq!(a.driver, "bridge");
        assert_eq!(a.subnets, ["10.1.0.0/16", "fd00::/64"]);
        assert_eq!(a.gateways, ["10.1.0.1"]);
        assert_eq!(a.ip_ranges, ["10.1.5.0/24"]);
        assert_eq!(a.aux_addresses, ["r=10.1.0.2"]);
        assert!(a.ipv6 && a.internal && !a.attachable);
        assert_eq!(a.opts, ["com.docker.network.bridge.name=br1"]);
        assert_eq!(a.labels, ["env=test"]);
        assert_eq!(a.name, "net1");
    }

    #[test]
    fn network_create_defaults_to_bridge() {
        let cli = parse(&["network", "create", "n"]);
        let Command::Network(NetworkCommand::Create(a)) = cli.command else {
            panic!("wrong subcommand")
        };
        assert_eq!(a.driver, "bridge");
        assert_eq!(a.ipam_driver, "default");
    }

    #[test]
    fn ls_quiet_and_filters_and_global_format() {
        let cli = parse(&["network", "ls", "-q", "-f", "name=x", "--format", "json"]);
        assert_eq!(cli.format, Format::Json);
        let Command::Network(NetworkCommand::Ls(a)) = cli.command else {
            panic!("wrong subcommand")
        };
        assert!(a.quiet);
        assert_eq!(a.filters, ["name=x"]);
    }

    #[test]
    fn prune_short_f_is_force_like_docker() {
        let cli = parse(&["network", "prune", "-f"]);
        assert!(matches!(
            cli.command,
            Command::Network(NetworkCommand::Prune { force: true, .. })
        ));
    }

    #[test]
    fn rm_and_inspect_take_many_names() {
        let cli = parse(&["network", "rm", "a", "b"]);
        let Command::Network(NetworkCommand::Rm { networks }) = cli.command else {
            panic!("wrong subcommand")
        };
        assert_eq!(networks, ["a", "b"]);
        assert!(Cli::try_parse_from(["cnm", "network", "inspect"]).is_err());
    }

    #[test]
    fn connect_takes_network_then_sandbox() {
        let cli = parse(&[
            "connect",
            "--ip",
            "10.0.0.5",
            "--alias",
            "db",
            "--alias",
            "pg",
            "-p",
            "5432:5432",
            "net",
            "sb",
        ]);
        let Command::Connect(a) = cli.command else {
            panic!("wrong subcommand")
        };
        assert_eq!((a.network.as_str(), a.sandbox.as_str()), ("net", "sb"));
        assert_eq!(a.ip.as_deref(), Some("10.0.0.5"));
        assert_eq!(a.aliases, ["db", "pg"]);
        assert_eq!(a.publish, ["5432:5432".parse::<PortBinding>().unwrap()]);
    }

    #[test]
    fn run_takes_the_command_after_double_dash_verbatim() {
        let cli = parse(&[
            "run",
            "--network",
            "a",
            "--network",
            "b",
            "--name",
            "x",
            "-p",
            "8080:80/tcp",
            "--dns-alias",
            "web",
            "--hostname",
            "h",
            "--keep",
            "--",
            "sh",
            "-c",
            "exit 7",
        ]);
        let Command::Run(a) = cli.command else {
            panic!("wrong subcommand")
        };
        assert_eq!(a.networks, ["a", "b"]);
        assert_eq!(a.name.as_deref(), Some("x"));
        assert_eq!(a.publish, ["8080:80/tcp".parse::<PortBinding>().unwrap()]);
        assert_eq!(a.dns_aliases, ["web"]);
        assert_eq!(a.config.hostname.as_deref(), Some("h"));
        assert!(a.keep);
        assert_eq!(a.command, ["sh", "-c", "exit 7"]);
    }

    #[test]
    fn run_without_double_dash_stops_at_the_command() {
        let cli = parse(&["run", "ip", "-o", "addr", "--keep"]);
        let Command::Run(a) = cli.command else {
            panic!("wrong subcommand")
        };
        assert!(!a.keep, "--keep after the command belongs to the command");
        assert_eq!(a.command, ["ip", "-o", "addr", "--keep"]);
    }

    #[test]
    fn usage_errors_are_exit_code_2() {
        let err = Cli::try_parse_from(["cnm", "network", "create"]).expect_err("name missing");
        assert_eq!(err.exit_code(), 2);
        let err = Cli::try_parse_from(["cnm", "run"]).expect_err("command missing");
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn every_visible_subcommand_has_examples() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
                let p = format!("{path} {}", sub.get_name());
                if sub.get_subcommands().next().is_some() {
                    walk(sub, &p, missing);
                } else if !sub
                    .get_after_help()
                    .is_some_and(|h| h.to_string().contains("Examples:"))
                    && sub.get_name() != "help"
                {
                    missing.push(p);
                }
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "cnm", &mut missing);
        assert!(missing.is_empty(), "no examples in: {missing:?}");
    }
}
