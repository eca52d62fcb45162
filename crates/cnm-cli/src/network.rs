//! `cnm network …`, `cnm connect`, `cnm disconnect`: docker's network commands over cnmd's API.

use std::collections::BTreeMap;
use std::io::BufRead as _;
use std::net::IpAddr;

use cnm_api::docker::{
    Filters, Ipam, IpamConfig, Network, NetworkCreateRequest, NetworkCreateResponse,
    NetworkDisconnectRequest, NetworkPruneResponse, StringMap,
};
use cnm_api::v1::{Sandbox, SandboxConnectRequest};
use cnm_types::PortBinding;
use ipnet::IpNet;
use serde::de::IgnoredAny;

use crate::args::{
    ConnectArgs, DisconnectArgs, Format, NetworkCommand, NetworkCreateArgs, NetworkLsArgs,
};
use crate::client::{Client, UsageError, encode};
use crate::hint::Target;
use crate::output::{Outcome, Printer};
use crate::table;

/// Runs one `cnm network` subcommand.
pub async fn run(client: &Client, cmd: NetworkCommand, out: &Printer) -> anyhow::Result<Outcome> {
    match cmd {
        NetworkCommand::Create(a) => create(client, *a, out).await,
        NetworkCommand::Ls(a) => ls(client, a, out).await,
        NetworkCommand::Inspect { networks } => Ok(client
            .inspect_each::<Network>(&networks, out, |n| {
                (format!("/networks/{}", encode(n)), Target::Network(n))
            })
            .await),
        NetworkCommand::Rm { networks } => Ok(client
            .delete_each(&networks, out, |n| {
                (format!("/networks/{}", encode(n)), Target::NetworkRm(n))
            })
            .await),
        NetworkCommand::Prune { force, filters } => prune(client, force, &filters, out).await,
    }
}

async fn create(client: &Client, a: NetworkCreateArgs, out: &Printer) -> anyhow::Result<Outcome> {
    let body = create_body(&a)?;
    let created: NetworkCreateResponse = client
        .post("/networks/create", &body, Target::Network(&a.name))
        .await?;
    if !created.warning.is_empty() {
        out.warn(&created.warning);
    }
    match out.format {
        Format::Json => out.json(&created),
        Format::Table => out.line(&created.id),
    }
    Ok(Outcome::Ok)
}

/// cnm's network option that lets a subnet overlap the host's networks (cnm-core's
/// `KEY_ALLOW_HOST_OVERLAP`; the CLI speaks to cnmd over HTTP and does not link the library).
pub const ALLOW_HOST_OVERLAP: &str = "com.cnm.network.allow_host_overlap";

/// The body of `POST /networks/create` for `cnm network create` flags, with docker's rules for
/// pairing gateways, ranges and aux addresses with the subnet that contains them.
pub fn create_body(a: &NetworkCreateArgs) -> Result<NetworkCreateRequest, UsageError> {
    let config = ipam_config(a)?;
    let mut options = key_values("--opt", &a.opts)?;
    if a.allow_host_overlap {
        options.insert(ALLOW_HOST_OVERLAP.to_owned(), "true".to_owned());
    }
    Ok(NetworkCreateRequest {
        name: a.name.clone(),
        check_duplicate: Some(true),
        driver: Some(a.driver.clone()),
        internal: Some(a.internal),
        attachable: Some(a.attachable),
        enable_ipv6: Some(a.ipv6),
        ipam: Some(Ipam {
            driver: a.ipam_driver.clone(),
            config,
            options: Some(key_values("--ipam-opt", &a.ipam_opts)?),
        }),
        options: Some(options),
        labels: Some(key_values("--label", &a.labels)?),
        ..Default::default()
    })
}

fn ipam_config(a: &NetworkCreateArgs) -> Result<Vec<IpamConfig>, UsageError> {
    let usage = |m: String| UsageError(m);
    if a.subnets.len() < a.ip_ranges.len() || a.subnets.len() < a.gateways.len() {
        return Err(usage(
            "every --ip-range or --gateway must have a corresponding --subnet".into(),
        ));
    }
    let mut subnets: Vec<(IpNet, IpamConfig)> = Vec::new();
    for s in &a.subnets {
        let net: IpNet = s.parse().map_err(|_| {
            usage(format!(
                "invalid --subnet {s:?}: expected CIDR, e.g. 10.89.0.0/24"
            ))
        })?;
        if let Some((other, _)) = subnets
            .iter()
            .find(|(o, _)| o.contains(&net.network()) || net.contains(&o.network()))
        {
            return Err(usage(format!(
                "--subnet {net} overlaps --subnet {other}: multiple overlapping subnets are not supported"
            )));
        }
        let config = IpamConfig {
            subnet: s.clone(),
            ..Default::default()
        };
        subnets.push((net, config));
    }
    for r in &a.ip_ranges {
        let range: IpNet = r
            .parse()
            .map_err(|_| usage(format!("invalid --ip-range {r:?}: expected CIDR")))?;
        let (subnet, c) = containing(&mut subnets, |s| s.contains(&range), "--ip-range", r)?;
        if !c.ip_range.is_empty() {
            return Err(usage(format!(
                "cannot configure multiple ranges ({}, {r}) on the same subnet ({subnet})",
                c.ip_range
            )));
        }
        c.ip_range = r.clone();
    }
    for g in &a.gateways {
        let ip: IpAddr = g
            .parse()
            .map_err(|_| usage(format!("invalid --gateway {g:?}: expected an IP address")))?;
        let (subnet, c) = containing(&mut subnets, |s| s.contains(&ip), "--gateway", g)?;
        if !c.gateway.is_empty() {
            return Err(usage(format!(
                "cannot configure multiple gateways ({}, {g}) for the same subnet ({subnet})",
                c.gateway
            )));
        }
        c.gateway = g.clone();
    }
    for aux in &a.aux_addresses {
        let (name, ip) = aux
            .split_once('=')
            .ok_or_else(|| usage(format!("invalid --aux-address {aux:?}: expected NAME=IP")))?;
        let addr: IpAddr = ip.parse().map_err(|_| {
            usage(format!(
                "invalid --aux-address {aux:?}: {ip:?} is not an IP address"
            ))
        })?;
        let (_, c) = containing(&mut subnets, |s| s.contains(&addr), "--aux-address", aux)?;
        c.auxiliary_addresses.insert(name.to_owned(), ip.to_owned());
    }
    Ok(subnets.into_iter().map(|(_, c)| c).collect())
}

/// The `--subnet` (with its IPAM entry) that contains what `flag value` names.
fn containing<'a>(
    subnets: &'a mut [(IpNet, IpamConfig)],
    contains: impl Fn(&IpNet) -> bool,
    flag: &str,
    value: &str,
) -> Result<(&'a IpNet, &'a mut IpamConfig), UsageError> {
    subnets
        .iter_mut()
        .find(|(s, _)| contains(s))
        .map(|(s, c)| (&*s, c))
        .ok_or_else(|| UsageError(format!("no matching --subnet for {flag} {value}")))
}

/// Parses repeated `KEY=VALUE` flags into a map (a missing `=` means an empty value, as docker
/// does for labels).
pub fn key_values(flag: &str, items: &[String]) -> Result<StringMap, UsageError> {
    let mut m = BTreeMap::new();
    for kv in items {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        if k.is_empty() {
            return Err(UsageError(format!(
                "invalid {flag} {kv:?}: expected KEY=VALUE"
            )));
        }
        m.insert(k.to_owned(), v.to_owned());
    }
    Ok(m)
}

/// Docker's `filters` query value for repeated `-f KEY=VALUE` flags.
pub fn filters_json(filters: &[String]) -> Result<Option<String>, UsageError> {
    if filters.is_empty() {
        return Ok(None);
    }
    let mut all = Filters::default();
    for f in filters {
        let (k, v) = f.split_once('=').ok_or_else(|| {
            UsageError(format!(
                "invalid filter {f:?}: expected KEY=VALUE, e.g. name=demo"
            ))
        })?;
        all.insert(k, v);
    }
    Ok(Some(
        serde_json::to_string(&all).map_err(|e| UsageError(e.to_string()))?,
    ))
}

async fn ls(client: &Client, a: NetworkLsArgs, out: &Printer) -> anyhow::Result<Outcome> {
    let path = match filters_json(&a.filters)? {
        Some(f) => format!("/networks?filters={}", encode(&f)),
        None => "/networks".to_owned(),
    };
    let mut nets: Vec<Network> = client.get(&path, Target::None).await?;
    nets.sort_by(|x, y| x.name.cmp(&y.name));
    if out.format == Format::Json {
        out.json(&nets);
        return Ok(Outcome::Ok);
    }
    let id = |n: &Network| {
        if a.no_trunc {
            n.id.clone()
        } else {
            table::short_id(&n.id).to_owned()
        }
    };
    if a.quiet {
        for n in &nets {
            out.line(&id(n));
        }
        return Ok(Outcome::Ok);
    }
    out.text(&network_table(&nets, id));
    for n in nets.iter().filter(|n| n.waiting.is_some()) {
        out.warn(&format!(
            "network {} is waiting for its {} (a plugin not found yet): it comes back when the plugin appears",
            n.name,
            n.waiting.as_deref().unwrap_or_default()
        ));
    }
    Ok(Outcome::Ok)
}

/// The `cnm network ls` table.
pub fn network_table(nets: &[Network], id: impl Fn(&Network) -> String) -> String {
    let rows: Vec<Vec<String>> = nets
        .iter()
        .map(|n| vec![id(n), n.name.clone(), n.driver.clone(), n.scope.clone()])
        .collect();
    table::render(&["NETWORK ID", "NAME", "DRIVER", "SCOPE"], &rows)
}

async fn prune(
    client: &Client,
    force: bool,
    filters: &[String],
    out: &Printer,
) -> anyhow::Result<Outcome> {
    if !force {
        out.text("WARNING! This will remove all custom networks not used by at least one sandbox.\nAre you sure you want to continue? [y/N] ");
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        if !matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
            return Ok(Outcome::Ok);
        }
    }
    let path = match filters_json(filters)? {
        Some(f) => format!("/networks/prune?filters={}", encode(&f)),
        None => "/networks/prune".to_owned(),
    };
    let pruned: NetworkPruneResponse = client.post_empty(&path, Target::None).await?;
    match out.format {
        Format::Json => out.json(&pruned),
        Format::Table if !pruned.networks_deleted.is_empty() => {
            out.line("Deleted Networks:");
            for d in &pruned.networks_deleted {
                out.line(d);
            }
        }
        Format::Table => {}
    }
    Ok(Outcome::Ok)
}

/// `cnm connect`.
pub async fn connect(client: &Client, a: ConnectArgs, out: &Printer) -> anyhow::Result<Outcome> {
    let body = connect_body(
        &a.network,
        a.ip.as_deref(),
        a.ip6.as_deref(),
        &a.aliases,
        &a.publish,
    )?;
    let sandbox: Sandbox = client
        .post(
            &format!("/cnm/v1/sandboxes/{}/connect", encode(&a.sandbox)),
            &body,
            Target::Attach {
                network: &a.network,
                sandbox: &a.sandbox,
            },
        )
        .await?;
    if out.format == Format::Json {
        out.json(&sandbox);
    }
    Ok(Outcome::Ok)
}

/// The body of `POST /cnm/v1/sandboxes/{s}/connect`. The ports were parsed from `-p` by the
/// grammar the daemon parses them with again (cnm-types' one).
pub fn connect_body(
    network: &str,
    ip: Option<&str>,
    ip6: Option<&str>,
    aliases: &[String],
    publish: &[PortBinding],
) -> Result<SandboxConnectRequest, UsageError> {
    if let Some(ip) = ip {
        ip.parse::<std::net::Ipv4Addr>()
            .map_err(|_| UsageError(format!("invalid --ip {ip:?}: expected an IPv4 address")))?;
    }
    if let Some(ip) = ip6 {
        ip.parse::<std::net::Ipv6Addr>()
            .map_err(|_| UsageError(format!("invalid --ip6 {ip:?}: expected an IPv6 address")))?;
    }
    Ok(SandboxConnectRequest {
        network: network.to_owned(),
        ipv4_address: ip.map(str::to_owned),
        ipv6_address: ip6.map(str::to_owned),
        aliases: (!aliases.is_empty()).then(|| aliases.to_vec()),
        ports: publish.to_vec(),
        ..Default::default()
    })
}

/// `cnm disconnect` (docker's endpoint, which also knows `--force`).
pub async fn disconnect(client: &Client, a: DisconnectArgs) -> anyhow::Result<Outcome> {
    client
        .post::<IgnoredAny>(
            &format!("/networks/{}/disconnect", encode(&a.network)),
            &NetworkDisconnectRequest {
                container: a.sandbox.clone(),
                force: Some(a.force),
            },
            Target::Attach {
                network: &a.network,
                sandbox: &a.sandbox,
            },
        )
        .await?;
    Ok(Outcome::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::{Cli, Command};
    use clap::Parser as _;
    use serde_json::json;

    fn to_json(body: &impl serde::Serialize) -> serde_json::Value {
        serde_json::to_value(body).unwrap()
    }

    fn create_args(flags: &[&str]) -> NetworkCreateArgs {
        let argv = ["cnm", "network", "create"]
            .iter()
            .chain(flags)
            .chain(&["n"])
            .copied();
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Network(NetworkCommand::Create(a)) => *a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn create_body_has_dockers_shape() {
        let b = create_body(&create_args(&[
            "--subnet",
            "10.1.0.0/16",
            "--gateway",
            "10.1.0.1",
            "--ip-range",
            "10.1.5.0/24",
            "--aux-address",
            "r=10.1.0.2",
            "--label",
            "env=t",
            "-o",
            "k=v",
            "--internal",
        ]))
        .unwrap();
        assert_eq!(
            to_json(&b),
            json!({
                "Name": "n", "CheckDuplicate": true, "Driver": "bridge", "Internal": true,
                "Attachable": false, "EnableIPv6": false,
                "IPAM": {"Driver": "default", "Options": {}, "Config": [{
                    "Subnet": "10.1.0.0/16", "Gateway": "10.1.0.1", "IPRange": "10.1.5.0/24",
                    "AuxiliaryAddresses": {"r": "10.1.0.2"}}]},
                "Options": {"k": "v"}, "Labels": {"env": "t"},
            })
        );
    }

    #[test]
    fn allow_host_overlap_is_an_option_key() {
        let b = create_body(&create_args(&[
            "--subnet",
            "10.1.0.0/24",
            "--allow-host-overlap",
            "-o",
            "k=v",
        ]))
        .unwrap();
        assert_eq!(
            to_json(&b)["Options"],
            json!({"k": "v", "com.cnm.network.allow_host_overlap": "true"})
        );
        let b = create_body(&create_args(&["--subnet", "10.1.0.0/24"])).unwrap();
        assert_eq!(to_json(&b)["Options"], json!({}));
    }

    #[test]
    fn gateways_pair_with_their_subnet_in_any_order() {
        let b = create_body(&create_args(&[
            "--subnet",
            "10.1.0.0/24",
            "--subnet",
            "fd00:1::/64",
            "--ipv6",
            "--gateway",
            "fd00:1::1",
            "--gateway",
            "10.1.0.254",
        ]))
        .unwrap();
        let c = &b.ipam.as_ref().unwrap().config;
        assert_eq!(c[0].gateway, "10.1.0.254");
        assert_eq!(c[1].gateway, "fd00:1::1");
        assert_eq!(b.enable_ipv6, Some(true));
    }

    #[test]
    fn dockers_pairing_errors() {
        for (flags, want) in [
            (&["--gateway", "10.0.0.1"][..], "corresponding --subnet"),
            (
                &["--subnet", "10.0.0.0/24", "--gateway", "10.9.0.1"][..],
                "no matching --subnet for --gateway",
            ),
            (
                &["--subnet", "10.0.0.0/24", "--ip-range", "10.9.0.0/28"][..],
                "no matching --subnet for --ip-range",
            ),
            (
                &["--subnet", "10.0.0.0/16", "--subnet", "10.0.1.0/24"][..],
                "overlap",
            ),
            (&["--subnet", "10.0.0/24"][..], "invalid --subnet"),
            (
                &["--subnet", "10.0.0.0/24", "--aux-address", "x"][..],
                "NAME=IP",
            ),
            (
                &[
                    "--subnet",
                    "10.0.0.0/24",
                    "--subnet",
                    "10.1.0.0/24",
                    "--gateway",
                    "10.0.0.1",
                    "--gateway",
                    "10.0.0.2",
                ][..],
                "multiple gateways",
            ),
            (&["-o", "=v"][..], "KEY=VALUE"),
        ] {
            let e = create_body(&create_args(flags))
                .expect_err(want)
                .to_string();
            assert!(e.contains(want), "{flags:?}: {e}");
        }
    }

    #[test]
    fn filters_become_dockers_filter_map() {
        assert_eq!(filters_json(&[]).unwrap(), None);
        assert_eq!(
            filters_json(&["name=a".into(), "name=b".into(), "driver=bridge".into()]).unwrap(),
            Some(r#"{"driver":{"bridge":true},"name":{"a":true,"b":true}}"#.into())
        );
        assert!(filters_json(&["name".into()]).is_err());
    }

    #[test]
    fn connect_body_carries_parsed_ports_in_the_one_grammar() {
        let ports: Vec<PortBinding> = ["127.0.0.1:8080:80", "53/udp"]
            .iter()
            .map(|p| p.parse().unwrap())
            .collect();
        let b = connect_body("net", Some("10.0.0.5"), None, &["db".into()], &ports).unwrap();
        assert_eq!(
            to_json(&b),
            json!({"Network": "net", "IPv4Address": "10.0.0.5", "Aliases": ["db"],
                   "Ports": ["127.0.0.1:8080:80/tcp", "53/udp"]})
        );
        assert!(connect_body("n", Some("fd00::1"), None, &[], &[]).is_err());
        assert_eq!(
            to_json(&connect_body("n", None, None, &[], &[]).unwrap()),
            json!({"Network": "n"})
        );
    }

    #[test]
    fn network_table_rows() {
        let nets = vec![Network {
            id: "0123456789abcdef".into(),
            name: "demo".into(),
            driver: "bridge".into(),
            scope: "local".into(),
            ..Default::default()
        }];
        let t = network_table(&nets, |n| table::short_id(&n.id).to_owned());
        assert_eq!(
            t,
            "NETWORK ID     NAME      DRIVER    SCOPE\n0123456789ab   demo      bridge    local\n"
        );
    }
}
