//! Privileged: a sandbox holds no descriptor of its namespace (issue 15: at 10,000 sandboxes the
//! descriptor limit ended the run first). 200 sandboxes, each publishing one port, grow the
//! process's descriptor table by their 200 port guards (one dual-stack socket each, which still
//! keeps the port from the host in both families) and a bounded rest (the pooled netlink
//! sockets, the firewall's), not by 200 namespace descriptors more; they work (traffic between
//! the first and the last), and a restart that restores them all holds no more either.
//!
//! A test binary of its own: the descriptor table and the netlink pool are the process's, so
//! no other test may use them meanwhile.

#![allow(clippy::print_stderr)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use cnm::cnm_sandbox::set_pool_limit;
use cnm::options::KEY_EMBEDDED_DNS;
use cnm::{EndpointOptions, NetworkOptions};
use cnm_testkit::server::TcpEchoServer;
use cnm_testkit::{TestHost, probe};

const SANDBOXES: usize = 200;
/// The pool of sandboxes' netlink sockets, kept small here so that it cannot hide 200 namespace
/// descriptors.
const POOL: usize = 4;
/// Descriptors beyond the ports and the pool a controller may open along the way (its host
/// netlink sockets, link watch, firewall's sockets, the store): a constant, far below 200.
const REST: usize = 40;

fn open_fds() -> Result<usize> {
    Ok(std::fs::read_dir("/proc/self/fd")?.count())
}

/// What the process's descriptors are, counted by kind (`socket`, `net` for a namespace, …),
/// for the failure message.
fn fd_kinds() -> String {
    let mut kinds = std::collections::BTreeMap::<String, usize>::new();
    for entry in std::fs::read_dir("/proc/self/fd")
        .into_iter()
        .flatten()
        .flatten()
    {
        let target = std::fs::read_link(entry.path()).unwrap_or_default();
        let shown = target.to_string_lossy().into_owned();
        let kind = shown.split(':').next().unwrap_or("?").to_owned();
        *kinds.entry(kind).or_default() += 1;
    }
    format!("{kinds:?}")
}

/// Waits (bounded) until the process holds at most `most` descriptors: a pooled connection's
/// task drops its socket once the runtime polls it again.
async fn fds_at_most(most: usize) -> Result<usize> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = open_fds()?;
        if n <= most || Instant::now() > deadline {
            return Ok(n);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: run cargo xtask test"]
async fn two_hundred_sandboxes_hold_no_namespace_descriptor_each() -> Result<()> {
    set_pool_limit(POOL);
    let host = TestHost::new().await?;
    // The default store: the durable one, so that the restart below restores the sandboxes.
    let ctl = host.controller().await?;
    // Without the embedded DNS: its two listener sockets per sandbox are not what is counted.
    let opts = NetworkOptions::default()
        .subnet("10.77.0.0/16".parse()?)
        .driver_option(KEY_EMBEDDED_DNS, "false");
    let net = ctl.new_network("bridge", "fds", opts).await?;
    let before = open_fds()?;
    let mut eps = Vec::with_capacity(SANDBOXES);
    for i in 0..SANDBOXES {
        let opts = EndpointOptions::default().publish(format!("{}:80/tcp", 21000 + i).parse()?);
        let ep = net.create_endpoint(&format!("c{i}"), opts).await?;
        ep.join(&format!("c{i}"), []).await?;
        eps.push(ep);
    }
    // One port guard per published port (as docker-proxy's reservation), nothing per namespace.
    let bound = before + SANDBOXES + POOL + REST;
    let after = fds_at_most(bound).await?;
    eprintln!(
        "{SANDBOXES} sandboxes: {} descriptors more ({})",
        after.saturating_sub(before),
        fd_kinds()
    );
    ensure!(
        after <= bound,
        "{SANDBOXES} sandboxes with one published port each: {} descriptors more than before \
         (at most {} expected: {SANDBOXES} port guards, {POOL} pooled netlink sockets, {REST} else); \
         held now: {}",
        after - before,
        SANDBOXES + POOL + REST,
        fd_kinds()
    );

    // One socket per port still holds it in both families: the host can bind it on neither.
    for addr in [
        IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    ] {
        let refused = host
            .netns()
            .run(move || {
                TcpListener::bind(SocketAddr::new(addr, 21000))
                    .err()
                    .map(|e| e.kind())
            })
            .await?;
        ensure!(
            refused == Some(std::io::ErrorKind::AddrInUse),
            "published port 21000/tcp bound by the host on {addr}: {refused:?}"
        );
    }

    // Their namespaces are opened by path when used: the first reaches the last.
    let last_name = format!("c{}", SANDBOXES - 1);
    let last_ip = |ctl: &cnm::Controller| -> Result<IpAddr> {
        let ep = ctl.network("fds")?.endpoint(&last_name)?;
        Ok(IpAddr::V4(ep.ipv4().expect("endpoint has IPv4").addr()))
    };
    {
        let (first, last) = (
            ctl.sandbox_by_container_id("c0")?,
            ctl.sandbox_by_container_id(&last_name)?,
        );
        let _echo =
            TcpEchoServer::start(last.netns(), IpAddr::V4(Ipv4Addr::UNSPECIFIED), 80).await?;
        probe::tcp(first.netns(), last_ip(&ctl)?, 80).await?;
    }
    drop((eps, net));

    // A restart restores all 200 (opens each namespace, adopts its interface) and holds no more.
    let before_restart = open_fds()?;
    let ctl = host.restart(ctl).await?;
    let restored = ctl.network("fds")?.endpoints().len();
    ensure!(
        restored == SANDBOXES,
        "{restored} endpoints after the restart, not {SANDBOXES}"
    );
    let after_restart = fds_at_most(before_restart + POOL + REST).await?;
    ensure!(
        after_restart <= before_restart + POOL + REST,
        "the restart left {} descriptors more than before it (at most {} expected); held now: {}",
        after_restart.saturating_sub(before_restart),
        POOL + REST,
        fd_kinds()
    );
    let (first, last) = (
        ctl.sandbox_by_container_id("c0")?,
        ctl.sandbox_by_container_id(&last_name)?,
    );
    let _echo = TcpEchoServer::start(last.netns(), IpAddr::V4(Ipv4Addr::UNSPECIFIED), 80).await?;
    probe::tcp(first.netns(), last_ip(&ctl)?, 80).await?;
    Ok(())
}
