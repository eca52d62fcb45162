//! Registering the host listener with systemd-resolved over D-Bus (moby#27790): the host's own
//! lookups of `name.network.<domain>` then reach [`Resolver::listen_on_host`]'s listener.
//!
//! On one link, through `org.freedesktop.resolve1.Manager` on the system bus:
//! `SetLinkDNSEx` (the listener's address and port; `SetLinkDNS` on resolved before v246 when
//! the port is 53), `SetLinkDomains` (`~<domain>`: a routing-only domain, so resolved sends
//! the domain's names there and nothing else), `SetLinkDefaultRoute(false)` (other names never
//! go to it); [`Registration::revert`] sends `RevertLink`. resolved keeps these settings
//! until then, or until the link goes away.
//!
//! Where no system bus answers, or nobody owns `org.freedesktop.resolve1` on it, nothing is
//! done and [`register`] says why ([`Registered::Unavailable`]); it never starts resolved
//! (no bus activation: the name must have an owner first). Pure Rust (zbus on tokio): no
//! program is spawned, no libdbus linked.
//!
//! [`Resolver::listen_on_host`]: crate::Resolver::listen_on_host

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use zbus::Connection;

use crate::DnsError;
use cnm_types::InvalidTo as _;

const RESOLVE1: &str = "org.freedesktop.resolve1";
const RESOLVE1_PATH: &str = "/org/freedesktop/resolve1";
const MANAGER: &str = "org.freedesktop.resolve1.Manager";
const UNKNOWN_METHOD: &str = "org.freedesktop.DBus.Error.UnknownMethod";
// Linux's address families, as resolved's API takes them.
const AF_INET: i32 = 2;
const AF_INET6: i32 = 10;

/// How long one D-Bus call may take: a wedged bus must not hold up the caller (cnmd's start)
/// for zbus's default of 25 s.
pub const RESOLVED_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Which bus to find systemd-resolved on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ResolvedBus {
    /// The system bus: `$DBUS_SYSTEM_BUS_ADDRESS`, else `/run/dbus/system_bus_socket`.
    #[default]
    System,
    /// A bus at this D-Bus address (`unix:path=/run/…`): tests run a private one.
    Address(String),
}

/// What to register: the host listener's address, for a domain, on a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedLink {
    /// The interface index resolved attaches the settings to (not loopback: resolved refuses
    /// `lo`). resolved uses a link's servers only while the link has carrier and a routable
    /// address.
    pub ifindex: u32,
    /// Where the listener answers.
    pub server: SocketAddr,
    /// The domain routed to it (`cnm` → `~cnm`).
    pub domain: String,
}

/// What [`register`] did.
#[derive(Debug)]
pub enum Registered {
    /// resolved accepted the settings; revert them when the listener stops.
    Done(Registration),
    /// No system bus, or no systemd-resolved on it: nothing was done. Why, for a log line.
    Unavailable(String),
}

/// Settings resolved holds for a link on our behalf, until [`Registration::revert`]. Dropping
/// it reverts nothing (resolved keeps them until the link goes away).
#[derive(Debug)]
pub struct Registration {
    conn: Connection,
    ifindex: u32,
}

impl Registration {
    /// The link the settings are on.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// `RevertLink`: resolved forgets the server and the domain on the link.
    pub async fn revert(self) -> Result<(), DnsError> {
        call(
            &self.conn,
            "RevertLink",
            self.ifindex,
            &(link_arg(self.ifindex)?,),
        )
        .await
        .map(drop)
    }
}

/// Registers `link` with systemd-resolved on `bus`. Bad input is refused before the bus is
/// touched; no bus or no resolved is [`Registered::Unavailable`], not an error; resolved
/// refusing a call (a link managed by networkd, no permission) is an error, after which
/// whatever it had accepted is reverted.
pub async fn register(bus: &ResolvedBus, link: &ResolvedLink) -> Result<Registered, DnsError> {
    let ifindex = link_arg(link.ifindex)?;
    let domain = link.domain.trim_end_matches('.');
    if domain.is_empty()
        || domain.starts_with('~')
        || domain.split('.').any(|l| {
            l.is_empty()
                || l.len() > 63
                || !l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
    {
        return Err(DnsError::invalid(
            "resolved domain",
            &link.domain,
            "must be a DNS name (letters, digits, '-' in dot-separated labels)",
        ));
    }
    if link.server.ip().is_unspecified() || link.server.port() == 0 {
        return Err(DnsError::invalid(
            "resolved server",
            link.server.to_string(),
            "must be a bound address and port",
        ));
    }
    let conn = match connect(bus).await {
        Ok(c) => c,
        Err(reason) => return Ok(Registered::Unavailable(reason)),
    };
    let owned: Result<bool, zbus::Error> = timed(conn.call_method(
        Some("org.freedesktop.DBus"),
        "/org/freedesktop/DBus",
        Some("org.freedesktop.DBus"),
        "NameHasOwner",
        &(RESOLVE1,),
    ))
    .await
    .and_then(|m| m.body().deserialize::<bool>());
    match owned {
        Ok(true) => {}
        Ok(false) => {
            return Ok(Registered::Unavailable(format!(
                "no {RESOLVE1} on the bus (systemd-resolved does not run)"
            )));
        }
        Err(e) => {
            return Ok(Registered::Unavailable(format!(
                "cannot ask the bus for {RESOLVE1}: {e}"
            )));
        }
    }
    let reg = Registration {
        conn,
        ifindex: link.ifindex,
    };
    match apply(&reg.conn, ifindex, link.server, domain).await {
        Ok(()) => Ok(Registered::Done(reg)),
        Err(e) => {
            // Atomic or nothing: resolved may have taken the server before refusing the domain.
            if let Err(undo) = reg.revert().await {
                tracing::warn!(error = %undo, "failed to revert a partial systemd-resolved registration");
            }
            Err(e)
        }
    }
}

async fn apply(
    conn: &Connection,
    ifindex: i32,
    server: SocketAddr,
    domain: &str,
) -> Result<(), DnsError> {
    let (family, bytes) = match server.ip() {
        IpAddr::V4(a) => (AF_INET, a.octets().to_vec()),
        IpAddr::V6(a) => (AF_INET6, a.octets().to_vec()),
    };
    let link = ifindex.unsigned_abs();
    // SetLinkDNSEx(i ifindex, a(iayqs) family, address, port, server name) — resolved ≥ v246.
    let ex = (
        ifindex,
        vec![(family, bytes.clone(), server.port(), String::new())],
    );
    match call_raw(conn, "SetLinkDNSEx", &ex).await {
        Ok(_) => {}
        Err(zbus::Error::MethodError(name, _, _))
            if name.as_str() == UNKNOWN_METHOD && server.port() == 53 =>
        {
            // SetLinkDNS(i, a(iay)): no port, 53 implied.
            call(conn, "SetLinkDNS", link, &(ifindex, vec![(family, bytes)])).await?;
        }
        Err(e) => return Err(resolved_error("SetLinkDNSEx", link, e)),
    }
    // SetLinkDomains(i, a(sb) domain, routing-only).
    call(
        conn,
        "SetLinkDomains",
        link,
        &(ifindex, vec![(domain.to_owned(), true)]),
    )
    .await?;
    // SetLinkDefaultRoute(i, b): names outside ~domain never go to the listener (which would
    // refuse them anyway); a v240-v245 resolved without the method routes by domain alone.
    match call_raw(conn, "SetLinkDefaultRoute", &(ifindex, false)).await {
        Ok(_) => Ok(()),
        Err(zbus::Error::MethodError(name, _, _)) if name.as_str() == UNKNOWN_METHOD => Ok(()),
        Err(e) => Err(resolved_error("SetLinkDefaultRoute", link, e)),
    }
}

async fn connect(bus: &ResolvedBus) -> Result<Connection, String> {
    let builder = match bus {
        ResolvedBus::System => zbus::connection::Builder::system(),
        ResolvedBus::Address(a) => zbus::connection::Builder::address(a.as_str()),
    }
    .map_err(|e| format!("no usable D-Bus address: {e}"))?;
    let what = match bus {
        ResolvedBus::System => "the system bus".to_owned(),
        ResolvedBus::Address(a) => format!("the bus at {a}"),
    };
    match tokio::time::timeout(
        RESOLVED_CALL_TIMEOUT,
        builder.method_timeout(RESOLVED_CALL_TIMEOUT).build(),
    )
    .await
    {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(format!("cannot connect to {what}: {e}")),
        Err(_) => Err(format!(
            "{what} did not answer within {RESOLVED_CALL_TIMEOUT:?}"
        )),
    }
}

fn link_arg(ifindex: u32) -> Result<i32, DnsError> {
    match i32::try_from(ifindex) {
        Ok(i) if i > 0 => Ok(i),
        _ => Err(DnsError::invalid(
            "resolved link",
            ifindex.to_string(),
            "must be an interface index (1..=2^31-1)",
        )),
    }
}

async fn timed(
    f: impl Future<Output = zbus::Result<zbus::Message>>,
) -> zbus::Result<zbus::Message> {
    match tokio::time::timeout(RESOLVED_CALL_TIMEOUT, f).await {
        Ok(r) => r,
        Err(_) => Err(zbus::Error::InputOutput(std::sync::Arc::new(
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {RESOLVED_CALL_TIMEOUT:?}"),
            ),
        ))),
    }
}

async fn call_raw<B>(
    conn: &Connection,
    method: &'static str,
    body: &B,
) -> zbus::Result<zbus::Message>
where
    B: serde::ser::Serialize + zbus::zvariant::DynamicType,
{
    timed(conn.call_method(Some(RESOLVE1), RESOLVE1_PATH, Some(MANAGER), method, body)).await
}

async fn call<B>(
    conn: &Connection,
    method: &'static str,
    link: u32,
    body: &B,
) -> Result<zbus::Message, DnsError>
where
    B: serde::ser::Serialize + zbus::zvariant::DynamicType,
{
    call_raw(conn, method, body)
        .await
        .map_err(|e| resolved_error(method, link, e))
}

fn resolved_error(method: &'static str, link: u32, e: zbus::Error) -> DnsError {
    DnsError::Resolved {
        method,
        link,
        source: Box::new(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(ifindex: u32, server: &str, domain: &str) -> ResolvedLink {
        ResolvedLink {
            ifindex,
            server: server.parse().expect("test address"),
            domain: domain.to_owned(),
        }
    }

    #[tokio::test]
    async fn bad_input_is_refused_before_the_bus_naming_the_field() {
        // The bus address is not even parsed: refusal comes first.
        let bus = ResolvedBus::Address("not an address".into());
        for (l, field) in [
            (link(0, "127.0.0.153:53", "cnm"), "resolved link"),
            (link(u32::MAX, "127.0.0.153:53", "cnm"), "resolved link"),
            (link(3, "127.0.0.153:53", "~cnm"), "resolved domain"),
            (link(3, "127.0.0.153:53", "a..b"), "resolved domain"),
            (link(3, "127.0.0.153:53", ""), "resolved domain"),
            (link(3, "0.0.0.0:53", "cnm"), "resolved server"),
            (link(3, "127.0.0.153:0", "cnm"), "resolved server"),
        ] {
            match register(&bus, &l).await {
                Err(DnsError::InvalidInput(cnm_types::Invalid { field: f, .. })) => {
                    assert_eq!(f, field, "{l:?}")
                }
                other => panic!("{l:?}: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn no_bus_is_a_note_not_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("no-bus-here");
        let bus = ResolvedBus::Address(format!("unix:path={}", path.display()));
        match register(&bus, &link(3, "127.0.0.153:53", "cnm")).await {
            Ok(Registered::Unavailable(why)) => assert!(why.contains("cannot connect"), "{why}"),
            other => panic!("{other:?}"),
        }
        let bad = ResolvedBus::Address("nonsense-transport:x=y".into());
        assert!(matches!(
            register(&bad, &link(3, "127.0.0.153:53", "cnm")).await,
            Ok(Registered::Unavailable(_))
        ));
    }
}
