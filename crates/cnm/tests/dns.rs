//! The controller's embedded DNS against the real kernel, in throwaway namespaces: containers on
//! a user-defined bridge network find each other by name and alias at 127.0.0.11 inside their
//! own namespace, over UDP and TCP, and never across networks; records follow joins, leaves,
//! deletes and restarts; other names go to the host's or the sandbox's upstream servers, which
//! the tests run themselves, and an internal network sends nothing out.

// The DNS client (asks from inside a namespace) and the counting test upstream are cnm-dns's
// own test fixtures, shared rather than copied.
#[path = "../../cnm-dns/tests/common/mod.rs"]
mod common;

use std::net::{IpAddr, SocketAddr};

use anyhow::{Context, Result, ensure};
use cnm::cnm_sandbox::NetNs;
use cnm::options::KEY_EMBEDDED_DNS;
use cnm::{Controller, EndpointOptions, JoinOption, Network, NetworkOptions, Sandbox};
use cnm_testkit::TestHost;
use common::{Ask, TestUpstream, addrs, ip, zone};
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

/// The host's upstream the tests run: on the test host's loopback, where the resolver asks
/// loopback upstreams from (the host namespace).
const HOST_UPSTREAM: &str = "127.0.0.53";

/// A test host whose resolv.conf names the test's own upstream (authoritative for
/// `outside.test`, NXDOMAIN for everything else), with search domains and options the sandboxes
/// must carry over.
struct Fix {
    host: TestHost,
    upstream: TestUpstream,
}

impl Fix {
    async fn new() -> Result<Fix> {
        let host = TestHost::new().await?;
        let upstream = TestUpstream::start(
            host.netns(),
            SocketAddr::new(ip(HOST_UPSTREAM), 53),
            zone(&[("outside.test", &["198.51.100.7"])]),
        )
        .await?;
        // Written before the first controller: the fixture keeps a resolv.conf that exists.
        std::fs::write(
            host.run_dir().join("host-resolv.conf"),
            format!("nameserver {HOST_UPSTREAM}\nsearch corp.test\noptions edns0\n"),
        )?;
        Ok(Fix { host, upstream })
    }

    async fn controller(&self) -> Result<Controller> {
        self.host.controller().await
    }
}

async fn network(ctl: &Controller, name: &str, subnet: &str) -> Result<Network> {
    Ok(ctl
        .new_network(
            "bridge",
            name,
            NetworkOptions::default().subnet(subnet.parse()?),
        )
        .await?)
}

/// A container (sandbox `name`) connected to `net` under its own name, with `aliases`.
async fn container(
    ctl: &Controller,
    net: &Network,
    name: &str,
    aliases: &[&str],
) -> Result<Sandbox> {
    let sb = ctl.new_sandbox(name, []).await?;
    connect(net, &sb, aliases).await?;
    Ok(sb)
}

async fn connect(net: &Network, sb: &Sandbox, aliases: &[&str]) -> Result<IpAddr> {
    let mut opts = EndpointOptions::default();
    for a in aliases {
        opts = opts.alias(*a);
    }
    let ep = net.connect(sb.container_id(), sb, opts, []).await?;
    Ok(IpAddr::V4(ep.ipv4().context("an IPv4 address")?.addr()))
}

/// Asks `name` (A) from inside `ns`; the response code and the addresses.
async fn ask(ns: &NetNs, name: &str, tcp: bool) -> Result<(ResponseCode, Vec<IpAddr>)> {
    let mut q = Ask::new(name, RecordType::A);
    if tcp {
        q = q.tcp();
    }
    let (m, _) = q.from(ns).await?;
    Ok((m.response_code, addrs(&m)))
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn containers_resolve_each_other_by_name_and_alias_over_udp_and_tcp_not_across_networks()
-> Result<()> {
    let fix = Fix::new().await?;
    let ctl = fix.controller().await?;
    let front = network(&ctl, "front", "10.91.0.0/24").await?;
    let back = network(&ctl, "back", "10.92.0.0/24").await?;
    let web = container(&ctl, &front, "web", &[]).await?;
    let db = ctl.new_sandbox("db", []).await?;
    let db_addr = connect(&front, &db, &["pg", "Primary"]).await?;
    let other = container(&ctl, &back, "other", &[]).await?;

    for tcp in [false, true] {
        for name in ["db", "pg", "primary", "DB.front", "pg.front"] {
            let (rc, got) = ask(web.netns(), name, tcp).await?;
            ensure!(
                rc == ResponseCode::NoError && got == [db_addr],
                "{name} (tcp {tcp}) from web: {rc} {got:?}"
            );
        }
        // Not across networks: `other` is on back only; its question goes upstream, which
        // does not know the name.
        let (rc, got) = ask(other.netns(), "db", tcp).await?;
        ensure!(
            rc == ResponseCode::NXDomain && got.is_empty(),
            "db from other: {rc} {got:?}"
        );
        let (rc, _) = ask(web.netns(), "other", tcp).await?;
        ensure!(rc == ResponseCode::NXDomain, "other from web: {rc}");
    }

    // The sandbox's resolv.conf names its resolver and keeps the host's search and options.
    let rc = std::fs::read_to_string(web.resolv_conf_path())?;
    ensure!(
        rc == "search corp.test\nnameserver 127.0.0.11\noptions edns0 ndots:0\n",
        "{rc:?}"
    );
    // Its hosts file (written in place at the join) has the container itself.
    let hosts = std::fs::read_to_string(db.hosts_path())?;
    ensure!(hosts.contains(&db_addr.to_string()), "{hosts}");

    // What inspect shows: the aliases as given, and every name the resolver answers.
    let (ep, _) = db.endpoints().into_iter().next().context("db's endpoint")?;
    ensure!(ep.options().aliases == ["pg", "Primary"]);
    ensure!(
        ep.dns_names() == ["db", "pg", "Primary"],
        "{:?}",
        ep.dns_names()
    );
    let stats = ctl.dns_resolver()?.context("the resolver is on")?.stats();
    ensure!(
        stats.sandbox_listeners == 3 && stats.endpoints == 3,
        "{stats:?}"
    );
    ctl.shutdown().await?;
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn a_name_is_gone_the_moment_its_endpoint_leaves_or_its_sandbox_goes() -> Result<()> {
    let fix = Fix::new().await?;
    let ctl = fix.controller().await?;
    let front = network(&ctl, "front", "10.93.0.0/24").await?;
    let web = container(&ctl, &front, "web", &[]).await?;
    let api = ctl.new_sandbox("api", []).await?;
    let api_addr = connect(&front, &api, &["backend"]).await?;
    let worker = container(&ctl, &front, "worker", &[]).await?;
    ensure!(ask(web.netns(), "backend", false).await?.1 == [api_addr]);

    // Leave: the very next query no longer finds it (nothing to wait for).
    api.disconnect(&front).await?;
    for name in ["api", "backend", "api.front"] {
        let (rc, got) = ask(web.netns(), name, false).await?;
        ensure!(
            rc == ResponseCode::NXDomain && got.is_empty(),
            "{name}: {rc} {got:?}"
        );
    }
    // Its last served endpoint gone, api's listener stops and its resolv.conf is the host's
    // again (loopback servers dropped, Docker's fallbacks instead).
    let rc = std::fs::read_to_string(api.resolv_conf_path())?;
    ensure!(!rc.contains("127.0.0.11") && rc.contains("8.8.8.8"), "{rc}");
    ensure!(
        ask(api.netns(), "web", false).await.is_err(),
        "nothing answers at 127.0.0.11 in a sandbox without served networks"
    );
    // And a connect brings it back.
    let api_addr = connect(&front, &api, &[]).await?;
    ensure!(ask(web.netns(), "api", true).await?.1 == [api_addr]);
    ensure!(ask(api.netns(), "web", true).await?.0 == ResponseCode::NoError);

    // Sandbox delete: its names go with it.
    worker.delete_with_endpoints().await?;
    let (rc, _) = ask(web.netns(), "worker", false).await?;
    ensure!(rc == ResponseCode::NXDomain, "worker after delete: {rc}");
    let stats = ctl.dns_resolver()?.context("on")?.stats();
    ensure!(
        stats.sandbox_listeners == 2 && stats.endpoints == 2,
        "{stats:?}"
    );
    ctl.shutdown().await?;
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn names_resolve_again_after_a_controller_restart() -> Result<()> {
    let fix = Fix::new().await?;
    let ctl = fix.controller().await?;
    let front = network(&ctl, "front", "10.94.0.0/24").await?;
    container(&ctl, &front, "web", &[]).await?;
    let db = ctl.new_sandbox("db", []).await?;
    let db_addr = connect(&front, &db, &["pg"]).await?;

    let ctl = fix.host.restart(ctl).await?;
    let web = ctl.sandbox_by_container_id("web")?;
    for tcp in [false, true] {
        for name in ["db", "pg", "db.front"] {
            let (rc, got) = ask(web.netns(), name, tcp).await?;
            ensure!(
                rc == ResponseCode::NoError && got == [db_addr],
                "{name} after restart: {rc} {got:?}"
            );
        }
    }
    let rc = std::fs::read_to_string(web.resolv_conf_path())?;
    ensure!(rc.contains("nameserver 127.0.0.11"), "{rc}");
    // And the adopted objects keep following joins and leaves.
    let db = ctl.sandbox_by_container_id("db")?;
    let front = ctl.network("front")?;
    db.disconnect(&front).await?;
    ensure!(ask(web.netns(), "pg", false).await?.0 == ResponseCode::NXDomain);
    ctl.shutdown().await?;
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn other_names_go_to_the_hosts_upstream_or_the_sandboxs_own_dns() -> Result<()> {
    let fix = Fix::new().await?;
    let ctl = fix.controller().await?;
    let front = network(&ctl, "front", "10.95.0.0/24").await?;
    let web = container(&ctl, &front, "web", &[]).await?;

    let before = fix.upstream.seen();
    for tcp in [false, true] {
        let (rc, got) = ask(web.netns(), "outside.test", tcp).await?;
        ensure!(
            rc == ResponseCode::NoError && got == [ip("198.51.100.7")],
            "outside.test (tcp {tcp}): {rc} {got:?}"
        );
    }
    // NXDOMAIN passes through.
    ensure!(ask(web.netns(), "nowhere.test", false).await?.0 == ResponseCode::NXDomain);
    ensure!(fix.upstream.seen() >= before + 3, "{}", fix.upstream.seen());

    // A sandbox's own --dns replaces the host's upstreams. A loopback one is the sandbox's own
    // loopback (Docker's rule): the test's second upstream runs inside the sandbox.
    let own = ctl
        .new_sandbox("own", [JoinOption::dns_server(ip("127.0.0.1"))])
        .await?;
    let _own_upstream = TestUpstream::start(
        own.netns(),
        SocketAddr::new(ip("127.0.0.1"), 53),
        zone(&[("inside.test", &["203.0.113.9"])]),
    )
    .await?;
    connect(&front, &own, &[]).await?;
    let rc = std::fs::read_to_string(own.resolv_conf_path())?;
    ensure!(
        rc.contains("nameserver 127.0.0.11") && !rc.contains("127.0.0.1\n"),
        "{rc}"
    );
    let host_seen = fix.upstream.seen();
    let (rc, got) = ask(own.netns(), "inside.test", false).await?;
    ensure!(
        rc == ResponseCode::NoError && got == [ip("203.0.113.9")],
        "inside.test: {rc} {got:?}"
    );
    ensure!(
        fix.upstream.seen() == host_seen,
        "the host's upstream was asked for a sandbox with its own servers"
    );
    // Local names still come first.
    ensure!(ask(own.netns(), "web", false).await?.0 == ResponseCode::NoError);
    ctl.shutdown().await?;
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn an_internal_network_forwards_nothing() -> Result<()> {
    let fix = Fix::new().await?;
    let ctl = fix.controller().await?;
    let vault = ctl
        .new_network(
            "bridge",
            "vault",
            NetworkOptions::default()
                .subnet("10.96.0.0/24".parse()?)
                .internal(true),
        )
        .await?;
    let a = container(&ctl, &vault, "a", &[]).await?;
    let b = ctl.new_sandbox("b", []).await?;
    let b_addr = connect(&vault, &b, &[]).await?;
    // Local names resolve; nothing else leaves (CVE-2024-29018).
    ensure!(ask(a.netns(), "b", false).await?.1 == [b_addr]);
    for tcp in [false, true] {
        let (rc, got) = ask(a.netns(), "outside.test", tcp).await?;
        ensure!(
            rc == ResponseCode::Refused && got.is_empty(),
            "outside.test from an internal network: {rc} {got:?}"
        );
    }
    ensure!(
        fix.upstream.seen() == 0,
        "the upstream saw {} queries from an internal network",
        fix.upstream.seen()
    );
    ctl.shutdown().await?;
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn a_network_without_embedded_dns_keeps_the_hosts_servers() -> Result<()> {
    let fix = Fix::new().await?;
    let ctl = fix.controller().await?;
    // As cnmd creates Docker's default bridge.
    let legacy = ctl
        .new_network(
            "bridge",
            "legacy",
            NetworkOptions::default()
                .subnet("10.97.0.0/24".parse()?)
                .driver_option(KEY_EMBEDDED_DNS, "false"),
        )
        .await?;
    let a = container(&ctl, &legacy, "a", &[]).await?;
    container(&ctl, &legacy, "b", &[]).await?;
    let rc = std::fs::read_to_string(a.resolv_conf_path())?;
    ensure!(!rc.contains("127.0.0.11"), "{rc}");
    ensure!(
        ask(a.netns(), "b", false).await.is_err(),
        "no resolver listens in a sandbox on a network without embedded DNS"
    );
    let (ep, _) = a.endpoints().into_iter().next().context("a's endpoint")?;
    ensure!(ep.dns_names().is_empty(), "{:?}", ep.dns_names());
    // Bad values are refused before anything is made.
    let err = ctl
        .new_network(
            "bridge",
            "bad",
            NetworkOptions::default().driver_option(KEY_EMBEDDED_DNS, "maybe"),
        )
        .await
        .expect_err("a non-boolean is refused");
    ensure!(
        err.to_string().contains(KEY_EMBEDDED_DNS) && err.to_string().contains("maybe"),
        "{err}"
    );
    ctl.shutdown().await?;
    Ok(())
}

/// A PTR question's name for an IPv4 address.
fn reverse_name(ip: IpAddr) -> String {
    let IpAddr::V4(v4) = ip else {
        unreachable!("the tests use IPv4")
    };
    let [a, b, c, d] = v4.octets();
    format!("{d}.{c}.{b}.{a}.in-addr.arpa")
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn the_host_resolves_a_container_by_name_and_no_container_reaches_that_resolver() -> Result<()>
{
    let fix = Fix::new().await?;
    // A host resolver anywhere but loopback is refused before anything is made.
    let err = fix
        .host
        .controller_builder()?
        .host_dns("192.0.2.1:53".parse()?)
        .build()
        .await
        .expect_err("a non-loopback host resolver is refused");
    ensure!(
        err.kind() == cnm::ErrorKind::InvalidInput && err.to_string().contains("192.0.2.1:53"),
        "{err}"
    );
    // The test host's namespace plays the host; port 0: any free port on 127.0.0.153.
    let ctl = fix
        .host
        .controller_builder()?
        .host_dns("127.0.0.153:0".parse()?)
        .build()
        .await?;
    let at = ctl.host_dns().context("the host resolver runs")?;
    ensure!(at.ip() == ip("127.0.0.153") && at.port() != 0, "{at}");
    let front = network(&ctl, "front", "10.98.0.0/24").await?;
    let web = ctl.new_sandbox("web", []).await?;
    let web_addr = connect(&front, &web, &["www"]).await?;

    // From the host: name.network and name.network.cnm, alias too, UDP and TCP, and PTR.
    for tcp in [false, true] {
        for name in ["web.front", "WWW.front", "web.front.cnm"] {
            let mut q = Ask::new(name, RecordType::A).server(at);
            if tcp {
                q = q.tcp();
            }
            let (m, _) = q.from(fix.host.netns()).await?;
            ensure!(
                m.response_code == ResponseCode::NoError && addrs(&m) == [web_addr],
                "{name} (tcp {tcp}) from the host: {} {:?}",
                m.response_code,
                addrs(&m)
            );
        }
    }
    let (m, _) = Ask::new(&reverse_name(web_addr), RecordType::PTR)
        .server(at)
        .from(fix.host.netns())
        .await?;
    let ptr = m.answers.first().map(|r| r.data.to_string());
    ensure!(
        m.response_code == ResponseCode::NoError
            && ptr.as_deref().is_some_and(|p| p.starts_with("web.front")),
        "PTR of {web_addr}: {} {ptr:?}",
        m.response_code
    );
    // A bare name is no cnm name on the host; a name of a network without it is NXDOMAIN; any
    // other name is refused, never forwarded (the host's upstream sees nothing).
    for (name, want) in [
        ("web", ResponseCode::Refused),
        ("outside.test", ResponseCode::Refused),
        ("nobody.front", ResponseCode::NXDomain),
        ("nobody.front.cnm", ResponseCode::NXDomain),
    ] {
        let (m, _) = Ask::new(name, RecordType::A)
            .server(at)
            .from(fix.host.netns())
            .await?;
        ensure!(m.response_code == want, "{name}: {}", m.response_code);
    }
    ensure!(fix.upstream.seen() == 0, "the host resolver forwarded");
    // The name follows the endpoint.
    web.disconnect(&front).await?;
    let (m, _) = Ask::new("web.front", RecordType::A)
        .server(at)
        .from(fix.host.netns())
        .await?;
    ensure!(
        m.response_code == ResponseCode::NXDomain,
        "{}",
        m.response_code
    );
    connect(&front, &web, &[]).await?;

    // From a container, nothing answers: not at the host resolver's address (the container's
    // own loopback), not at the host's address on the network (nothing listens there).
    let gateway = SocketAddr::new(ip("10.98.0.1"), at.port());
    for server in [at, gateway] {
        for tcp in [false, true] {
            let mut q = Ask::new("web.front", RecordType::A)
                .server(server)
                .timeout(std::time::Duration::from_millis(500));
            if tcp {
                q = q.tcp();
            }
            ensure!(
                q.from(web.netns()).await.is_err(),
                "a container got an answer from {server} (tcp {tcp})"
            );
        }
    }
    ctl.shutdown().await?;
    Ok(())
}

/// A long-running process inside a sandbox, started before the connects the test makes: it
/// sees the sandbox's resolv.conf and hosts file at /etc (bind mounts, as a container runtime
/// makes them, so only in-place updates reach it) and answers each name written to its stdin
/// with one line from glibc's getaddrinfo: `name addr…` or `name ERR code`.
struct Resolving {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
}

const GETADDRINFO_LOOP: &str = r#"
import socket, sys
for line in sys.stdin:
    name = line.strip()
    try:
        got = sorted({a[4][0] for a in socket.getaddrinfo(name, None, socket.AF_INET, socket.SOCK_STREAM)})
        print(name, *got, flush=True)
    except socket.gaierror as e:
        print(name, "ERR", e.errno, flush=True)
"#;

impl Resolving {
    fn start(sb: &Sandbox) -> Result<Resolving> {
        use std::io::BufRead;
        use std::process::Stdio;
        let mut child = std::process::Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(
                "mount --bind \"$1\" /etc/resolv.conf && mount --bind \"$2\" /etc/hosts && \
                 exec nsenter --net=\"$3\" python3 -u -c \"$4\"",
            )
            .arg("sh")
            .arg(sb.resolv_conf_path())
            .arg(sb.hosts_path())
            .arg(sb.key())
            .arg(GETADDRINFO_LOOP)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("start the resolving process (unshare, nsenter, python3)")?;
        let stdin = child.stdin.take().context("stdin")?;
        let stdout = child.stdout.take().context("stdout")?;
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        // Its answers, line by line, through a channel the test waits on with a bound.
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Ok(Resolving {
            child,
            stdin,
            lines,
        })
    }

    /// Asks the running process for `name`; its addresses, or None when it could not resolve.
    async fn resolve(&mut self, name: &str) -> Result<Option<Vec<IpAddr>>> {
        use std::io::Write;
        writeln!(self.stdin, "{name}")?;
        self.stdin.flush()?;
        let line = tokio::time::timeout(std::time::Duration::from_secs(20), self.lines.recv())
            .await
            .with_context(|| format!("the process did not answer {name} within 20 s"))?
            .context("the process exited")?;
        let mut words = line.split_whitespace();
        ensure!(words.next() == Some(name), "answer {line:?} for {name}");
        let rest: Vec<&str> = words.collect();
        if rest.first() == Some(&"ERR") {
            return Ok(None);
        }
        Ok(Some(rest.iter().map(|s| ip(s)).collect()))
    }
}

impl Drop for Resolving {
    fn drop(&mut self) {
        // The test's own child: killed and reaped.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn inode(path: &std::path::Path) -> Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata(path)?.ino())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn a_process_started_before_a_connect_resolves_the_new_peer_after_it() -> Result<()> {
    let fix = Fix::new().await?;
    let ctl = fix.controller().await?;
    let front = network(&ctl, "front", "10.99.0.0/24").await?;
    let back = network(&ctl, "back", "10.100.0.0/24").await?;
    let other = container(&ctl, &back, "other", &[]).await?;
    let other_addr = other.endpoints()[0].0.ipv4().context("v4")?.addr();
    let web = ctl
        .new_sandbox("web", [JoinOption::hostname("web")])
        .await?;
    let (hosts_ino, resolv_ino) = (inode(&web.hosts_path())?, inode(&web.resolv_conf_path())?);

    // Started while web is on no network at all.
    let mut p = Resolving::start(&web)?;
    ensure!(
        p.resolve("web").await?.is_none(),
        "web resolved before it had an address"
    );

    // web's first connect: its hosts file gets its address and its resolv.conf the embedded
    // resolver, both in place; the running process sees both.
    let web_addr = connect(&front, &web, &[]).await?;
    ensure!(
        p.resolve("web").await? == Some(vec![web_addr]),
        "own name from the hosts file"
    );
    ensure!(p.resolve("db").await?.is_none(), "db before it exists");

    // A peer connects after: the same process resolves it at its next question.
    let db = ctl.new_sandbox("db", []).await?;
    let db_addr = connect(&front, &db, &["pg"]).await?;
    ensure!(p.resolve("db").await? == Some(vec![db_addr]));
    ensure!(p.resolve("pg.front").await? == Some(vec![db_addr]));

    // web joins a second network: its peers there resolve too, through the same listener.
    ensure!(p.resolve("other").await?.is_none(), "other across networks");
    connect(&back, &web, &[]).await?;
    ensure!(p.resolve("other").await? == Some(vec![IpAddr::V4(other_addr)]));

    // And a leave takes the name away at once.
    db.disconnect(&front).await?;
    ensure!(p.resolve("db").await?.is_none(), "db after its leave");
    ensure!(
        inode(&web.hosts_path())? == hosts_ino && inode(&web.resolv_conf_path())? == resolv_ino,
        "hosts or resolv.conf was replaced, not updated in place"
    );
    drop(p);
    ctl.shutdown().await?;
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn a_networks_own_dns_servers_are_the_upstream_of_its_sandboxes() -> Result<()> {
    use cnm::options::KEY_DNS_SERVERS;
    let fix = Fix::new().await?;
    let outside = fix.host.outside().await?;
    // The network's upstream, in a namespace of its own, reached from the host's.
    let corp_dns = TestUpstream::start(
        outside.netns(),
        SocketAddr::new(outside.addr_v4(), 53),
        zone(&[("intranet.corp", &["203.0.113.5"])]),
    )
    .await?;
    let ctl = fix.controller().await?;
    let corp = ctl
        .new_network(
            "bridge",
            "corp",
            NetworkOptions::default()
                .subnet("10.101.0.0/24".parse()?)
                .driver_option(KEY_DNS_SERVERS, outside.addr_v4().to_string()),
        )
        .await?;
    let plain = network(&ctl, "plain", "10.102.0.0/24").await?;
    let a = container(&ctl, &corp, "a", &[]).await?;
    let b = container(&ctl, &plain, "b", &[]).await?;

    // On corp: the network's server, not the host's.
    for tcp in [false, true] {
        let (rc, got) = ask(a.netns(), "intranet.corp", tcp).await?;
        ensure!(
            rc == ResponseCode::NoError && got == [ip("203.0.113.5")],
            "intranet.corp (tcp {tcp}) on corp: {rc} {got:?}"
        );
    }
    ensure!(ask(a.netns(), "outside.test", false).await?.0 == ResponseCode::NXDomain);
    ensure!(
        fix.upstream.seen() == 0,
        "the host's upstream was asked for corp"
    );
    ensure!(corp_dns.seen() >= 3, "{}", corp_dns.seen());
    // Local names still come first.
    ensure!(ask(a.netns(), "a", false).await?.0 == ResponseCode::NoError);

    // On a network without servers of its own: the host's.
    let corp_seen = corp_dns.seen();
    let (rc, got) = ask(b.netns(), "outside.test", false).await?;
    ensure!(
        rc == ResponseCode::NoError && got == [ip("198.51.100.7")],
        "{rc} {got:?}"
    );
    ensure!(ask(b.netns(), "intranet.corp", false).await?.0 == ResponseCode::NXDomain);
    ensure!(
        corp_dns.seen() == corp_seen,
        "plain's query reached corp's server"
    );

    // A sandbox's own --dns wins over the network's (a loopback one is its own loopback).
    let own = ctl
        .new_sandbox("own", [JoinOption::dns_server(ip("127.0.0.1"))])
        .await?;
    let _own_dns = TestUpstream::start(
        own.netns(),
        SocketAddr::new(ip("127.0.0.1"), 53),
        zone(&[("intranet.corp", &["192.0.2.99"])]),
    )
    .await?;
    connect(&corp, &own, &[]).await?;
    let (rc, got) = ask(own.netns(), "intranet.corp", false).await?;
    ensure!(
        rc == ResponseCode::NoError && got == [ip("192.0.2.99")],
        "{rc} {got:?}"
    );
    ensure!(
        corp_dns.seen() == corp_seen,
        "the network's server was asked over --dns"
    );

    // The servers survive a restart (they are the network's option).
    let ctl = fix.host.restart(ctl).await?;
    let a = ctl.sandbox_by_container_id("a")?;
    let (rc, got) = ask(a.netns(), "intranet.corp", false).await?;
    ensure!(
        rc == ResponseCode::NoError && got == [ip("203.0.113.5")],
        "after restart: {rc} {got:?}"
    );
    ctl.shutdown().await?;
    Ok(())
}
