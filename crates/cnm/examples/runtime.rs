//! A small container runtime on the `cnm` facade: what a runtime author writes.
//!
//! Two bridge networks, `front` (with a published port) and `back` (internal); a container
//! `web` on both (multi-homed) and a container `db` on `back`. The runtime enters `web` with
//! [`Sandbox::entry`] to exec real processes in it: `ip -o -4 addr show` (its interfaces),
//! `hostname` and `cat /etc/hosts` (its UTS and mount namespaces), and a listener (this program
//! re-executed as `__serve`, as runtimes re-exec themselves). Then it shuts the controller down,
//! builds a new one on the same directories — a restart of the runtime — and finds everything
//! adopted: networks, endpoints, sandboxes, the published port, the listener still answering.
//! Finally it removes all of it.
//!
//! Run as root, in throwaway namespaces (it uses the default paths, /run/cnm and /var/lib/cnm,
//! and treats its own network namespace as the host):
//!
//! ```text
//! cargo build -p cnm --example runtime
//! unshare --net --mount --propagation private -- sh -c \
//!   'mount -t tmpfs tmpfs /run; mount -t tmpfs tmpfs /var/lib; ip link set lo up; target/debug/examples/runtime'
//! ```
//!
//! It prints one `ok:` line per check and exits non-zero at the first failure.
#![allow(clippy::print_stdout)]

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use cnm::{Controller, EndpointOptions, JoinOption, NetworkOptions, Sandbox};

const PUBLISHED: u16 = 18080;
const LISTENER: u16 = 8080;
const TIMEOUT: Duration = Duration::from_secs(5);

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("__serve") {
        return serve(LISTENER);
    }

    // 1. Set-up: two networks, a multi-homed container with a published port, a second one.
    let ctl = Controller::builder().build().await?;
    let front = ctl
        .new_network(
            "bridge",
            "front",
            NetworkOptions::default().subnet("10.77.0.0/24".parse()?),
        )
        .await?;
    let back = ctl
        .new_network(
            "bridge",
            "back",
            NetworkOptions::default()
                .subnet("10.78.0.0/24".parse()?)
                .internal(true),
        )
        .await?;
    let mut published = EndpointOptions::default();
    published
        .port_bindings
        .push(format!("{PUBLISHED}:{LISTENER}/tcp").parse()?);
    let web_front = front.create_endpoint("web-front", published).await?;
    let web_back = back
        .create_endpoint("web-back", EndpointOptions::default())
        .await?;
    let db_back = back
        .create_endpoint("db-back", EndpointOptions::default())
        .await?;
    let web = web_front.join("web", [JoinOption::hostname("web")]).await?;
    web_back.join_sandbox(&web, []).await?;
    db_back.join("db", [JoinOption::hostname("db")]).await?;
    let web_addrs = [ipv4(web_front.ipv4())?, ipv4(web_back.ipv4())?];
    println!(
        "ok: web on front ({}) and back ({}), db on back ({}), {PUBLISHED} published",
        web_addrs[0],
        web_addrs[1],
        ipv4(db_back.ipv4())?
    );

    // 2. Processes inside `web`, entered through `Sandbox::entry()`.
    check_inside(&web, &web_addrs)?;
    let listener = start_listener(&web)?;
    let db = ctl.sandbox_by_container_id("db")?;
    check_traffic(&db, web_addrs[1]).await?;

    // 3. Restart: shut the controller down, build another on the same directories.
    let (keys, published_before) = (
        [web.key().to_owned(), db.key().to_owned()],
        web.published_ports(),
    );
    drop((front, back, web_front, web_back, db_back, web, db));
    ctl.shutdown().await?;
    println!("ok: controller shut down");
    let ctl = Controller::builder().build().await?;
    let mut names: Vec<String> = ctl.networks().iter().map(|n| n.name().to_owned()).collect();
    names.sort();
    ensure!(
        names.contains(&"front".into()) && names.contains(&"back".into()),
        "networks after restart: {names:?}"
    );
    let web = ctl.sandbox_by_container_id("web")?;
    let db = ctl.sandbox_by_container_id("db")?;
    ensure!(
        [web.key().to_owned(), db.key().to_owned()] == keys,
        "sandbox keys changed"
    );
    let endpoints: Vec<String> = web
        .endpoints()
        .iter()
        .map(|(e, _)| e.name().to_owned())
        .collect();
    ensure!(
        endpoints == ["web-front", "web-back"],
        "web's endpoints after restart: {endpoints:?}"
    );
    ensure!(
        web.published_ports() == published_before,
        "published ports after restart: {:?}",
        web.published_ports()
    );
    let readopted = [
        ipv4(ctl.network("front")?.endpoint("web-front")?.ipv4())?,
        ipv4(ctl.network("back")?.endpoint("web-back")?.ipv4())?,
    ];
    ensure!(
        readopted == web_addrs,
        "addresses after restart: {readopted:?}"
    );
    println!(
        "ok: adopted after restart: networks {names:?}, web's endpoints {endpoints:?}, sandboxes web and db, ports {PUBLISHED}"
    );
    check_traffic(&db, web_addrs[1]).await?;
    check_inside(&web, &web_addrs)?;

    // 4. Tear-down.
    listener.stop()?;
    for sb in ctl.sandboxes() {
        sb.delete_with_endpoints().await?;
    }
    for net in ctl.networks() {
        net.delete().await?;
    }
    ctl.shutdown().await?;
    println!("ok: removed the sandboxes, endpoints and networks");
    Ok(())
}

fn ipv4(net: Option<cnm::ipnet::Ipv4Net>) -> Result<Ipv4Addr> {
    Ok(net.context("an endpoint without an IPv4 address")?.addr())
}

/// Runs `program args` inside the sandbox and returns its stdout.
fn output_inside(sandbox: &Sandbox, program: &str, args: &[&str]) -> Result<String> {
    let entry = sandbox.entry();
    let mut cmd = Command::new(program);
    cmd.args(args);
    entry.apply(&mut cmd)?;
    let out = cmd.output().map_err(|e| entry.spawn_error(e))?;
    ensure!(
        out.status.success(),
        "{program} {args:?} in {}: {}",
        sandbox.container_id(),
        out.status
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// The container's own view: both interfaces with their addresses, its hostname, its hosts file.
fn check_inside(web: &Sandbox, addrs: &[Ipv4Addr; 2]) -> Result<()> {
    let ip = output_inside(web, "ip", &["-o", "-4", "addr", "show"])?;
    for (ifname, addr) in ["eth0", "eth1"].iter().zip(addrs) {
        ensure!(
            ip.lines().any(|l| l.contains(&format!(" {ifname} ")) && l.contains(&format!("inet {addr}/"))),
            "no {ifname} with {addr} in `ip addr` inside web:\n{ip}"
        );
    }
    println!(
        "ok: inside web, `ip addr` shows eth0 {} and eth1 {}",
        addrs[0], addrs[1]
    );
    let hostname = output_inside(web, "hostname", &[])?;
    ensure!(
        hostname.trim() == "web",
        "hostname inside web: {hostname:?}"
    );
    let hosts = output_inside(web, "cat", &["/etc/hosts"])?;
    ensure!(
        hosts
            .lines()
            .any(|l| l.starts_with(&addrs[0].to_string()) && l.contains("web")),
        "web's /etc/hosts:\n{hosts}"
    );
    // Its own mount namespace: the runtime's (the host's) /etc/hosts is not the container's.
    let own = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    ensure!(
        own != hosts,
        "the container's /etc/hosts leaked into the runtime's view"
    );
    println!(
        "ok: inside web, hostname web and /etc/hosts names {}",
        addrs[0]
    );
    Ok(())
}

/// The container's process; stopped when dropped, so a failed check leaves no process behind.
struct Listener(Child);

impl Listener {
    fn stop(mut self) -> Result<()> {
        self.0.kill().context("stop the listener")?;
        self.0.wait().context("wait for the listener")?;
        Ok(())
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        // Already stopped (by `stop`) is the usual case here.
        if self.0.kill().is_ok() {
            let _ = self.0.wait();
        }
    }
}

/// Starts this program as a listener inside `web`; returns once it listens.
fn start_listener(web: &Sandbox) -> Result<Listener> {
    let entry = web.entry();
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("__serve").stdout(Stdio::piped());
    entry.apply(&mut cmd)?;
    let mut child = Listener(cmd.spawn().map_err(|e| entry.spawn_error(e))?);
    let mut ready = String::new();
    let stdout = child.0.stdout.take().context("piped stdout")?;
    // Its readiness line, not a sleep: it writes `ready` once bound.
    BufReader::new(stdout).read_line(&mut ready)?;
    ensure!(ready.trim() == "ready", "the listener said {ready:?}");
    println!("ok: listener started inside web (pid {})", child.0.id());
    Ok(child)
}

/// The listener answers through the published port on the host's loopback, and from `db`
/// across the internal network.
async fn check_traffic(db: &Sandbox, web_back: Ipv4Addr) -> Result<()> {
    let via_host = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), PUBLISHED);
    let answer = ask(via_host)?;
    println!("ok: 127.0.0.1:{PUBLISHED} (published) answers {answer:?}");
    let direct = SocketAddr::new(IpAddr::V4(web_back), LISTENER);
    let answer = db.netns().run(move || ask(direct)).await??;
    println!("ok: from db, {direct} answers {answer:?}");
    Ok(())
}

fn ask(addr: SocketAddr) -> Result<String> {
    let mut stream =
        TcpStream::connect_timeout(&addr, TIMEOUT).with_context(|| format!("connect to {addr}"))?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    if !answer.starts_with("hello from ") {
        bail!("{addr} answered {answer:?}");
    }
    Ok(answer.trim().to_owned())
}

/// `__serve`: the container's process. Answers every connection with its hostname.
fn serve(port: u16) -> Result<()> {
    let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))?;
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "ready")?;
    stdout.flush()?;
    for conn in listener.incoming() {
        let mut conn = conn?;
        // A peer that went away is its problem, not the listener's.
        let _ = writeln!(conn, "hello from {}", hostname.trim());
    }
    Ok(())
}
