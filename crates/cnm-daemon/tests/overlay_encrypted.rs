//! Encrypted overlay networks (`-o encrypted`) end to end: a real etcd and hosts as network
//! namespaces, each running its own cnmd, joined by an underlay bridge in a namespace of the
//! test's (the fixture of `overlay.rs`, with extra cnmd flags). Each cnmd uses the kernel's
//! WireGuard if the kernel has it, else cnm's userspace WireGuard (boringtun over a TUN
//! device): the test checks the choice against what the kernel makes in a namespace of its
//! own. The kernel these tests were written on has no WireGuard, so the userspace path is the
//! one they exercised.
//!
//! What is proven with packets: sandboxes on two hosts reach each other (ICMP, TCP) over the
//! encrypted network; a capture on the underlay (an AF_PACKET socket in its namespace) never
//! sees a marker the sandboxes exchange there, only WireGuard datagrams, while the same marker
//! sent over a plain overlay is seen (the capture works); a plain VXLAN datagram injected from
//! the underlay into the encrypted network's VNI (over IPv4 and over IPv6 to the host's tunnel
//! address) never reaches the sandbox, while one injected into the plain network does; after a
//! rotation of the static key the published key is new and traffic flows; after a host's cnmd
//! is killed and restarted, traffic flows again; after `nft flush ruleset` on a host, cnmd
//! puts the guard back, plain VXLAN injected into the encrypted network stays out (while with
//! cnmd stopped, so that nothing repairs the flush, the same injection gets in) and the
//! encrypted traffic flows again.
#![allow(clippy::print_stderr)]

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use cnm_sandbox::{LinkKind, LinkSpec, NetNs, Netlink};
use cnm_testkit::etcd::EtcdServer;
use cnm_testkit::{TestHost, probe};
use common::Client;
use serde_json::json;

const UNDERLAY: &str = "192.168.77";
const ETCD_ADDR: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 254);
const TTL: Duration = Duration::from_secs(3);
const WG_PORT: u16 = 51820;
const MARK_PORT: u16 = 9999;

struct Host {
    test: TestHost,
    addr: IpAddr,
    socket: PathBuf,
    log: PathBuf,
    extra: Vec<String>,
    cnmd: Option<Child>,
}

impl Host {
    fn api(&self) -> Client {
        Client::new(&self.socket)
    }

    fn ns_path(&self) -> String {
        format!(
            "/proc/{}/fd/{}",
            std::process::id(),
            self.test
                .netns()
                .held_fd()
                .expect("a test host's namespace is held")
                .as_raw_fd()
        )
    }

    fn start(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new("nsenter")
            .arg(format!("--net={}", self.ns_path()))
            .arg("--")
            .arg(env!("CARGO_BIN_EXE_cnmd"))
            .arg("--socket")
            .arg(&self.socket)
            .arg("--run-dir")
            .arg(self.test.run_dir())
            .arg("--state-dir")
            .arg(self.test.state_dir())
            .args(["--cluster-store", &format!("etcd://{ETCD_ADDR}:2379")])
            .args(["--advertise-addr", &self.addr.to_string()])
            .args(["--cluster-lease-ttl", &TTL.as_secs().to_string()])
            .args(["--log-level", "info,cnm_driver_overlay=debug"])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("nsenter cnmd")?;
        self.cnmd = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::os::unix::net::UnixStream::connect(&self.socket).is_err() {
            if let Some(status) = self.cnmd.as_mut().context("cnmd")?.try_wait()? {
                bail!("cnmd exited ({status}):\n{}", self.log_text());
            }
            ensure!(
                Instant::now() < deadline,
                "cnmd silent:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    fn kill(&mut self) -> Result<()> {
        if let Some(mut c) = self.cnmd.take() {
            c.kill()?;
            c.wait()?;
        }
        Ok(())
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn run(&self, argv: &[&str]) -> Result<String> {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", self.ns_path()))
            .arg("--")
            .args(argv)
            .output()?;
        ensure!(out.status.success(), "{argv:?}: {out:?}");
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Some(c) = self.cnmd.as_mut() {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

struct Cluster {
    underlay: NetNs,
    etcd: EtcdServer,
    hosts: Vec<Host>,
    _dir: tempfile::TempDir,
}

/// `extra[i]`: more cnmd flags for host i+1.
async fn cluster(extra: &[&[&str]]) -> Result<Cluster> {
    let underlay = NetNs::create_anonymous().await?;
    let nl = Netlink::connect(&underlay).await?;
    nl.loopback_up().await?;
    let mut br = LinkSpec::new("under0".parse()?, LinkKind::Bridge);
    br.up = true;
    nl.create_link(&br).await?;
    let br = nl.link("under0").await?.context("under0")?;
    nl.add_address(br.index, format!("{ETCD_ADDR}/24").parse()?)
        .await?;
    // An address of the attacker's for the IPv6 injection.
    nl.add_address(br.index, "fd00:77::fe/64".parse()?).await?;
    let etcd = EtcdServer::start(&underlay, ETCD_ADDR.into()).await?;
    let dir = tempfile::tempdir()?;
    let mut hosts = Vec::new();
    for (i, flags) in extra.iter().enumerate() {
        let i = i + 1;
        let test = TestHost::new().await?;
        let mut veth = LinkSpec::new(
            format!("ul{i}").parse()?,
            LinkKind::Veth {
                peer_name: "eth0".parse()?,
                peer_ns: Some(test.netns().clone()),
                peer_mac: None,
                peer_mtu: None,
                peer_up: true,
            },
        );
        veth.master = Some(br.index);
        veth.up = true;
        nl.create_link(&veth).await?;
        let eth0 = test.netlink().link("eth0").await?.context("eth0")?;
        let addr: IpAddr = format!("{UNDERLAY}.{i}").parse()?;
        test.netlink()
            .add_address(eth0.index, format!("{addr}/24").parse()?)
            .await?;
        let mut host = Host {
            addr,
            socket: dir.path().join(format!("h{i}.sock")),
            log: dir.path().join(format!("h{i}.log")),
            extra: flags.iter().map(|s| (*s).to_owned()).collect(),
            test,
            cnmd: None,
        };
        host.start()?;
        hosts.push(host);
    }
    Ok(Cluster {
        underlay,
        etcd,
        hosts,
        _dir: dir,
    })
}

async fn until<F, Fut>(within: Duration, what: &str, mut check: F) -> Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let start = Instant::now();
    let mut last = None;
    while start.elapsed() < within {
        match check().await {
            Ok(true) => return Ok(start.elapsed()),
            Ok(false) => {}
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("{what}: not within {within:?} (last error: {last:?})")
}

async fn sandbox(api: &Client, name: &str) -> Result<NetNs> {
    let sb = api
        .expect(
            "POST",
            "/cnm/v1/sandboxes",
            Some(json!({"Name": name})),
            201,
        )
        .await?;
    Ok(NetNs::open(sb["Key"].as_str().context("Key")?)?)
}

/// Connects sandbox `name` to `net`; returns its IPv4 address and MAC.
async fn connect(api: &Client, name: &str, net: &str) -> Result<(Ipv4Addr, [u8; 6])> {
    let sb = api
        .expect(
            "POST",
            &format!("/cnm/v1/sandboxes/{name}/connect"),
            Some(json!({"Network": net})),
            200,
        )
        .await?;
    let ep = sb["Endpoints"]
        .as_array()
        .context("Endpoints")?
        .iter()
        .find(|e| e["Network"] == net || e["NetworkName"] == net)
        .context("the endpoint")?
        .clone();
    let cidr = ep["IPv4Address"].as_str().context("IPv4Address")?;
    let ip = cidr.split('/').next().context("address")?.parse()?;
    let mac = ep["MacAddress"].as_str().context("MacAddress")?;
    let mut m = [0u8; 6];
    for (o, part) in m.iter_mut().zip(mac.split(':')) {
        *o = u8::from_str_radix(part, 16)?;
    }
    Ok((ip, m))
}

async fn create(api: &Client, name: &str, subnet: &str, encrypted: bool) -> Result<()> {
    let mut body = json!({"Name": name, "Driver": "overlay",
                          "IPAM": {"Config": [{"Subnet": subnet}]}});
    if encrypted {
        body["Options"] = json!({"encrypted": ""});
    }
    api.expect("POST", "/networks/create", Some(body), 201)
        .await?;
    Ok(())
}

/// A UDP socket in `ns` bound to `bind`, reading with a short timeout.
async fn udp_in(ns: &NetNs, bind: SocketAddr) -> Result<UdpSocket> {
    let s = ns
        .run(move || -> std::io::Result<UdpSocket> {
            let s = UdpSocket::bind(bind)?;
            s.set_read_timeout(Some(Duration::from_millis(200)))?;
            Ok(s)
        })
        .await??;
    Ok(s)
}

/// Whether `sock` receives a datagram containing `marker` within `within`.
fn receives(sock: &UdpSocket, marker: &[u8], within: Duration) -> bool {
    let mut buf = [0u8; 2048];
    let start = Instant::now();
    while start.elapsed() < within {
        if let Ok((n, _)) = sock.recv_from(&mut buf)
            && buf[..n].windows(marker.len()).any(|w| w == marker)
        {
            return true;
        }
    }
    false
}

/// Sends `marker` from `from` to `to:MARK_PORT` until `rx` gets it (at most 15 s).
async fn deliver(from: &NetNs, to: Ipv4Addr, rx: &UdpSocket, marker: &[u8]) -> Result<()> {
    let tx = udp_in(from, SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0)).await?;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(15) {
        tx.send_to(marker, (to, MARK_PORT))?;
        if receives(rx, marker, Duration::from_millis(300)) {
            return Ok(());
        }
    }
    bail!(
        "{} never delivered to {to}",
        String::from_utf8_lossy(marker)
    )
}

/// An AF_PACKET socket seeing every frame on every interface of `ns` (the underlay).
async fn capture(ns: &NetNs) -> Result<socket2::Socket> {
    Ok(ns
        .run(|| -> std::io::Result<socket2::Socket> {
            const ETH_P_ALL: u16 = 0x0003;
            let s = socket2::Socket::new(
                socket2::Domain::PACKET,
                socket2::Type::RAW,
                Some(socket2::Protocol::from(i32::from(ETH_P_ALL.to_be()))),
            )?;
            s.set_recv_buffer_size(8 << 20)?;
            s.set_read_timeout(Some(Duration::from_millis(300)))?;
            Ok(s)
        })
        .await??)
}

/// What a capture saw: frames with the marker, UDP datagrams to the WireGuard port and to the
/// VXLAN port.
#[derive(Debug, Default)]
struct Seen {
    marker: usize,
    wireguard: usize,
    vxlan: usize,
}

/// Reads what `cap` queued, until it has nothing more (or 5 s).
fn drain_capture(cap: &socket2::Socket, marker: &[u8]) -> Seen {
    let mut seen = Seen::default();
    let mut buf = vec![0u8; 65_536];
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        let Ok(n) = std::io::Read::read(&mut &*cap, &mut buf) else {
            break;
        };
        let frame = &buf[..n];
        if frame.windows(marker.len()).any(|w| w == marker) {
            seen.marker += 1;
        }
        // Ethernet, IPv4, UDP: the destination port.
        if frame.len() >= 14 + 20 + 8 && frame[12..14] == [0x08, 0x00] && frame[14 + 9] == 17 {
            let ihl = usize::from(frame[14] & 0x0f) * 4;
            let udp = 14 + ihl;
            if frame.len() >= udp + 4 {
                match u16::from_be_bytes([frame[udp + 2], frame[udp + 3]]) {
                    WG_PORT => seen.wireguard += 1,
                    4789 => seen.vxlan += 1,
                    _ => {}
                }
            }
        }
    }
    seen
}

/// A VXLAN datagram (VNI `vni`) carrying an Ethernet frame to `mac`, IPv4 to `dst`, UDP to
/// [`MARK_PORT`] with `payload`.
fn vxlan_frame(vni: u32, mac: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x08, 0, 0, 0];
    p.extend_from_slice(&(vni << 8).to_be_bytes());
    p.extend_from_slice(&mac);
    p.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x99]);
    p.extend_from_slice(&[0x08, 0x00]);
    let total = (20 + 8 + payload.len()) as u16;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let mut sum: u32 = ip
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let ck = !(sum as u16);
    ip[10..12].copy_from_slice(&ck.to_be_bytes());
    p.extend_from_slice(&ip);
    p.extend_from_slice(&4242u16.to_be_bytes());
    p.extend_from_slice(&MARK_PORT.to_be_bytes());
    p.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    p
}

/// Sends `datagram` from the underlay namespace to `to`.
async fn inject(underlay: &NetNs, to: SocketAddr, datagram: Vec<u8>) -> Result<()> {
    underlay
        .run(move || -> std::io::Result<()> {
            let bind: SocketAddr = if to.is_ipv4() {
                (Ipv4Addr::UNSPECIFIED, 0).into()
            } else {
                (Ipv6Addr::UNSPECIFIED, 0).into()
            };
            let s = UdpSocket::bind(bind)?;
            for _ in 0..3 {
                s.send_to(&datagram, to)?;
            }
            Ok(())
        })
        .await??;
    Ok(())
}

fn tunnel_of(addr: IpAddr) -> Result<Ipv6Addr> {
    let IpAddr::V4(v4) = addr else {
        bail!("{addr} is not IPv4")
    };
    let o = v4.octets();
    Ok(Ipv6Addr::new(
        0xfd63,
        0x6e6d,
        0x7767,
        0,
        0,
        0,
        u16::from_be_bytes([o[0], o[1]]),
        u16::from_be_bytes([o[2], o[3]]),
    ))
}

/// `text` without its terminal colour sequences (`ESC [ … m`, as cnmd's log has them).
fn plain_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(ch) = chars.next() {
        if ch == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(ch);
        }
    }
    out
}

/// Whether this kernel creates a link of kind `wireguard` (tried in a throwaway namespace).
async fn kernel_has_wireguard() -> Result<bool> {
    let ns = NetNs::create_anonymous().await?;
    let nl = Netlink::connect(&ns).await?;
    match nl
        .create_link(&LinkSpec::new("wgprobe0".parse()?, LinkKind::Wireguard))
        .await
    {
        Ok(()) => Ok(true),
        Err(cnm_sandbox::SandboxError::Unsupported { .. }) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Routes host `i`'s tunnel address from the underlay namespace to host `i`'s underlay
/// interface (a static neighbour and a /128 route), and proves with a datagram to a control
/// listener on `control_port` that IPv6 sent there from the underlay arrives in host `i`.
async fn route_to_tunnel_addr(c: &Cluster, i: usize, control_port: u16) -> Result<Ipv6Addr> {
    let t = tunnel_of(c.hosts[i].addr)?;
    let eth0 = c.hosts[i]
        .test
        .netlink()
        .link("eth0")
        .await?
        .context("eth0")?;
    let mac = eth0.mac.context("eth0 MAC")?.to_string();
    let underlay = format!(
        "--net=/proc/{}/fd/{}",
        std::process::id(),
        c.underlay
            .held_fd()
            .expect("the underlay namespace is held")
            .as_raw_fd()
    );
    let ip = |args: &[&str]| -> Result<()> {
        let ok = Command::new("nsenter")
            .arg(&underlay)
            .args(["--", "ip", "-6"])
            .args(args)
            .status()?
            .success();
        ensure!(ok, "ip -6 {args:?} in the underlay");
        Ok(())
    };
    let ts = t.to_string();
    ip(&[
        "neigh",
        "replace",
        &ts,
        "lladdr",
        &mac,
        "dev",
        "under0",
        "nud",
        "permanent",
    ])?;
    ip(&["route", "replace", &format!("{t}/128"), "dev", "under0"])?;
    let control = udp_in(
        c.hosts[i].test.netns(),
        SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), control_port),
    )
    .await?;
    inject(
        &c.underlay,
        SocketAddr::new(t.into(), control_port),
        b"CONTROL-V6".to_vec(),
    )
    .await?;
    ensure!(
        receives(&control, b"CONTROL-V6", Duration::from_secs(3)),
        "an IPv6 datagram from the underlay to host {}'s tunnel address does not arrive: an \
         injection there would prove nothing",
        i + 1
    );
    Ok(t)
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn an_encrypted_overlay_carries_traffic_shows_no_plaintext_and_refuses_injected_vxlan()
-> Result<()> {
    let c = cluster(&[&[], &[]]).await?;
    let (h1, h2) = (c.hosts[0].api(), c.hosts[1].api());
    // VNI 4096 for the encrypted network, 4097 for the plain one.
    create(&h1, "enc", "10.77.0.0/24", true).await?;
    create(&h1, "plain", "10.78.0.0/24", false).await?;
    until(
        Duration::from_secs(10),
        "the networks on host 2",
        || async { Ok(h2.json("GET", "/networks/plain", None).await?.0 == 200) },
    )
    .await?;
    let (a1, b1) = (sandbox(&h1, "a1").await?, sandbox(&h2, "b1").await?);
    let (a2, b2) = (sandbox(&h1, "a2").await?, sandbox(&h2, "b2").await?);
    connect(&h1, "a1", "enc").await?;
    let (b1_ip, b1_mac) = connect(&h2, "b1", "enc").await?;
    connect(&h1, "a2", "plain").await?;
    let (b2_ip, b2_mac) = connect(&h2, "b2", "plain").await?;

    // The encrypted network's VXLAN device runs between tunnel addresses; its MTU leaves room
    // for VXLAN over IPv6 (70) and WireGuard (60).
    let vx = c.hosts[1].run(&["ip", "-d", "link", "show", "vx-001000"])?;
    let t2 = tunnel_of(c.hosts[1].addr)?;
    ensure!(
        vx.contains("vxlan id 4096") && vx.contains(&format!("local {t2}")),
        "{vx}"
    );
    let eth0 = Netlink::connect(&b1)
        .await?
        .link("eth0")
        .await?
        .context("eth0")?;
    ensure!(eth0.mtu == 1500 - 70 - 60, "MTU {} in b1", eth0.mtu);

    // Which WireGuard carries it: the kernel's if this kernel makes a `wireguard` link (tried
    // in a namespace of the test's own), else the userspace engine over a TUN device, chosen
    // once per host and logged with the kernel's reason.
    let kernel_wg = kernel_has_wireguard().await?;
    eprintln!("this kernel has WireGuard: {kernel_wg}");
    for (i, h) in c.hosts.iter().enumerate() {
        let log = plain_text(&h.log_text());
        let dev = h.run(&["ip", "-d", "link", "show", "cnm-wg0"])?;
        let started: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("WireGuard started"))
            .collect();
        ensure!(started.len() == 1, "host {}: {started:?}", i + 1);
        if kernel_wg {
            ensure!(
                started[0].contains("path=kernel") && dev.contains("wireguard"),
                "host {}: {started:?}\n{dev}",
                i + 1
            );
        } else {
            ensure!(
                started[0].contains("path=userspace")
                    && started[0].contains("no WireGuard support")
                    && dev.contains("tun type tun"),
                "host {}: {started:?}\n{dev}",
                i + 1
            );
        }
    }

    // ICMP and TCP, by IP, both ways.
    let _srv = cnm_testkit::server::TcpEchoServer::start(&b1, b1_ip.into(), 7000).await?;
    let took = until(
        Duration::from_secs(15),
        "a1 reaches b1 (encrypted)",
        || async { Ok(probe::icmp(&a1, b1_ip.into()).await.is_ok()) },
    )
    .await
    .with_context(|| c.hosts[0].log_text())?;
    eprintln!("encrypted: first echo after {took:?}");
    probe::tcp(&a1, b1_ip.into(), 7000)
        .await
        .context("TCP a1 → b1")?;

    // The capture: the marker crosses the encrypted network and is never on the underlay.
    let rx1 = udp_in(&b1, SocketAddr::new(b1_ip.into(), MARK_PORT)).await?;
    let cap = capture(&c.underlay).await?;
    let secret = b"MARKER-ENCRYPTED-4f9a1c";
    deliver(&a1, b1_ip, &rx1, secret).await?;
    let seen = drain_capture(&cap, secret);
    eprintln!("underlay while the encrypted network carried the marker: {seen:?}");
    ensure!(
        seen.marker == 0,
        "the marker crossed the underlay in clear: {seen:?}"
    );
    ensure!(seen.vxlan == 0, "plain VXLAN on the underlay: {seen:?}");
    ensure!(seen.wireguard > 0, "no WireGuard datagram seen: {seen:?}");
    drop(cap);

    // The same on the plain network: the capture sees the marker.
    let rx2 = udp_in(&b2, SocketAddr::new(b2_ip.into(), MARK_PORT)).await?;
    let cap = capture(&c.underlay).await?;
    let clear = b"MARKER-PLAIN-77d0e3";
    deliver(&a2, b2_ip, &rx2, clear).await?;
    let seen = drain_capture(&cap, clear);
    eprintln!("underlay while the plain network carried the marker: {seen:?}");
    ensure!(
        seen.marker > 0 && seen.vxlan > 0,
        "the capture missed the plain marker: {seen:?}"
    );
    drop(cap);

    // Injection from the underlay. Plain network: delivered (the method works).
    let h2_ul = SocketAddr::new(c.hosts[1].addr, 4789);
    let src = Ipv4Addr::new(10, 78, 0, 99);
    inject(
        &c.underlay,
        h2_ul,
        vxlan_frame(4097, b2_mac, src, b2_ip, b"INJECT-PLAIN"),
    )
    .await?;
    ensure!(
        receives(&rx2, b"INJECT-PLAIN", Duration::from_secs(3)),
        "a VXLAN datagram injected into the plain network was not delivered: the injection \
         does not work"
    );
    // Encrypted network, over IPv4 to the underlay address: not delivered.
    let src = Ipv4Addr::new(10, 77, 0, 99);
    inject(
        &c.underlay,
        h2_ul,
        vxlan_frame(4096, b1_mac, src, b1_ip, b"INJECT-ENC-V4"),
    )
    .await?;
    // Over IPv6 to host 2's tunnel address, routed to its underlay interface: the datagram
    // reaches host 2 (a control listener there gets one), the sandbox does not.
    route_to_tunnel_addr(&c, 1, 5555).await?;
    inject(
        &c.underlay,
        SocketAddr::new(t2.into(), 4789),
        vxlan_frame(4096, b1_mac, src, b1_ip, b"INJECT-ENC-V6"),
    )
    .await?;
    ensure!(
        !receives(&rx1, b"INJECT-ENC", Duration::from_secs(3)),
        "plain VXLAN injected from the underlay reached the encrypted network"
    );
    // The encrypted network still works.
    deliver(&a1, b1_ip, &rx1, b"STILL-THERE").await?;
    Ok(())
}

/// The published public key of host `addr`'s WireGuard, read from etcd.
async fn published_key(etcd: &EtcdServer, addr: IpAddr) -> Result<String> {
    let out = etcd.etcdctl(&["get", "--prefix", ""]).await?;
    let want = format!("\"endpoint\":\"{addr}:{WG_PORT}\"");
    for line in out.lines() {
        if line.contains("public_key") && line.contains(&want) {
            let v: serde_json::Value = serde_json::from_str(line)?;
            return Ok(v["value"]["public_key"]
                .as_str()
                .context("public_key")?
                .to_owned());
        }
    }
    bail!("no WireGuard fact of {addr} in etcd:\n{out}")
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn an_encrypted_overlay_survives_key_rotation_and_a_restarted_host() -> Result<()> {
    // Host 1 replaces its static key every 4 s.
    let mut c = cluster(&[&["--wireguard-key-rotation", "4"], &[]]).await?;
    let (h1, h2) = (c.hosts[0].api(), c.hosts[1].api());
    create(&h1, "enc", "10.77.0.0/24", true).await?;
    until(Duration::from_secs(10), "the network on host 2", || async {
        Ok(h2.json("GET", "/networks/enc", None).await?.0 == 200)
    })
    .await?;
    let a = sandbox(&h1, "a").await?;
    let b = sandbox(&h2, "b").await?;
    let (a_ip, _) = connect(&h1, "a", "enc").await?;
    let (b_ip, _) = connect(&h2, "b", "enc").await?;
    let _srv = cnm_testkit::server::TcpEchoServer::start(&b, b_ip.into(), 7000).await?;
    until(Duration::from_secs(15), "a reaches b", || async {
        Ok(probe::icmp(&a, b_ip.into()).await.is_ok())
    })
    .await?;
    // The key file is private.
    let key_file = c.hosts[0].test.state_dir().join("overlay/wireguard.key");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key_file)?.permissions());
    ensure!(mode & 0o777 == 0o600, "key file mode {mode:o}");

    // A rotation: a new published key, and traffic both ways again.
    let k0 = published_key(&c.etcd, c.hosts[0].addr).await?;
    until(Duration::from_secs(20), "host 1's key rotated", || async {
        Ok(published_key(&c.etcd, c.hosts[0].addr).await? != k0)
    })
    .await?;
    let rotated = Instant::now();
    for (from, to) in [(&a, b_ip), (&b, a_ip)] {
        until(
            Duration::from_secs(10),
            "traffic after the rotation",
            || async { Ok(probe::icmp(from, to.into()).await.is_ok()) },
        )
        .await?;
    }
    probe::tcp(&a, b_ip.into(), 7000)
        .await
        .context("TCP after the rotation")?;
    eprintln!(
        "traffic both ways {:?} after the new key was published",
        rotated.elapsed()
    );

    // Host 2's cnmd killed and restarted: its TUN device went with it; it comes back with
    // the same key (kept in its state dir), and traffic flows again.
    let k2 = published_key(&c.etcd, c.hosts[1].addr).await?;
    c.hosts[1].kill()?;
    ensure!(
        probe::Probe::new()
            .timeout(Duration::from_millis(500))
            .icmp(&a, b_ip.into())
            .await
            .is_err(),
        "b reachable while host 2's cnmd is dead"
    );
    c.hosts[1].start()?;
    let back = until(
        Duration::from_secs(20),
        "traffic after host 2's restart",
        || async {
            Ok(probe::icmp(&a, b_ip.into()).await.is_ok()
                && probe::icmp(&b, a_ip.into()).await.is_ok())
        },
    )
    .await
    .with_context(|| c.hosts[1].log_text())?;
    eprintln!("traffic again {back:?} after host 2's cnmd answered");
    probe::tcp(&a, b_ip.into(), 7000)
        .await
        .context("TCP after the restart")?;
    ensure!(
        published_key(&c.etcd, c.hosts[1].addr).await? == k2,
        "host 2 kept its key across the restart"
    );
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn the_encrypted_networks_guard_comes_back_after_a_flush_and_plain_vxlan_stays_out()
-> Result<()> {
    let c = cluster(&[&[], &[]]).await?;
    let (h1, h2) = (c.hosts[0].api(), c.hosts[1].api());
    create(&h1, "enc", "10.77.0.0/24", true).await?;
    until(Duration::from_secs(10), "the network on host 2", || async {
        Ok(h2.json("GET", "/networks/enc", None).await?.0 == 200)
    })
    .await?;
    let a = sandbox(&h1, "a").await?;
    let b = sandbox(&h2, "b").await?;
    connect(&h1, "a", "enc").await?;
    let (b_ip, b_mac) = connect(&h2, "b", "enc").await?;
    let rx = udp_in(&b, SocketAddr::new(b_ip.into(), MARK_PORT)).await?;
    deliver(&a, b_ip, &rx, b"BEFORE-FLUSH").await?;
    let t2 = route_to_tunnel_addr(&c, 1, 5556).await?;
    let src = Ipv4Addr::new(10, 77, 0, 99);

    // The control: with host 2's cnmd stopped (SIGSTOP: nothing repairs the flush), plain
    // VXLAN injected the same way does reach the sandbox: it is the guard that keeps it out.
    let pid = nix::unistd::Pid::from_raw(c.hosts[1].cnmd.as_ref().context("cnmd")?.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP)?;
    let unguarded = async {
        c.hosts[1].run(&["nft", "flush", "ruleset"])?;
        inject(
            &c.underlay,
            SocketAddr::new(t2.into(), 4789),
            vxlan_frame(4096, b_mac, src, b_ip, b"INJECT-UNGUARDED"),
        )
        .await?;
        Ok::<_, anyhow::Error>(receives(&rx, b"INJECT-UNGUARDED", Duration::from_secs(3)))
    }
    .await;
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT)?;
    ensure!(
        unguarded?,
        "plain VXLAN to the tunnel address did not arrive even without the guard: the checks \
         below would prove nothing"
    );

    // Round 1 repairs the flush above once cnmd runs again; round 2 is a flush while it runs.
    for round in 1..=2 {
        // Someone flushes host 2's whole ruleset; cnmd's firewall puts its tables back, the
        // encrypted network's guard with them (waited for: a readiness probe, not a sleep).
        if round == 2 {
            c.hosts[1].run(&["nft", "flush", "ruleset"])?;
        }
        until(
            Duration::from_secs(5),
            "the guard back after the flush",
            || async {
                let rules = c.hosts[1].run(&["nft", "list", "ruleset"])?;
                Ok(rules.contains("wg_guard")
                    && rules.contains("encrypted_ports")
                    && rules.contains("elements = { 4789 }"))
            },
        )
        .await
        .with_context(|| c.hosts[1].log_text())?;

        // Plain VXLAN from the underlay to the encrypted network's VNI, to host 2's tunnel
        // address (where it would reach the VXLAN device): not delivered.
        let marker = format!("INJECT-AFTER-FLUSH-{round}");
        inject(
            &c.underlay,
            SocketAddr::new(t2.into(), 4789),
            vxlan_frame(4096, b_mac, src, b_ip, marker.as_bytes()),
        )
        .await?;
        ensure!(
            !receives(&rx, marker.as_bytes(), Duration::from_secs(3)),
            "plain VXLAN injected from the underlay reached the encrypted network after a flush \
             (round {round})"
        );
        // And the encrypted traffic flows again.
        deliver(&a, b_ip, &rx, format!("AFTER-FLUSH-{round}").as_bytes()).await?;
    }
    Ok(())
}
