//! cnm's embedded DNS resolver: containers find each other by name, and reach the outside
//! through the host's resolvers, as behind Docker's 127.0.0.11.
//!
//! **Owns**
//! - the record tables: A/AAAA for endpoint names, aliases and `name.network`, PTR for their
//!   addresses, scoped to the networks the asking sandbox is on ([`Resolver::add_endpoint`]);
//! - one listener per sandbox at `127.0.0.11:53`, UDP and TCP, bound inside the sandbox's own
//!   namespace ([`Resolver::attach_sandbox`]);
//! - forwarding of every other name to the upstream servers: the sandbox's own (`--dns`), its
//!   networks', or the host's resolv.conf (followed as it changes), queried from the host's
//!   namespace; hedged, with a memory of silent upstreams, bounded, and never for a sandbox that
//!   is only on internal networks (CVE-2024-29018);
//! - an optional listener on the host answering `name.network[.<domain>]` for every network
//!   ([`Resolver::listen_on_host`], moby#27790);
//! - a sandbox's resolv.conf as Docker writes it ([`sandbox_resolv_conf`]).
//!
//! **Does not**
//! - run programs or touch the firewall: the listeners bind 127.0.0.11 inside each sandbox,
//!   where 127.0.0.0/8 is local on `lo`, so no NAT rule is needed;
//! - persist anything: the controller is the source of truth and replays its records after a
//!   restart (`upsert_network`, `attach_sandbox`, `add_endpoint` for what it adopted);
//! - write files (cnm-sandbox's `ResolvConf::write` does) or register with systemd-resolved.
//!
//! # How the controller drives it
//!
//! | controller event | call |
//! |---|---|
//! | start / reload | [`Resolver::new`]; then, per record, the calls below |
//! | network create (and reload) | [`Resolver::upsert_network`] (name, subnets, internal, servers) |
//! | network delete | [`Resolver::remove_network`] |
//! | sandbox create (and reload, restart) | [`sandbox_resolv_conf`] → write `file`, then [`Resolver::attach_sandbox`] with `dns` |
//! | endpoint join | [`Resolver::add_endpoint`] (after the interface is up) |
//! | endpoint leave | [`Resolver::remove_endpoint`] (before the interface goes) |
//! | sandbox delete | [`Resolver::detach_sandbox`] |
//! | daemon option `--dns-listen ADDR` | [`Resolver::listen_on_host`] |
//!
//! Record calls are synchronous and O(log n): the next query sees them (no cache, no polling,
//! TTL 0 by default). `attach_sandbox` is async because the sockets are created on a
//! short-lived thread inside the sandbox's namespace; they are then served by tokio tasks.
//!
//! # One listener per sandbox
//!
//! Each attached sandbox costs two sockets (UDP, TCP), two idle tokio tasks and about 5 KiB of
//! buffers; nothing else runs until a query arrives. A query is answered inline on the UDP task
//! when local; forwarded ones get their own task. The alternative, one host socket reached by
//! DNAT from every sandbox, needs `route_localnet` and nftables rules per sandbox, exposes a
//! host socket to every network, and loses the sandbox's identity behind the NAT; binding
//! inside the namespace needs neither, and 127.0.0.11 is then reachable from that sandbox only.
//!
//! # The host resolver
//!
//! `listen_on_host("127.0.0.153:53")` answers `web.front` and `web.front.cnm`. Point the host's
//! resolver at it for the cnm domain:
//!
//! ```text
//! # systemd-resolved (per link; a dummy or the cnm bridge will do):
//! resolvectl dns cnm0 127.0.0.153 && resolvectl domain cnm0 '~cnm'
//! # dnsmasq:
//! server=/cnm/127.0.0.153
//! # by hand:
//! dig @127.0.0.153 web.front
//! ```
//!
//! # Example
//!
//! ```no_run
//! use cnm_dns::{EndpointDns, NetworkDns, Resolver, ResolverConfig, sandbox_resolv_conf, DnsOverrides};
//! use cnm_sandbox::{NetNs, ResolvConf};
//! # async fn demo(sandbox_ns: NetNs) -> Result<(), Box<dyn std::error::Error>> {
//! let resolver = Resolver::new(ResolverConfig::new(NetNs::current()?))?;
//! resolver.upsert_network("n1", &NetworkDns::new("front").subnet("172.18.0.0/16".parse()?))?;
//! let host = ResolvConf::parse(&std::fs::read_to_string("/etc/resolv.conf")?);
//! let rc = sandbox_resolv_conf(&host, &DnsOverrides::default());
//! rc.file.write("/run/cnm/sandboxes/c1/resolv.conf".as_ref())?;
//! resolver.attach_sandbox("c1", &sandbox_ns, rc.dns).await?;
//! resolver.add_endpoint(
//!     "n1",
//!     &EndpointDns::new("ep1", "c1", "web").alias("www").address("172.18.0.2".parse()?),
//! )?;
//! // Inside c1: `getent hosts web`, `getent hosts www.front`, `dig -x 172.18.0.2` all answer.
//! resolver.remove_endpoint("n1", "ep1");
//! resolver.detach_sandbox("c1");
//! # Ok(()) }
//! ```
//!
//! ```
//! use cnm_dns::{DnsOverrides, sandbox_resolv_conf};
//! use cnm_sandbox::ResolvConf;
//! let host = ResolvConf::parse("nameserver 127.0.0.53\nsearch corp.example\noptions edns0\n");
//! let rc = sandbox_resolv_conf(&host, &DnsOverrides::default());
//! assert_eq!(rc.file.render(), "search corp.example\nnameserver 127.0.0.11\noptions edns0 ndots:0\n");
//! ```

mod answer;
mod error;
mod forward;
mod name;
mod records;
mod resolvconf;
mod resolver;
mod server;
mod wire;

pub use error::DnsError;
pub use records::{EndpointDns, NetworkDns, SandboxDns};
pub use resolvconf::{DnsOverrides, SANDBOX_RESOLVER, SandboxResolvConf, sandbox_resolv_conf};
pub use resolver::{DEFAULT_FALLBACK_SERVERS, Limits, Resolver, ResolverConfig, ResolverStats};
