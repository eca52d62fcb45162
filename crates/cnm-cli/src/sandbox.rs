//! `cnm sandbox …`: cnm's own sandbox API (a sandbox is docker's "container" minus the process).

use cnm_api::v1::{Sandbox, SandboxCreateRequest};

use crate::args::{Format, SandboxCommand, SandboxConfigArgs};
use crate::client::{Client, UsageError, encode};
use crate::hint::Target;
use crate::output::{Outcome, Printer};
use crate::table;

/// Runs one `cnm sandbox` subcommand.
pub async fn run(client: &Client, cmd: SandboxCommand, out: &Printer) -> anyhow::Result<Outcome> {
    match cmd {
        SandboxCommand::Create(a) => {
            let created = create(client, &a.name, &a.config).await?;
            match out.format {
                Format::Json => out.json(&created),
                Format::Table => out.line(&created.id),
            }
            Ok(Outcome::Ok)
        }
        SandboxCommand::Ls { quiet, no_trunc } => {
            let mut all: Vec<Sandbox> = client.get("/cnm/v1/sandboxes", Target::None).await?;
            all.sort_by(|x, y| x.name.cmp(&y.name));
            let id = |s: &Sandbox| {
                if no_trunc {
                    s.id.clone()
                } else {
                    table::short_id(&s.id).to_owned()
                }
            };
            if out.format == Format::Json {
                out.json(&all);
            } else if quiet {
                for s in &all {
                    out.line(&id(s));
                }
            } else {
                out.text(&sandbox_table(&all, id));
            }
            Ok(Outcome::Ok)
        }
        SandboxCommand::Inspect { sandboxes } => {
            Ok(client.inspect_each::<Sandbox>(&sandboxes, out, at).await)
        }
        SandboxCommand::Rm { sandboxes } => Ok(client.delete_each(&sandboxes, out, at).await),
    }
}

/// `POST /cnm/v1/sandboxes`.
pub async fn create(
    client: &Client,
    name: &str,
    config: &SandboxConfigArgs,
) -> anyhow::Result<Sandbox> {
    create_on(client, name, config, false).await
}

/// `POST /cnm/v1/sandboxes`, on the host's own network namespace when `host_namespace` (for
/// the `host` network).
pub async fn create_on(
    client: &Client,
    name: &str,
    config: &SandboxConfigArgs,
    host_namespace: bool,
) -> anyhow::Result<Sandbox> {
    let mut body = create_body(name, config)?;
    body.host_namespace = host_namespace.then_some(true);
    client
        .post("/cnm/v1/sandboxes", &body, Target::Sandbox(name))
        .await
}

/// `DELETE /cnm/v1/sandboxes/{name}`.
pub async fn remove(client: &Client, name: &str) -> anyhow::Result<()> {
    let (path, target) = at(name);
    client.delete(&path, target).await
}

/// The path of sandbox `name`, and what an error about it names.
fn at(name: &str) -> (String, Target<'_>) {
    (
        format!("/cnm/v1/sandboxes/{}", encode(name)),
        Target::Sandbox(name),
    )
}

/// The body of `POST /cnm/v1/sandboxes`; optional fields are left out when not given.
pub fn create_body(name: &str, c: &SandboxConfigArgs) -> Result<SandboxCreateRequest, UsageError> {
    let extra_hosts = c
        .add_hosts
        .iter()
        .map(|h| extra_host(h))
        .collect::<Result<Vec<_>, _>>()?;
    for d in &c.dns {
        d.parse::<std::net::IpAddr>()
            .map_err(|_| UsageError(format!("invalid --dns {d:?}: expected an IP address")))?;
    }
    let given = |v: &[String]| (!v.is_empty()).then(|| v.to_vec());
    Ok(SandboxCreateRequest {
        name: name.to_owned(),
        hostname: c.hostname.clone(),
        domainname: c.domainname.clone(),
        extra_hosts: given(&extra_hosts),
        dns: given(&c.dns),
        dns_search: given(&c.dns_search),
        dns_options: given(&c.dns_options),
        host_namespace: None,
    })
}

/// Normalises `--add-host NAME:IP` (or docker 25's `NAME=IP`) to the API's `name:ip`.
fn extra_host(h: &str) -> Result<String, UsageError> {
    let (name, ip) = h
        .split_once('=')
        .or_else(|| h.split_once(':'))
        .ok_or_else(|| UsageError(format!("invalid --add-host {h:?}: expected NAME:IP")))?;
    let ip = ip.trim_start_matches('[').trim_end_matches(']');
    if name.is_empty() || ip.parse::<std::net::IpAddr>().is_err() {
        return Err(UsageError(format!(
            "invalid --add-host {h:?}: expected NAME:IP"
        )));
    }
    Ok(format!("{name}:{ip}"))
}

/// The `cnm sandbox ls` table.
pub fn sandbox_table(all: &[Sandbox], id: impl Fn(&Sandbox) -> String) -> String {
    let rows: Vec<Vec<String>> = all
        .iter()
        .map(|s| {
            let nets: Vec<&str> = s.endpoints.iter().map(|e| e.network.as_str()).collect();
            let ips: Vec<&str> = s
                .endpoints
                .iter()
                .flat_map(|e| [e.ipv4_address.as_str(), e.ipv6_address.as_str()])
                .filter(|a| !a.is_empty())
                .collect();
            vec![id(s), s.name.clone(), nets.join(","), ips.join(",")]
        })
        .collect();
    table::render(&["SANDBOX ID", "NAME", "NETWORKS", "ADDRESSES"], &rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cnm_api::v1::SandboxEndpoint;
    use serde_json::json;

    fn to_json(body: &SandboxCreateRequest) -> serde_json::Value {
        serde_json::to_value(body).unwrap()
    }

    #[test]
    fn create_body_leaves_out_what_was_not_given() {
        let c = SandboxConfigArgs::default();
        assert_eq!(
            to_json(&create_body("s", &c).unwrap()),
            json!({"Name": "s"})
        );
        let c = SandboxConfigArgs {
            hostname: Some("h".into()),
            domainname: Some("example.com".into()),
            dns: vec!["1.1.1.1".into()],
            dns_search: vec!["x.org".into()],
            dns_options: vec!["ndots:2".into()],
            add_hosts: vec![
                "db:10.0.0.5".into(),
                "v6=fd00::1".into(),
                "w:[fd00::2]".into(),
            ],
        };
        assert_eq!(
            to_json(&create_body("s", &c).unwrap()),
            json!({"Name": "s", "Hostname": "h", "Domainname": "example.com", "Dns": ["1.1.1.1"],
                   "DnsSearch": ["x.org"], "DnsOptions": ["ndots:2"],
                   "ExtraHosts": ["db:10.0.0.5", "v6:fd00::1", "w:fd00::2"]})
        );
    }

    #[test]
    fn bad_hosts_and_dns_are_usage_errors() {
        for c in [
            SandboxConfigArgs {
                add_hosts: vec!["nocolon".into()],
                ..Default::default()
            },
            SandboxConfigArgs {
                add_hosts: vec!["db:notip".into()],
                ..Default::default()
            },
            SandboxConfigArgs {
                dns: vec!["dns.google".into()],
                ..Default::default()
            },
        ] {
            assert!(create_body("s", &c).is_err(), "{c:?}");
        }
    }

    #[test]
    fn table_lists_networks_and_addresses() {
        let endpoint = |network: &str, v4: &str, v6: &str| SandboxEndpoint {
            network: network.into(),
            ipv4_address: v4.into(),
            ipv6_address: v6.into(),
            ..Default::default()
        };
        let all = vec![Sandbox {
            id: "aaaabbbbccccdddd".into(),
            name: "web".into(),
            endpoints: vec![
                endpoint("a", "10.0.0.2/24", ""),
                endpoint("b", "10.1.0.2/24", "fd00::2/64"),
            ],
            ..Default::default()
        }];
        let t = sandbox_table(&all, |s| table::short_id(&s.id).to_owned());
        assert_eq!(
            t,
            "SANDBOX ID     NAME      NETWORKS   ADDRESSES\n\
             aaaabbbbcccc   web       a,b        10.0.0.2/24,10.1.0.2/24,fd00::2/64\n"
        );
    }
}
