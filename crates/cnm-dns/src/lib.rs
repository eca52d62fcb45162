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
//! - write files (cnm-sandbox's `ResolvConf::write` does), or register with systemd-resolved
//!   on its own: [`resolved::register`] does it when asked (cnmd asks, for its host listener).
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
//! # What a sandbox gets
//!
//! - Names (endpoint names, aliases, `name.network`) only from the networks it is on; the first
//!   network in join order that has the name answers, with every address of every endpoint under
//!   it, rotated per query. A name we know without an address of the asked family: NOERROR, no
//!   answer. PTR for its networks' addresses (`name.network.`); any other address inside one of
//!   our subnets: NXDOMAIN, never forwarded.
//! - Everything else is forwarded to, in order of precedence: the sandbox's own servers
//!   (`--dns`; a loopback one is the sandbox's own loopback, asked from inside it, as Docker
//!   does), its networks' servers, the host's resolv.conf (stat'ed per forwarded query and read
//!   again when it changed), the fallback servers. Upstreams are asked from the host namespace
//!   given in [`ResolverConfig::new`] (Docker 26+ does the same), with a fresh socket, source
//!   port and id per query. 127.0.0.11 and our own host listeners are never upstreams.
//! - SERVFAIL/REFUSED or silence moves to the next upstream; after [`Limits::hedge_delay`]
//!   without an answer the next one is asked as well, and a silent upstream goes to the back of
//!   the line for [`Limits::upstream_down_for`], so a dead first server costs one hedge delay
//!   once. Forwarded queries in flight are bounded per sandbox and overall; beyond, REFUSED.
//! - UDP answers fit the client's EDNS size (or 512), cut at a whole record with TC set; TCP
//!   answers are whole (a truncated upstream answer is asked again over TCP for a TCP client).
//! - A sandbox on internal networks only (or on none) gets REFUSED for every name that is not
//!   local: nothing leaves (CVE-2024-29018). One internal and one routed network may forward.
//!
//! # One listener per sandbox
//!
//! Each attached sandbox costs two sockets (UDP, TCP), two idle tasks and a 4 KiB receive
//! buffer; nothing runs until a query arrives. The tasks run on the resolver's own threads
//! (single-threaded tokio runtimes, [`ResolverConfig::threads`]; sandboxes are spread over
//! them), not on the caller's runtime: a listener is woken by its own thread's `epoll_wait` and
//! answers there, with no hand-over between worker threads. A local answer is decided and
//! encoded inline (hickory's encoder over borrowed parts, into a reused buffer) and sent with a
//! non-blocking send; a forwarded query gets its own task on the same thread.
//!
//! Measured with `cargo xtask bench dns` (release, 1,000 names, 2 cores shared with other
//! jobs, so rates swing from run to run; the server's CPU time per query does not swing as
//! much): under dnsperf (`-c 4 -q 64`) the resolver spends 4.3-5.0 µs of CPU per local query
//! where aardvark-dns spends 10-11.7 µs, and 6.3-7.7 µs when it ran on the caller's
//! multi-threaded runtime. Attaching costs p50 40-85 µs (one short-lived thread into the
//! namespace to bind), about 4 KiB RSS and 2 fds per sandbox.
//!
//! The alternative, one host socket reached by DNAT from every sandbox, needs `route_localnet`
//! and nftables rules per sandbox, exposes a host socket to every network, and hides which
//! sandbox asked behind the NAT (its source address is not enough: sandboxes on different
//! networks may share addresses). Binding inside the namespace needs none of that, and
//! 127.0.0.11 is then reachable from that sandbox only (the kernel never routes 127.0.0.0/8
//! between namespaces).
//!
//! hickory-proto is the codec (messages, names, records); the networking is ours because the
//! limits are: hickory-server spawns a task per UDP query without bound and caps no TCP
//! connections, and the listener must know which sandbox it serves.
//!
//! # The host resolver
//!
//! `listen_on_host("127.0.0.153:53")` answers `web.front` and `web.front.cnm`. Where
//! systemd-resolved runs, [`resolved::register`] gives it the listener for `~cnm` on a link over
//! D-Bus (cnmd does, on its default bridge; reverted at stop). By hand, or with another resolver:
//!
//! ```text
//! # systemd-resolved (per link, not lo; or a resolved.conf drop-in with DNS= and Domains=~cnm):
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
mod batch;
mod error;
mod forward;
mod name;
mod records;
mod resolvconf;
pub mod resolved;
mod resolver;
mod server;
mod wire;
mod workers;

pub use error::DnsError;
pub use records::{EndpointDns, NetworkDns, SandboxDns};
pub use resolvconf::{DnsOverrides, SANDBOX_RESOLVER, SandboxResolvConf, sandbox_resolv_conf};
pub use resolver::{
    BoundListener, DEFAULT_DOMAIN, DEFAULT_FALLBACK_SERVERS, Limits, Resolver, ResolverConfig,
    ResolverStats,
};
