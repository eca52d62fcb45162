//! Attach/detach timing of the bridge driver through the public API, in a throwaway host
//! namespace (never the machine's own).
//!
//! Run (as root, in a private mount namespace so the netns bind mounts stay private):
//!
//! ```text
//! unshare --mount --propagation private -- \
//!     cargo run --release -p cnm --example attach_timing -- [--iterations 100] \
//!     [--accumulate 1000] [--parallel 32] [--no-port]
//! ```
//!
//! Attach = new sandbox + create endpoint (one published TCP port) + join;
//! detach = leave + delete endpoint + delete sandbox. Three measurements:
//!
//! 1. `cycle`: N times attach then detach (steady state, one container at a time), median and
//!    p95 per public call;
//! 2. `accumulate`: M attaches kept alive (the 1st against the Mth: nothing may grow with the
//!    number of containers), then M detaches;
//! 3. `parallel`: P attaches one after the other against P attaches at once.
//!
//! `CNM_TRACE=1` prints every span's busy/idle time on close (`RUST_LOG` filters them).

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use cnm::{Controller, Endpoint, EndpointOptions, Network, NetworkOptions, Sandbox};
use cnm_testkit::TestHost;

/// Durations of one public call over many runs.
#[derive(Default)]
struct Series {
    name: &'static str,
    samples: Vec<Duration>,
}

impl Series {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            samples: Vec::new(),
        }
    }

    fn quantile(&self, q: f64) -> Duration {
        let mut v = self.samples.clone();
        v.sort();
        if v.is_empty() {
            return Duration::ZERO;
        }
        let i = ((v.len() as f64 - 1.0) * q).round() as usize;
        v[i.min(v.len() - 1)]
    }

    fn line(&self) -> String {
        format!(
            "  {:<22} median {:>8.3} ms   p95 {:>8.3} ms   min {:>8.3} ms",
            self.name,
            ms(self.quantile(0.5)),
            ms(self.quantile(0.95)),
            ms(self.quantile(0.0)),
        )
    }
}

fn median(samples: &[Duration]) -> Duration {
    Series {
        name: "",
        samples: samples.to_vec(),
    }
    .quantile(0.5)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

struct Args {
    iterations: usize,
    accumulate: usize,
    parallel: usize,
    port: bool,
}

fn args() -> Result<Args> {
    let mut a = Args {
        iterations: 100,
        accumulate: 0,
        parallel: 0,
        port: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut num = |name: &str| -> Result<usize> {
            it.next()
                .with_context(|| format!("{name} needs a number"))?
                .parse()
                .with_context(|| format!("{name} needs a number"))
        };
        match flag.as_str() {
            "--iterations" | "-n" => a.iterations = num("--iterations")?,
            "--accumulate" => a.accumulate = num("--accumulate")?,
            "--parallel" => a.parallel = num("--parallel")?,
            "--no-port" => a.port = false,
            other => bail!(
                "unknown argument {other:?}; use --iterations N, --accumulate M, --parallel P, --no-port"
            ),
        }
    }
    Ok(a)
}

/// One attached container.
struct Attached {
    sb: Sandbox,
    ep: Endpoint,
}

/// The per-call durations of attach and detach.
struct Phases {
    new_sandbox: Series,
    create_endpoint: Series,
    join: Series,
    attach: Series,
    leave: Series,
    delete_endpoint: Series,
    delete_sandbox: Series,
    detach: Series,
}

impl Phases {
    fn new() -> Self {
        Self {
            new_sandbox: Series::new("new_sandbox"),
            create_endpoint: Series::new("create_endpoint"),
            join: Series::new("join (+publish)"),
            attach: Series::new("= attach"),
            leave: Series::new("leave (+unpublish)"),
            delete_endpoint: Series::new("endpoint delete"),
            delete_sandbox: Series::new("sandbox delete"),
            detach: Series::new("= detach"),
        }
    }

    fn print(&self) {
        for s in [
            &self.new_sandbox,
            &self.create_endpoint,
            &self.join,
            &self.attach,
            &self.leave,
            &self.delete_endpoint,
            &self.delete_sandbox,
            &self.detach,
        ] {
            println!("{}", s.line());
        }
    }
}

async fn attach(
    ctl: &Controller,
    net: &Network,
    i: usize,
    port: bool,
    phases: Option<&mut Phases>,
) -> Result<Attached> {
    let name = format!("c{i}");
    let mut opts = EndpointOptions::default();
    if port {
        opts = opts.publish(format!("{}:80", 20000 + i).parse()?);
    }
    let t0 = Instant::now();
    let sb = ctl.new_sandbox(&name, []).await?;
    let t1 = Instant::now();
    let ep = net.create_endpoint(&name, opts).await?;
    let t2 = Instant::now();
    ep.join_sandbox(&sb, []).await?;
    let t3 = Instant::now();
    if let Some(p) = phases {
        p.new_sandbox.samples.push(t1 - t0);
        p.create_endpoint.samples.push(t2 - t1);
        p.join.samples.push(t3 - t2);
        p.attach.samples.push(t3 - t0);
    }
    Ok(Attached { sb, ep })
}

async fn detach(a: Attached, phases: Option<&mut Phases>) -> Result<()> {
    let t0 = Instant::now();
    a.ep.leave_sandbox(&a.sb).await?;
    let t1 = Instant::now();
    a.ep.delete().await?;
    let t2 = Instant::now();
    a.sb.delete().await?;
    let t3 = Instant::now();
    if let Some(p) = phases {
        p.leave.samples.push(t1 - t0);
        p.delete_endpoint.samples.push(t2 - t1);
        p.delete_sandbox.samples.push(t3 - t2);
        p.detach.samples.push(t3 - t0);
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = args()?;
    if std::env::var_os("CNM_TRACE").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "debug".into()),
            )
            .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
            .init();
    }
    let host = TestHost::new().await?;
    let ctl = host.controller().await?;
    let driver = cnm_driver_bridge::BridgeDriver::instance_for(host.netns())
        .context("the controller made no bridge driver")?;
    let net = ctl
        .new_network(
            "bridge",
            "bench",
            NetworkOptions::default().subnet("10.88.0.0/16".parse()?),
        )
        .await?;
    let port = args.port;
    println!(
        "attach = new sandbox + endpoint{} + join; detach = leave + endpoint delete + sandbox delete",
        if port { " (1 published TCP port)" } else { "" }
    );

    // Warm-up: first-use costs (firewall socket, allocator, page cache) stay out of the figures.
    for i in 0..3 {
        let a = attach(&ctl, &net, 40_000 + i, port, None).await?;
        detach(a, None).await?;
    }

    // 1. Steady state.
    let mut phases = Phases::new();
    let (mut tx_attach, mut tx_detach) = (0, 0);
    for i in 0..args.iterations {
        let before = driver.firewall_transactions().await?;
        let a = attach(&ctl, &net, i, port, Some(&mut phases)).await?;
        let mid = driver.firewall_transactions().await?;
        detach(a, Some(&mut phases)).await?;
        let after = driver.firewall_transactions().await?;
        (tx_attach, tx_detach) = (mid - before, after - mid);
    }
    println!(
        "\ncycle: {} x attach+detach (firewall transactions: attach {tx_attach}, detach {tx_detach})",
        args.iterations
    );
    phases.print();

    // 2. Growth: the Mth attach must cost what the 1st does.
    if args.accumulate > 0 {
        let m = args.accumulate;
        let mut growth = Phases::new();
        let mut alive = Vec::with_capacity(m);
        for i in 0..m {
            alive.push(attach(&ctl, &net, i, port, Some(&mut growth)).await?);
        }
        let at = growth.attach.samples.clone();
        let window = (m / 10).clamp(1, 50);
        let head = Series {
            name: "",
            samples: at[..window].to_vec(),
        };
        let tail = Series {
            name: "",
            samples: at[m - window..].to_vec(),
        };
        for s in [&growth.new_sandbox, &growth.create_endpoint, &growth.join] {
            let (h, t) = (&s.samples[..window], &s.samples[m - window..]);
            println!(
                "  growth of {:<18} median of the first {window} {:>7.3} ms, of the last {window} {:>7.3} ms",
                s.name,
                ms(median(h)),
                ms(median(t)),
            );
        }
        let start = Instant::now();
        for a in alive.into_iter().rev() {
            detach(a, Some(&mut growth)).await?;
        }
        let teardown = start.elapsed();
        println!(
            "\naccumulate: {m} attaches kept, then detached (newest first, {:.1} ms in all)",
            ms(teardown)
        );
        growth.print();
        println!(
            "  attach #1 {:.3} ms, #{m} {:.3} ms; median of the first {window} {:.3} ms, of the last {window} {:.3} ms (ratio {:.2})",
            ms(at[0]),
            ms(at[m - 1]),
            ms(head.quantile(0.5)),
            ms(tail.quantile(0.5)),
            tail.quantile(0.5).as_secs_f64() / head.quantile(0.5).as_secs_f64(),
        );
    }

    // 3. Concurrency.
    if args.parallel > 0 {
        let p = args.parallel;
        let start = Instant::now();
        let mut alive = Vec::with_capacity(p);
        for i in 0..p {
            alive.push(attach(&ctl, &net, i, port, None).await?);
        }
        let serial = start.elapsed();
        for a in alive {
            detach(a, None).await?;
        }
        let start = Instant::now();
        let tasks: Vec<_> = (0..p)
            .map(|i| {
                let (ctl, net) = (ctl.clone(), net.clone());
                tokio::spawn(async move { attach(&ctl, &net, i, port, None).await })
            })
            .collect();
        let mut alive = Vec::with_capacity(p);
        for t in tasks {
            alive.push(t.await??);
        }
        let parallel = start.elapsed();
        let start = Instant::now();
        let tasks: Vec<_> = alive
            .into_iter()
            .map(|a| tokio::spawn(detach(a, None)))
            .collect();
        for t in tasks {
            t.await??;
        }
        let parallel_detach = start.elapsed();
        println!(
            "\nparallel: {p} attaches serial {:.1} ms, concurrent {:.1} ms (speed-up {:.2}x); concurrent detach {:.1} ms",
            ms(serial),
            ms(parallel),
            serial.as_secs_f64() / parallel.as_secs_f64(),
            ms(parallel_detach),
        );
    }

    net.delete().await?;
    Ok(())
}
