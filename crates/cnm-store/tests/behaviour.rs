//! One behavioural suite, run identically against `MemoryStore` (the reference) and `RedbStore`.

use std::sync::Arc;

use anyhow::{Context, Result, bail};
use cnm_core::store::{
    Expect, MemoryStore, Store, StoreError, Txn, Versioned, WatchEvent, get_json, list_json,
};
use cnm_store::{RedbStore, RedbStoreError};
use cnm_types::ErrorKind;

async fn versions_and_expectations(s: &dyn Store) -> Result<()> {
    let v1 = s.put("network/a", b"1".to_vec(), Expect::Absent).await?;
    let e = s
        .put("network/a", b"2".to_vec(), Expect::Absent)
        .await
        .expect_err("create over an existing key");
    assert_eq!(e.kind(), ErrorKind::Conflict);
    assert_eq!(
        e.to_string(),
        format!(
            "store key \"network/a\" changed concurrently: expected no key, found version {v1}"
        )
    );
    let v2 = s
        .put("network/a", b"2".to_vec(), Expect::Version(v1))
        .await?;
    assert!(v2 > v1);
    let e = s
        .put("network/a", b"3".to_vec(), Expect::Version(v1))
        .await
        .expect_err("stale CAS");
    assert!(
        matches!(&e, StoreError::Conflict { expected, found, .. }
            if *expected == format!("version {v1}") && *found == format!("version {v2}")),
        "{e}"
    );
    let got = s.get("network/a").await?.context("key must exist")?;
    assert_eq!(
        got,
        Versioned {
            version: v2,
            value: b"2".to_vec()
        }
    );
    let e = s
        .delete("network/a", Expect::Version(v1))
        .await
        .expect_err("stale delete");
    assert_eq!(e.kind(), ErrorKind::Conflict);
    s.delete("network/a", Expect::Version(v2)).await?;
    assert!(s.get("network/a").await?.is_none());
    s.delete("network/a", Expect::Any).await?;
    let e = s
        .delete("network/a", Expect::Version(v2))
        .await
        .expect_err("CAS delete of a missing key");
    assert!(e.to_string().ends_with("found no key"), "{e}");
    s.delete("network/a", Expect::Absent).await?;
    assert!(s.get("never/written").await?.is_none());
    Ok(())
}

async fn txn_is_all_or_nothing(s: &dyn Store) -> Result<()> {
    s.put("endpoint/n/1", b"x".to_vec(), Expect::Absent).await?;
    let before = s.put("probe", Vec::new(), Expect::Any).await?;
    let txn = Txn::new()
        .put_json("sandbox/s", &"s", Expect::Absent)?
        .delete("probe", Expect::Any)
        .put_json("endpoint/n/1", &"y", Expect::Absent)?;
    let e = s
        .commit(txn)
        .await
        .expect_err("last op's expectation fails");
    assert!(e.to_string().contains("endpoint/n/1"), "{e}");
    assert!(
        s.get("sandbox/s").await?.is_none(),
        "first op must not land"
    );
    assert!(s.get("probe").await?.is_some(), "second op must not land");
    // A refused transaction consumes no revision.
    let after = s.put("probe", Vec::new(), Expect::Any).await?;
    assert_eq!(after, before + 1);
    // An op may rely on an earlier op of the same transaction.
    let txn = Txn::new()
        .put_json("a", &1, Expect::Absent)?
        .delete("a", Expect::Any);
    s.commit(txn).await?;
    assert!(s.get("a").await?.is_none());
    let txn = Txn::new().put_json("b", &1, Expect::Absent)?.put_json(
        "b",
        &2,
        Expect::Version(after + 2),
    )?;
    let rev = s.commit(txn).await?;
    let b: Versioned<i32> = get_json(s, "b").await?.context("b")?;
    assert_eq!((b.version, b.value), (rev, 2));
    Ok(())
}

async fn revisions_grow_across_the_store(s: &dyn Store) -> Result<()> {
    let r1 = s.put("x/1", b"1".to_vec(), Expect::Any).await?;
    let r2 = s.put("y/1", b"1".to_vec(), Expect::Any).await?;
    assert_eq!(r2, r1 + 1, "revisions are store-wide");
    let r3 = s.commit(Txn::new()).await?;
    assert_eq!(r3, r2 + 1, "an empty transaction is a commit too");
    let r4 = s.commit(Txn::new().delete("missing", Expect::Any)).await?;
    assert_eq!(r4, r3 + 1);
    let txn =
        Txn::new()
            .put_json("x/2", &2, Expect::Absent)?
            .put_json("y/2", &2, Expect::Absent)?;
    let r5 = s.commit(txn).await?;
    assert_eq!(r5, r4 + 1);
    for key in ["x/2", "y/2"] {
        assert_eq!(s.get(key).await?.context("written")?.version, r5);
    }
    assert_eq!(s.get("x/1").await?.context("written")?.version, r1);
    Ok(())
}

async fn list_by_prefix_and_watch(s: &dyn Store) -> Result<()> {
    let mut w = s.watch("endpoint/")?;
    for k in [
        "endpoint/n/2",
        "endpoint/n/1",
        "network/n",
        "endpointx",
        "endpoint0",
    ] {
        s.put(k, b"{}".to_vec(), Expect::Any).await?;
    }
    let keys: Vec<String> = s
        .list("endpoint/")
        .await?
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(keys, ["endpoint/n/1", "endpoint/n/2"]);
    assert_eq!(s.list("").await?.len(), 5);
    assert!(s.list("zzz").await?.is_empty());
    assert_eq!(w.next().await.context("event")?.key(), "endpoint/n/2");
    assert_eq!(w.next().await.context("event")?.key(), "endpoint/n/1");
    assert!(w.try_next().is_none());
    s.delete("endpoint/n/1", Expect::Any).await?;
    assert!(matches!(w.next().await, Some(WatchEvent::Delete { .. })));
    let decoded: Vec<(String, Versioned<serde_json::Value>)> = list_json(s, "endpoint/").await?;
    assert_eq!(decoded.len(), 1);
    Ok(())
}

async fn watch_reports_versions_in_commit_order(s: &dyn Store) -> Result<()> {
    // Written before the watch starts, deleted after: the delete must still be seen.
    let old = s.put("net/old", b"o".to_vec(), Expect::Absent).await?;
    for i in 0..5 {
        s.put(&format!("other/{i}"), Vec::new(), Expect::Any)
            .await?;
    }
    let mut w = s.watch("net/")?;
    let mut all = s.watch("")?;
    s.put("other/x", Vec::new(), Expect::Any).await?;
    let r1 = s.put("net/a", b"a1".to_vec(), Expect::Absent).await?;
    s.commit(Txn::new().put_json("net/old", &0, Expect::Version(old + 1))?)
        .await
        .expect_err("refused txn");
    let txn = Txn::new()
        .delete("net/old", Expect::Version(old))
        .put_json("net/b", &"b", Expect::Absent)?
        .put_json("other/y", &"y", Expect::Absent)?
        .delete("net/never", Expect::Any);
    let r2 = s.commit(txn).await?;
    let r3 = s.put("net/a", b"a2".to_vec(), Expect::Version(r1)).await?;
    let expected = [
        WatchEvent::Put {
            key: "net/a".into(),
            value: Versioned {
                version: r1,
                value: b"a1".to_vec(),
            },
        },
        WatchEvent::Delete {
            key: "net/old".into(),
            version: r2,
        },
        WatchEvent::Put {
            key: "net/b".into(),
            value: Versioned {
                version: r2,
                value: b"\"b\"".to_vec(),
            },
        },
        WatchEvent::Put {
            key: "net/a".into(),
            value: Versioned {
                version: r3,
                value: b"a2".to_vec(),
            },
        },
    ];
    for want in &expected {
        let got = w.next().await.context("watch ended")?;
        assert_eq!(&got, want);
    }
    assert!(w.try_next().is_none(), "nothing else under net/");
    let mut seen = Vec::new();
    while let Some(e) = all.try_next() {
        seen.push(e.key().to_owned());
    }
    assert_eq!(
        seen,
        ["other/x", "net/a", "net/old", "net/b", "other/y", "net/a"]
    );
    // A dropped watch does not disturb commits.
    drop(w);
    s.put("net/c", Vec::new(), Expect::Absent).await?;
    Ok(())
}

/// Many tasks increment one counter with compare-and-swap; none of the increments may be lost.
async fn concurrent_cas_loses_no_update(s: Arc<dyn Store>) -> Result<()> {
    const TASKS: u64 = 16;
    const EACH: u64 = 10;
    s.put("counter", b"0".to_vec(), Expect::Absent).await?;
    let mut handles = Vec::new();
    for t in 0..TASKS {
        let s = Arc::clone(&s);
        handles.push(tokio::spawn(async move {
            let mut conflicts = 0u64;
            for i in 0..EACH {
                loop {
                    let cur = s.get("counter").await?.context("counter")?;
                    let n: u64 = std::str::from_utf8(&cur.value)?.parse()?;
                    // Let another task read the same version before this one writes.
                    tokio::task::yield_now().await;
                    // Each increment also records itself, in the same transaction.
                    let txn = Txn::new()
                        .put_json("counter", &(n + 1), Expect::Version(cur.version))?
                        .put_json(format!("inc/{t}/{i}"), &n, Expect::Absent)?;
                    match s.commit(txn).await {
                        Ok(_) => break,
                        Err(e) if e.kind() == ErrorKind::Conflict => conflicts += 1,
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            anyhow::Ok(conflicts)
        }));
    }
    let mut conflicts = 0;
    for h in handles {
        conflicts += h.await??;
    }
    let total = s.get("counter").await?.context("counter")?;
    assert_eq!(total.value, (TASKS * EACH).to_string().into_bytes());
    let incs = s.list("inc/").await?;
    assert_eq!(incs.len() as u64, TASKS * EACH);
    // Every increment saw a distinct counter value: no two CAS writes both won from one read.
    let mut seen: Vec<u64> = incs
        .iter()
        .map(|(_, v)| Ok(std::str::from_utf8(&v.value)?.parse()?))
        .collect::<Result<_>>()?;
    seen.sort_unstable();
    assert_eq!(seen, (0..TASKS * EACH).collect::<Vec<_>>());
    // Contention is likely but not guaranteed by the scheduler; the stale-CAS refusal itself is
    // asserted deterministically in `versions_and_expectations`.
    report_conflicts(conflicts);
    Ok(())
}

#[allow(clippy::print_stderr)]
fn report_conflicts(conflicts: u64) {
    eprintln!("CAS conflicts retried: {conflicts}");
}

fn redb() -> Result<(tempfile::TempDir, RedbStore)> {
    let dir = tempfile::tempdir()?;
    let store = RedbStore::open(dir.path())?;
    Ok((dir, store))
}

macro_rules! both_stores {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use super::*;

            #[tokio::test]
            async fn memory() -> Result<()> {
                super::$name(&MemoryStore::new()).await
            }

            #[tokio::test]
            async fn redb() -> Result<()> {
                let (_dir, store) = super::redb()?;
                super::$name(&store).await
            }
        }
    )*};
}

both_stores!(
    versions_and_expectations,
    txn_is_all_or_nothing,
    revisions_grow_across_the_store,
    list_by_prefix_and_watch,
    watch_reports_versions_in_commit_order,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_cas_memory() -> Result<()> {
    concurrent_cas_loses_no_update(Arc::new(MemoryStore::new())).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_cas_redb() -> Result<()> {
    let (_dir, store) = redb()?;
    concurrent_cas_loses_no_update(Arc::new(store)).await
}

#[tokio::test]
async fn reopen_keeps_data_and_revision() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let state = dir.path().join("a/b");
    let store = RedbStore::open(&state)?;
    assert_eq!(store.path(), state.join("state.redb"));
    assert_eq!(store.backend(), "redb");
    let v = store.put("k/1", b"one".to_vec(), Expect::Absent).await?;
    let rev = store
        .commit(
            Txn::new()
                .delete("k/1", Expect::Any)
                .put_json("k/2", &2, Expect::Absent)?,
        )
        .await?;
    drop(store);

    let store = RedbStore::open(&state)?;
    assert!(store.get("k/1").await?.is_none());
    assert_eq!(store.get("k/2").await?.context("k/2")?.version, rev);
    assert!(rev > v);
    let next = store.put("k/3", Vec::new(), Expect::Absent).await?;
    assert_eq!(
        next,
        rev + 1,
        "revisions continue where the last process stopped"
    );
    let mut w = store.watch("k/")?;
    store.delete("k/2", Expect::Version(rev)).await?;
    assert_eq!(
        w.next().await,
        Some(WatchEvent::Delete {
            key: "k/2".into(),
            version: next + 1
        })
    );
    Ok(())
}

#[tokio::test]
async fn second_open_is_refused_clearly() -> Result<()> {
    let (dir, store) = redb()?;
    let e = match RedbStore::open(dir.path()) {
        Ok(_) => bail!("a second handle opened the same database"),
        Err(e) => e,
    };
    assert!(matches!(e, RedbStoreError::AlreadyOpen { .. }), "{e:?}");
    assert_eq!(e.kind(), ErrorKind::Conflict);
    assert!(e.to_string().contains("state.redb"), "{e}");
    // The refusal did not disturb the open handle.
    store.put("k", Vec::new(), Expect::Absent).await?;
    Ok(())
}

#[tokio::test]
async fn unusable_state_dir_is_an_open_error() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"")?;
    let e = RedbStore::open(&file).expect_err("state dir is a file");
    assert!(matches!(e, RedbStoreError::CreateDir { .. }), "{e:?}");
    assert_eq!(e.kind(), ErrorKind::Unavailable);
    Ok(())
}
