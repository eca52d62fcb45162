//! The peers' inputs, rendered from data: netavark's JSON, the CNI plugin chain's configs, the
//! `ip -batch` and `nft -f` scripts; and running a peer's process inside a namespace.
//!
//! Each peer gets what a runtime would give it: netavark the JSON podman writes on its stdin
//! (static IPs, because podman does the IPAM), the CNI plugins a chain of bridge + host-local +
//! portmap with `prevResult` threaded through, as containerd and CRI-O run them.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::{Context, Result, bail};
use cnm_sandbox::NetNs;
use ipnet::Ipv4Net;
use serde_json::{Value, json};

/// One published port or port range (`range` ports from each start).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortSpec {
    /// First host port.
    pub host_port: u16,
    /// First container port.
    pub container_port: u16,
    /// How many consecutive ports (1 for a single port).
    pub range: u16,
}

impl PortSpec {
    /// One TCP port.
    pub fn single(host_port: u16, container_port: u16) -> PortSpec {
        PortSpec {
            host_port,
            container_port,
            range: 1,
        }
    }

    /// Every (host, container) pair, one per port.
    pub fn each(&self) -> impl Iterator<Item = (u16, u16)> + '_ {
        (0..self.range).map(move |i| (self.host_port + i, self.container_port + i))
    }

    /// `docker run -p` syntax, as cnm parses it.
    pub fn docker_syntax(&self) -> String {
        if self.range <= 1 {
            format!("{}:{}/tcp", self.host_port, self.container_port)
        } else {
            format!(
                "{}-{}:{}-{}/tcp",
                self.host_port,
                self.host_port + self.range - 1,
                self.container_port,
                self.container_port + self.range - 1
            )
        }
    }
}

/// A bridge network as the peers are told about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeNet {
    /// Network name.
    pub name: String,
    /// Bridge interface name.
    pub bridge: String,
    /// The subnet.
    pub subnet: Ipv4Net,
    /// The gateway (the bridge's address).
    pub gateway: Ipv4Addr,
}

impl BridgeNet {
    /// The `i`th container address of the subnet (after the gateway); `i` from 0.
    pub fn address(&self, i: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.gateway) + 1 + i)
    }
}

/// A 64-hex-digit id as podman makes them, derived from a name (stable, not random).
pub fn long_id(name: &str) -> String {
    // FNV-1a, repeated with a counter to fill 64 hex digits.
    let mut out = String::with_capacity(64);
    let mut salt = 0u64;
    while out.len() < 64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ salt;
        for b in name.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        out.push_str(&format!("{h:016x}"));
        salt += 1;
    }
    out
}

/// netavark's `setup`/`teardown` input for one container on one bridge network.
pub fn netavark_config(
    container: &str,
    net: &BridgeNet,
    ip: Ipv4Addr,
    ports: &[PortSpec],
) -> Value {
    let port_mappings: Vec<Value> = ports
        .iter()
        .map(|p| {
            json!({
                "host_ip": "",
                "container_port": p.container_port,
                "host_port": p.host_port,
                "range": p.range,
                "protocol": "tcp",
            })
        })
        .collect();
    json!({
        "container_id": long_id(container),
        "container_name": container,
        "port_mappings": port_mappings,
        "networks": {
            net.name.as_str(): {
                "static_ips": [ip.to_string()],
                "interface_name": "eth0",
            }
        },
        "network_info": {
            net.name.as_str(): {
                "name": net.name,
                "id": long_id(&net.name),
                "driver": "bridge",
                "network_interface": net.bridge,
                "subnets": [{"subnet": net.subnet.to_string(), "gateway": net.gateway.to_string()}],
                "ipv6_enabled": false,
                "internal": false,
                "dns_enabled": false,
                "ipam_options": {"driver": "host-local"},
            }
        }
    })
}

/// The CNI spec version we speak to the plugins (containernetworking-plugins 1.1 knows it).
pub const CNI_VERSION: &str = "1.0.0";

/// The bridge plugin's config, with host-local IPAM keeping its leases under `data_dir`.
pub fn cni_bridge_config(net: &BridgeNet, data_dir: &Path) -> Value {
    json!({
        "cniVersion": CNI_VERSION,
        "name": net.name,
        "type": "bridge",
        "bridge": net.bridge,
        "isGateway": true,
        "ipMasq": true,
        "hairpinMode": true,
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": net.subnet.to_string(), "gateway": net.gateway.to_string()}]],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dataDir": data_dir.display().to_string(),
        }
    })
}

/// The portmap plugin's config, chained after the bridge (its result is `prev_result`).
pub fn cni_portmap_config(net: &BridgeNet, ports: &[PortSpec], prev_result: &Value) -> Value {
    // portmap has no ranges: a runtime expands them to one mapping per port.
    let mappings: Vec<Value> = ports
        .iter()
        .flat_map(PortSpec::each)
        .map(|(host, ctr)| json!({"hostPort": host, "containerPort": ctr, "protocol": "tcp"}))
        .collect();
    json!({
        "cniVersion": CNI_VERSION,
        "name": net.name,
        "type": "portmap",
        "capabilities": {"portMappings": true},
        "snat": true,
        "runtimeConfig": {"portMappings": mappings},
        "prevResult": prev_result,
    })
}

/// The nftables table the `ip-batch` contender publishes ports in: one DNAT map, as cnm has.
pub const NFT_BASE: &str = "\
table ip bench {
  map ports { type inet_proto . inet_service : ipv4_addr . inet_service; }
  chain prerouting { type nat hook prerouting priority -100; policy accept;
    fib daddr type local dnat ip to meta l4proto . th dport map @ports
  }
  chain output { type nat hook output priority -100; policy accept;
    fib daddr type local dnat ip to meta l4proto . th dport map @ports
  }
  chain postrouting { type nat hook postrouting priority 100; policy accept;
    ip saddr 10.0.0.0/8 oifname != \"br*\" masquerade
  }
}
";

/// `nft -f` lines that add (or delete) the DNAT elements of `ports` to `ip`.
pub fn nft_ports_script(add: bool, ip: Ipv4Addr, ports: &[PortSpec]) -> String {
    let elements: Vec<String> = ports
        .iter()
        .map(|p| {
            if p.range <= 1 {
                format!("tcp . {} : {ip} . {}", p.host_port, p.container_port)
            } else {
                // A map cannot add an offset; an equal range maps each port to itself.
                p.each()
                    .map(|(h, c)| format!("tcp . {h} : {ip} . {c}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        })
        .collect();
    let verb = if add { "add" } else { "delete" };
    if !add {
        // Deleting takes keys only.
        let keys: Vec<String> = ports
            .iter()
            .flat_map(PortSpec::each)
            .map(|(h, _)| format!("tcp . {h}"))
            .collect();
        return format!("delete element ip bench ports {{ {} }}\n", keys.join(", "));
    }
    format!(
        "{verb} element ip bench ports {{ {} }}\n",
        elements.join(", ")
    )
}

/// The host side of an attach as `ip -batch` lines: namespace, veth with its peer born inside,
/// on the bridge, up.
pub fn ip_attach_host_script(sandbox: &str, veth: &str, bridge: &str) -> String {
    format!(
        "netns add {sandbox}\n\
         link add {veth} type veth peer name eth0 netns {sandbox}\n\
         link set {veth} master {bridge} up\n"
    )
}

/// The sandbox side of an attach as `ip -batch` lines (run with `ip -n SANDBOX`).
pub fn ip_attach_sandbox_script(addr: Ipv4Net, gateway: Ipv4Addr) -> String {
    format!(
        "link set lo up\n\
         addr add {addr} dev eth0\n\
         link set eth0 up\n\
         route add default via {gateway} dev eth0\n"
    )
}

/// A detach as `ip -batch` lines.
pub fn ip_detach_script(sandbox: &str, veth: &str) -> String {
    format!("link del {veth}\nnetns del {sandbox}\n")
}

/// Where the peers are, found once.
#[derive(Debug, Clone)]
pub struct Peers {
    /// Debian's netavark 1.4 (iptables).
    pub netavark_deb: Option<PathBuf>,
    /// netavark 1.17.2 built from crates.io (nftables).
    pub netavark_new: Option<PathBuf>,
    /// The CNI plugin directory, if bridge, host-local and portmap are all there.
    pub cni_dir: Option<PathBuf>,
    /// `iperf3`.
    pub iperf3: Option<PathBuf>,
    /// The `cnm` CLI and `cnmd`, or why they are not available.
    pub cli: Result<(PathBuf, PathBuf), String>,
    /// The bench's own dockerd (started by `docker::DockerEnv` when a scenario needs it), or
    /// the report's status line saying why Docker is not measured.
    pub docker: Result<DockerPeer, String>,
}

/// How to reach the bench's own dockerd with the docker CLI.
#[derive(Debug, Clone)]
pub struct DockerPeer {
    /// `unix://SOCKET`.
    pub host_arg: String,
    /// The CLI's configuration directory (`DOCKER_CONFIG`; never the user's `~/.docker`).
    pub config: PathBuf,
    /// A running container on the default bridge network, to connect to other networks.
    pub keeper: String,
    /// The busybox-static image.
    pub image: String,
}

impl DockerPeer {
    /// `docker -H SOCKET ARGS…` with its own configuration directory.
    pub fn cmd(&self, args: &[&str]) -> Cmd {
        docker_cli(&self.host_arg, &self.config, args)
    }
}

/// The docker CLI (Debian's, by path) against the daemon at `host_arg` (dockerd or cnmd).
pub fn docker_cli(host_arg: &str, config: &Path, args: &[&str]) -> Cmd {
    let mut all = vec!["-H", host_arg];
    all.extend_from_slice(args);
    Cmd::new(cnm_testkit::dockerd::DOCKER, &all).env("DOCKER_CONFIG", config.display().to_string())
}

impl Peers {
    /// Looks in the standard places and under `peers_dir` (xtask's build of netavark).
    pub fn find(peers_dir: &Path, cli: Result<(PathBuf, PathBuf), String>) -> Peers {
        let exists = |p: PathBuf| p.is_file().then_some(p);
        let cni = PathBuf::from("/usr/lib/cni");
        let cni_ok = ["bridge", "host-local", "portmap"]
            .iter()
            .all(|p| cni.join(p).is_file());
        Peers {
            netavark_deb: exists(PathBuf::from("/usr/lib/podman/netavark")),
            netavark_new: exists(peers_dir.join("netavark-1.17.2/bin/netavark")),
            cni_dir: cni_ok.then_some(cni),
            iperf3: ["/usr/bin/iperf3", "/usr/local/bin/iperf3"]
                .iter()
                .map(PathBuf::from)
                .find(|p| p.is_file()),
            cli,
            docker: Err("not measured: no scenario of this run needed dockerd".into()),
        }
    }
}

/// A command to run inside a namespace: program, arguments, environment, stdin.
#[derive(Debug, Clone, Default)]
pub struct Cmd {
    /// The program.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// What to write on its stdin.
    pub stdin: Option<Vec<u8>>,
}

impl Cmd {
    /// A command with arguments.
    pub fn new(program: impl Into<PathBuf>, args: &[&str]) -> Cmd {
        Cmd {
            program: program.into(),
            args: args.iter().map(|s| (*s).to_owned()).collect(),
            ..Cmd::default()
        }
    }

    /// Adds an environment variable.
    pub fn env(mut self, key: &str, value: impl Into<String>) -> Cmd {
        self.env.push((key.to_owned(), value.into()));
        self
    }

    /// Sets stdin.
    pub fn stdin(mut self, data: impl Into<Vec<u8>>) -> Cmd {
        self.stdin = Some(data.into());
        self
    }

    fn shown(&self) -> String {
        format!("{} {}", self.program.display(), self.args.join(" "))
    }

    /// Runs it to completion from a thread inside `ns` (the child inherits the thread's
    /// namespace); fails with its stderr/stdout when it exits non-zero.
    pub async fn run_in(self, ns: &NetNs) -> Result<Output> {
        let shown = self.shown();
        let out = ns
            .run(move || self.spawn_and_wait())
            .await
            .with_context(|| format!("failed to enter {ns} for {shown}"))?
            .with_context(|| format!("failed to run {shown}"))?;
        if !out.status.success() {
            bail!(
                "{shown} exited with {}: {}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                String::from_utf8_lossy(&out.stdout).trim()
            );
        }
        Ok(out)
    }

    fn spawn_and_wait(self) -> std::io::Result<Output> {
        let mut child = Command::new(&self.program)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        if let (Some(data), Some(mut pipe)) = (self.stdin, child.stdin.take()) {
            pipe.write_all(&data)?;
        }
        child.wait_with_output()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net() -> BridgeNet {
        BridgeNet {
            name: "benchnet".into(),
            bridge: "benchbr0".into(),
            subnet: "10.89.0.0/16".parse().unwrap(),
            gateway: "10.89.0.1".parse().unwrap(),
        }
    }

    #[test]
    fn netavark_config_has_podmans_shape() {
        let cfg = netavark_config(
            "ctr1",
            &net(),
            "10.89.0.5".parse().unwrap(),
            &[
                PortSpec::single(8080, 80),
                PortSpec {
                    host_port: 30000,
                    container_port: 30000,
                    range: 1000,
                },
            ],
        );
        assert_eq!(cfg["container_name"], "ctr1");
        assert_eq!(cfg["container_id"].as_str().unwrap().len(), 64);
        assert_eq!(cfg["networks"]["benchnet"]["static_ips"][0], "10.89.0.5");
        assert_eq!(cfg["networks"]["benchnet"]["interface_name"], "eth0");
        let info = &cfg["network_info"]["benchnet"];
        assert_eq!(info["driver"], "bridge");
        assert_eq!(info["network_interface"], "benchbr0");
        assert_eq!(info["subnets"][0]["subnet"], "10.89.0.0/16");
        assert_eq!(info["subnets"][0]["gateway"], "10.89.0.1");
        assert_eq!(info["id"].as_str().unwrap().len(), 64);
        let ports = cfg["port_mappings"].as_array().unwrap();
        assert_eq!(ports.len(), 2);
        assert_eq!(ports[0]["host_port"], 8080);
        assert_eq!(ports[0]["container_port"], 80);
        assert_eq!(ports[0]["protocol"], "tcp");
        assert_eq!(ports[1]["range"], 1000);
    }

    #[test]
    fn cni_chain_threads_prev_result_and_expands_ranges() {
        let bridge = cni_bridge_config(&net(), Path::new("/tmp/x/cni"));
        assert_eq!(bridge["type"], "bridge");
        assert_eq!(bridge["bridge"], "benchbr0");
        assert_eq!(bridge["ipam"]["type"], "host-local");
        assert_eq!(bridge["ipam"]["dataDir"], "/tmp/x/cni");
        assert_eq!(bridge["ipam"]["ranges"][0][0]["subnet"], "10.89.0.0/16");
        let prev = json!({"cniVersion": CNI_VERSION, "ips": [{"address": "10.89.0.2/16"}]});
        let pm = cni_portmap_config(
            &net(),
            &[
                PortSpec::single(8080, 80),
                PortSpec {
                    host_port: 9000,
                    container_port: 9000,
                    range: 3,
                },
            ],
            &prev,
        );
        assert_eq!(pm["type"], "portmap");
        assert_eq!(pm["name"], bridge["name"]);
        assert_eq!(pm["prevResult"], prev);
        assert_eq!(pm["capabilities"]["portMappings"], true);
        let maps = pm["runtimeConfig"]["portMappings"].as_array().unwrap();
        assert_eq!(maps.len(), 4);
        assert_eq!(
            maps[0],
            json!({"hostPort": 8080, "containerPort": 80, "protocol": "tcp"})
        );
        assert_eq!(maps[3]["hostPort"], 9002);
    }

    #[test]
    fn scripts_render_the_same_work() {
        assert_eq!(
            ip_attach_host_script("sb1", "vb1", "br0"),
            "netns add sb1\nlink add vb1 type veth peer name eth0 netns sb1\nlink set vb1 master br0 up\n"
        );
        let inside = ip_attach_sandbox_script(
            "10.89.0.2/16".parse().unwrap(),
            "10.89.0.1".parse().unwrap(),
        );
        assert!(inside.contains("addr add 10.89.0.2/16 dev eth0\n"));
        assert!(inside.contains("route add default via 10.89.0.1 dev eth0\n"));
        assert_eq!(
            ip_detach_script("sb1", "vb1"),
            "link del vb1\nnetns del sb1\n"
        );
        let ip: Ipv4Addr = "10.89.0.2".parse().unwrap();
        assert_eq!(
            nft_ports_script(true, ip, &[PortSpec::single(8080, 80)]),
            "add element ip bench ports { tcp . 8080 : 10.89.0.2 . 80 }\n"
        );
        assert_eq!(
            nft_ports_script(false, ip, &[PortSpec::single(8080, 80)]),
            "delete element ip bench ports { tcp . 8080 }\n"
        );
    }

    #[test]
    fn port_specs_speak_docker_syntax_and_ids_are_stable() {
        assert_eq!(PortSpec::single(8080, 80).docker_syntax(), "8080:80/tcp");
        let range = PortSpec {
            host_port: 30000,
            container_port: 30000,
            range: 1000,
        };
        assert_eq!(range.docker_syntax(), "30000-30999:30000-30999/tcp");
        assert_eq!(range.each().count(), 1000);
        assert_eq!(long_id("a"), long_id("a"));
        assert_ne!(long_id("a"), long_id("b"));
        assert_eq!(net().address(0).to_string(), "10.89.0.2");
    }
}
