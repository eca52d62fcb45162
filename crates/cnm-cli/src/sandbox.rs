//! `cnm sandbox …`: cnm's own sandbox API (a sandbox is docker's "container" minus the process).

use serde_json::{Map, Value, json};

use crate::args::{Format, SandboxCommand, SandboxConfigArgs};
use crate::client::{Client, UsageError, encode};
use crate::hint::Target;
use crate::network::str_of;
use crate::output::{Outcome, Printer};
use crate::table;

/// Runs one `cnm sandbox` subcommand.
pub async fn run(client: &Client, cmd: SandboxCommand, out: &Printer) -> anyhow::Result<Outcome> {
    match cmd {
        SandboxCommand::Create(a) => {
            let v = create(client, &a.name, &a.config).await?;
            match out.format {
                Format::Json => out.json(&v),
                Format::Table => out.line(str_of(&v, "Id")),
            }
            Ok(Outcome::Ok)
        }
        SandboxCommand::Ls { quiet, no_trunc } => {
            let v = client.get("/cnm/v1/sandboxes", Target::None).await?;
            let mut all = v.as_array().cloned().unwrap_or_default();
            all.sort_by(|x, y| str_of(x, "Name").cmp(str_of(y, "Name")));
            let id = |s: &Value| {
                let id = str_of(s, "Id");
                if no_trunc {
                    id.to_owned()
                } else {
                    table::short_id(id).to_owned()
                }
            };
            if out.format == Format::Json {
                out.json(&Value::Array(all));
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
            let mut found = Vec::new();
            let mut outcome = Outcome::Ok;
            for s in &sandboxes {
                match client
                    .get(
                        &format!("/cnm/v1/sandboxes/{}", encode(s)),
                        Target::Sandbox(s),
                    )
                    .await
                {
                    Ok(v) => found.push(v),
                    Err(e) => outcome = out.failed(&e),
                }
            }
            out.json(&Value::Array(found));
            Ok(outcome)
        }
        SandboxCommand::Rm { sandboxes } => {
            let mut removed = Vec::new();
            let mut outcome = Outcome::Ok;
            for s in &sandboxes {
                match remove(client, s).await {
                    Ok(()) => {
                        if out.format == Format::Table {
                            out.line(s);
                        }
                        removed.push(Value::from(s.as_str()));
                    }
                    Err(e) => outcome = out.failed(&e),
                }
            }
            if out.format == Format::Json {
                out.json(&Value::Array(removed));
            }
            Ok(outcome)
        }
    }
}

/// `POST /cnm/v1/sandboxes`.
pub async fn create(
    client: &Client,
    name: &str,
    config: &SandboxConfigArgs,
) -> anyhow::Result<Value> {
    let body = create_body(name, config)?;
    client
        .post("/cnm/v1/sandboxes", &body, Target::Sandbox(name))
        .await
}

/// `DELETE /cnm/v1/sandboxes/{name}`.
pub async fn remove(client: &Client, name: &str) -> anyhow::Result<()> {
    client
        .delete(
            &format!("/cnm/v1/sandboxes/{}", encode(name)),
            Target::Sandbox(name),
        )
        .await
}

/// The body of `POST /cnm/v1/sandboxes`; optional fields are left out when not given.
pub fn create_body(name: &str, c: &SandboxConfigArgs) -> Result<Value, UsageError> {
    let mut b = Map::new();
    b.insert("Name".into(), Value::from(name));
    if let Some(h) = &c.hostname {
        b.insert("Hostname".into(), Value::from(h.as_str()));
    }
    if let Some(d) = &c.domainname {
        b.insert("Domainname".into(), Value::from(d.as_str()));
    }
    if !c.add_hosts.is_empty() {
        let hosts = c
            .add_hosts
            .iter()
            .map(|h| extra_host(h))
            .collect::<Result<Vec<_>, _>>()?;
        b.insert("ExtraHosts".into(), json!(hosts));
    }
    for d in &c.dns {
        d.parse::<std::net::IpAddr>()
            .map_err(|_| UsageError(format!("invalid --dns {d:?}: expected an IP address")))?;
    }
    for (key, vals) in [
        ("Dns", &c.dns),
        ("DnsSearch", &c.dns_search),
        ("DnsOptions", &c.dns_options),
    ] {
        if !vals.is_empty() {
            b.insert(key.into(), json!(vals));
        }
    }
    Ok(Value::Object(b))
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
pub fn sandbox_table(all: &[Value], id: impl Fn(&Value) -> String) -> String {
    let rows: Vec<Vec<String>> = all
        .iter()
        .map(|s| {
            let eps = s
                .get("Endpoints")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let nets: Vec<&str> = eps.iter().map(|e| str_of(e, "Network")).collect();
            let ips: Vec<&str> = eps
                .iter()
                .flat_map(|e| [str_of(e, "IPv4Address"), str_of(e, "IPv6Address")])
                .filter(|a| !a.is_empty())
                .collect();
            vec![
                id(s),
                str_of(s, "Name").to_owned(),
                nets.join(","),
                ips.join(","),
            ]
        })
        .collect();
    table::render(&["SANDBOX ID", "NAME", "NETWORKS", "ADDRESSES"], &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_body_leaves_out_what_was_not_given() {
        let c = SandboxConfigArgs::default();
        assert_eq!(create_body("s", &c).unwrap(), json!({"Name": "s"}));
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
            create_body("s", &c).unwrap(),
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
        let all = vec![
            json!({"Id": "aaaabbbbccccdddd", "Name": "web", "Endpoints": [
            {"Network": "a", "IPv4Address": "10.0.0.2/24", "IPv6Address": ""},
            {"Network": "b", "IPv4Address": "10.1.0.2/24", "IPv6Address": "fd00::2/64"}]}),
        ];
        let t = sandbox_table(&all, |s| table::short_id(str_of(s, "Id")).to_owned());
        assert_eq!(
            t,
            "SANDBOX ID     NAME      NETWORKS   ADDRESSES\n\
             aaaabbbbcccc   web       a,b        10.0.0.2/24,10.1.0.2/24,fd00::2/64\n"
        );
    }
}
