//! Kill test: a process committing transactions is SIGKILLed at random points; the store must
//! reopen with every reported commit present, and every commit whole.
//!
//! The test binary is its own child: run with `CNM_STORE_CRASH_CHILD=<state dir>` it takes the
//! state-directory lock, opens the store and commits forever, each transaction writing
//! `n/<i>` and moving `counter` from `i` to `i + 1` (compare-and-swap), and reports each commit
//! on stdout once `commit` has returned. The parent waits for a random number of reports (the pipe
//! is the synchronisation, no sleeps), kills the child, and checks the store.
#![allow(clippy::print_stderr)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use cnm_core::store::{Expect, Store, Txn};
use cnm_store::{RedbStore, StateDirLock};
use rand::Rng;

const CHILD_ENV: &str = "CNM_STORE_CRASH_CHILD";
const ROUNDS: usize = 25;
/// The longest one round may take before the watchdog kills the child and the test fails.
const ROUND_DEADLINE: Duration = Duration::from_secs(30);

fn main() -> Result<()> {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        return child(Path::new(&dir));
    }
    // Under libtest-style invocations (`--list`, filters) there is nothing to select: one test.
    if std::env::args().any(|a| a == "--list") {
        println_list();
        return Ok(());
    }
    let started = Instant::now();
    parent()?;
    eprintln!(
        "test kill_mid_commit_keeps_store_whole ... ok ({ROUNDS} rounds, {:.1?})",
        started.elapsed()
    );
    Ok(())
}

#[allow(clippy::print_stdout)]
fn println_list() {
    println!("kill_mid_commit_keeps_store_whole: test");
}

fn key(i: u64) -> String {
    format!("n/{i:010}")
}

fn decode(bytes: &[u8]) -> Result<u64> {
    Ok(std::str::from_utf8(bytes)?.parse()?)
}

/// Commits until killed.
fn child(state_dir: &Path) -> Result<()> {
    let _lock = StateDirLock::acquire(state_dir)?;
    let store = RedbStore::open(state_dir)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut out = std::io::stdout().lock();
    rt.block_on(async {
        let (mut next, mut expect) = match store.get("counter").await? {
            Some(v) => (decode(&v.value)?, Expect::Version(v.version)),
            None => (0, Expect::Absent),
        };
        loop {
            let txn = Txn {
                ops: vec![
                    cnm_core::store::TxnOp::Put {
                        key: key(next),
                        value: next.to_string().into_bytes(),
                        expect: Expect::Absent,
                    },
                    cnm_core::store::TxnOp::Put {
                        key: "counter".into(),
                        value: (next + 1).to_string().into_bytes(),
                        expect,
                    },
                ],
            };
            let rev = store.commit(txn).await?;
            next += 1;
            expect = Expect::Version(rev);
            writeln!(out, "{next}")?;
            out.flush()?;
        }
    })
}

fn parent() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let state = dir.path();
    let exe = std::env::current_exe()?;
    let mut rng = rand::rng();
    let mut previous = 0;
    for round in 0..ROUNDS {
        let target: u64 = rng.random_range(1..=60);
        let mut child = Command::new(&exe)
            .env(CHILD_ENV, state)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id())?);
        // The watchdog bounds the round: if the child stops reporting, it is killed, the pipe
        // closes and the read below fails instead of hanging.
        let (done_tx, done_rx) = mpsc::channel::<()>();
        let watchdog = std::thread::spawn(move || {
            let timed_out = matches!(
                done_rx.recv_timeout(ROUND_DEADLINE),
                Err(mpsc::RecvTimeoutError::Timeout)
            );
            if timed_out {
                // ESRCH only if it died meanwhile, which is what we want anyway.
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            }
            timed_out
        });
        let stdout = child.stdout.take().context("child stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let mut reported = previous;
        let mut seen = 0;
        while seen < target {
            let line = lines.next().context("child stopped reporting progress")??;
            reported = line.parse()?;
            seen += 1;
        }
        // While the child lives, its lock refuses us, naming it.
        match StateDirLock::acquire(state) {
            Ok(_) => bail!("round {round}: took the lock the child holds"),
            Err(e) => ensure!(
                e.to_string().contains(&format!("pid {}", child.id())),
                "round {round}: refusal does not name the holder: {e}"
            ),
        }
        child.kill()?; // SIGKILL
        let status = child.wait()?;
        drop(done_tx);
        ensure!(
            !watchdog
                .join()
                .map_err(|_| anyhow::anyhow!("watchdog panicked"))?,
            "round {round}: the child hung"
        );
        ensure!(
            status.signal() == Some(nix::sys::signal::Signal::SIGKILL as i32),
            "round {round}: child ended by {status}, not by our SIGKILL"
        );

        // The kernel released the dead holder's lock; the database opens (redb repairs it).
        let _lock = StateDirLock::acquire(state).context("lock after the child died")?;
        let store = RedbStore::open(state).context("reopen after SIGKILL")?;
        let rt = tokio::runtime::Builder::new_current_thread().build()?;
        let count = rt.block_on(check(&store, reported))?;
        ensure!(count >= previous, "round {round}: commits went missing");
        eprintln!("round {round}: child reported {reported}, store holds {count} transactions");
        previous = count;
    }
    if previous == 0 {
        bail!("no transaction was ever committed");
    }
    Ok(())
}

/// The store is whole: `counter` equals the number of `n/*` keys, keys are exactly
/// `n/0..counter`, each written together with the counter step it belongs to, and every commit
/// the child reported is there. Returns the counter.
async fn check(store: &RedbStore, reported: u64) -> Result<u64> {
    let counter = store.get("counter").await?.context("counter missing")?;
    let count = decode(&counter.value)?;
    ensure!(
        count >= reported,
        "a reported commit was lost: counter {count} < reported {reported}"
    );
    let keys = store.list("n/").await?;
    ensure!(
        keys.len() as u64 == count,
        "counter {count} but {} n/* keys",
        keys.len()
    );
    let mut last_version = 0;
    for (i, (k, v)) in keys.iter().enumerate() {
        let i = i as u64;
        ensure!(*k == key(i), "key {k} where {} was expected", key(i));
        ensure!(decode(&v.value)? == i, "key {k} holds a wrong value");
        ensure!(v.version > last_version, "versions must grow with i");
        last_version = v.version;
    }
    ensure!(
        count == 0 || counter.version == last_version,
        "counter (version {}) was not written with the last key (version {last_version})",
        counter.version
    );
    Ok(count)
}
