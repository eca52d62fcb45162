//! 64 operations at once: of racing creations of one name exactly one wins; racing joins of one
//! endpoint, one wins; 64 containers attach and detach in parallel and leave nothing behind.

use std::collections::BTreeSet;
use std::sync::Arc;

use futures::future::join_all;

use super::{World, ep_opts};
use crate::NetworkOptions;

const N: usize = 64;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_creations_of_one_name_make_one_object() {
    let w = Arc::new(World::new().await);
    let results = join_all((0..N).map(|i| {
        let w = w.clone();
        tokio::spawn(async move {
            w.ctl
                .new_network(
                    "fake",
                    "same",
                    NetworkOptions::default().subnet(format!("10.80.{i}.0/24").parse().unwrap()),
                )
                .await
        })
    }))
    .await;
    let won: Vec<_> = results
        .into_iter()
        .map(|r| r.unwrap())
        .filter(Result::is_ok)
        .collect();
    assert_eq!(won.len(), 1);
    assert_eq!(w.ctl.networks().len(), 1);
    assert_eq!(w.driver.state().networks.len(), 1);
    // The losers' pools went back: exactly one pool is held.
    assert_eq!(
        w.ctl.ipam().unwrap().snapshot().await.unwrap().pools.len(),
        1
    );

    let net = w.ctl.network("same").unwrap();
    let results = join_all((0..N).map(|_| {
        let net = net.clone();
        tokio::spawn(async move { net.create_endpoint("ep", ep_opts()).await })
    }))
    .await;
    assert_eq!(
        results
            .into_iter()
            .filter(|r| matches!(r, Ok(Ok(_))))
            .count(),
        1
    );
    let ep = net.endpoint("ep").unwrap();
    let results = join_all((0..N).map(|i| {
        let ep = ep.clone();
        tokio::spawn(async move { ep.join(&format!("c{i}"), []).await })
    }))
    .await;
    let joined: Vec<_> = results
        .into_iter()
        .filter_map(|r| r.unwrap().ok())
        .collect();
    assert_eq!(joined.len(), 1, "one endpoint, one sandbox");
    // The losers' sandboxes (made for their join) are gone again.
    assert_eq!(w.ctl.sandboxes().len(), 1);
    assert_eq!(w.kernel.state().namespaces.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_containers_attach_and_detach_at_once() {
    let w = Arc::new(World::new().await);
    let empty = w.snapshot().await;
    let net = w.net("n", "10.81.0.0/24").await;
    let attached = join_all((0..N).map(|i| {
        let net = net.clone();
        tokio::spawn(async move {
            let ep = net.create_endpoint(&format!("e{i}"), ep_opts()).await?;
            let sb = ep.join(&format!("c{i}"), []).await?;
            Ok::<_, crate::CoreError>((ep, sb))
        })
    }))
    .await
    .into_iter()
    .map(|r| r.unwrap().unwrap())
    .collect::<Vec<_>>();
    let addresses: BTreeSet<_> = attached.iter().map(|(ep, _)| ep.ipv4().unwrap()).collect();
    assert_eq!(addresses.len(), N, "no address handed out twice");
    let macs: BTreeSet<_> = attached.iter().map(|(ep, _)| ep.mac().unwrap()).collect();
    assert_eq!(macs.len(), N);
    assert_eq!(w.kernel.state().namespaces.len(), N);
    assert_eq!(w.driver.state().joined.len(), N);

    join_all(attached.into_iter().map(|(ep, sb)| {
        tokio::spawn(async move {
            let gone = sb.delete_with_endpoints().await.unwrap();
            assert_eq!(gone.len(), 1);
            assert_eq!(gone[0].id(), ep.id());
        })
    }))
    .await
    .into_iter()
    .for_each(|r| r.unwrap());
    net.delete().await.unwrap();
    let end = w.snapshot().await;
    assert_eq!(end.driver, empty.driver);
    assert_eq!(end.records, empty.records);
    assert_eq!(end.ipam, empty.ipam);
    assert_eq!(end.objects, empty.objects);
    assert_eq!(end.kernel.namespaces, empty.kernel.namespaces);
    assert_eq!(end.kernel.files, empty.kernel.files);
}
