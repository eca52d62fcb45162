//! Privileged: the pool of sandboxes' netlink sockets keeps a bounded number open, and a handle
//! whose socket it closed opens it again, still in its own namespace. A test binary of its own:
//! the pool and the descriptor table are the process's, so no other test may use them meanwhile.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use cnm_sandbox::{LinkKind, LinkSpec, NetNs, Netlink, pool_open, set_pool_limit};
use cnm_types::IfName;

fn name(s: &str) -> IfName {
    s.parse().expect("valid test interface name")
}

fn open_fds() -> Result<usize> {
    Ok(std::fs::read_dir("/proc/self/fd")?.count())
}

/// Waits (bounded) until the process holds at most `most` descriptors: a closed connection's
/// task drops its socket once the runtime polls it again.
async fn fds_at_most(most: usize) -> Result<usize> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = open_fds()?;
        if n <= most || Instant::now() > deadline {
            return Ok(n);
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: run cargo xtask test"]
async fn pooled_netlink_sockets_stay_bounded_and_reopen_in_their_namespace() -> Result<()> {
    const LIMIT: usize = 4;
    const SANDBOXES: usize = 12;
    set_pool_limit(LIMIT);
    let mut namespaces = Vec::new();
    for _ in 0..SANDBOXES {
        namespaces.push(NetNs::create_anonymous().await?);
    }
    let before = open_fds()?;
    let handles: Vec<Netlink> = namespaces.iter().map(Netlink::on_demand).collect();
    ensure!(
        handles.iter().all(|h| !h.is_open()),
        "an on-demand handle opened a socket before its first request"
    );
    ensure!(
        open_fds()? == before,
        "on-demand handles opened descriptors"
    );
    for (i, nl) in handles.iter().enumerate() {
        // A link only this namespace has, made through its own handle.
        nl.create_link(&LinkSpec::new(
            name(&format!("pool{i}a")),
            LinkKind::Veth {
                peer_name: name(&format!("pool{i}b")),
                peer_ns: None,
                peer_mac: None,
                peer_mtu: None,
                peer_up: false,
            },
        ))
        .await
        .with_context(|| format!("create a veth through handle {i}"))?;
    }
    let open: Vec<usize> = (0..SANDBOXES).filter(|i| handles[*i].is_open()).collect();
    ensure!(
        open == (SANDBOXES - LIMIT..SANDBOXES).collect::<Vec<_>>(),
        "the {LIMIT} most recently opened handles stay open, the others are closed: open {open:?}"
    );
    ensure!(pool_open() <= LIMIT, "{} pooled sockets open", pool_open());
    let after = fds_at_most(before + LIMIT).await?;
    ensure!(
        after <= before + LIMIT,
        "{SANDBOXES} sandboxes used with a pool of {LIMIT}: {} descriptors more than before",
        after - before
    );
    // The first handle's socket was closed: its next request opens one again, in its namespace.
    ensure!(!handles[0].is_open(), "handle 0 still open");
    let own = handles[0].link("pool0a").await?;
    ensure!(
        own.is_some(),
        "handle 0 reopened elsewhere: pool0a not found"
    );
    let other = handles[0].link(&format!("pool{}a", SANDBOXES - 1)).await?;
    ensure!(other.is_none(), "handle 0 sees another namespace's link");
    ensure!(handles[0].is_open(), "handle 0 not open after its request");
    ensure!(pool_open() <= LIMIT, "{} pooled sockets open", pool_open());
    // Reopening it closed the oldest open one.
    ensure!(
        !handles[SANDBOXES - LIMIT].is_open(),
        "the oldest open handle was not closed when handle 0 reopened"
    );
    Ok(())
}
