//! The shared vocabulary of cnm: the [`ErrorKind`] every public error reports, and validated
//! types that more than one layer passes around: [`IfName`], [`MacAddress`], ports
//! ([`Protocol`], [`PortRange`], [`ExposedPort`], [`PortBinding`] and their one grammar, in
//! [`port`]), the address ranges nothing may use ([`reserved`]) and a network's
//! [`GatewayMode`].
//!
//! **Owns**: error kinds, interface names, MAC addresses, the port grammar and its rules,
//! reserved address ranges, gateway modes.
//! **Does not**: any I/O, any knowledge of networks, endpoints or drivers.
//!
//! ```
//! use cnm_types::{IfName, MacAddress, PortBinding};
//! let name: IfName = "eth0".parse().unwrap();
//! assert_eq!(name.as_str(), "eth0");
//! assert!("a-name-that-is-too-long".parse::<IfName>().is_err());
//! let mac: MacAddress = "02:42:ac:11:00:02".parse().unwrap();
//! assert!(mac.is_locally_administered());
//! let port: PortBinding = "8080:80".parse().unwrap();
//! assert_eq!(port.to_string(), "8080:80/tcp");
//! ```

mod gateway;
pub mod port;
pub mod reserved;
mod setters;

pub use gateway::{GatewayMode, GatewayModeError};
pub use port::{ExposedPort, PortBinding, PortError, PortRange, Protocol};

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// What kind of failure an error is, independent of which crate raised it.
///
/// The daemon maps kinds to HTTP statuses; callers branch on kinds rather than on variants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The caller passed something malformed or out of range; nothing was changed.
    InvalidInput,
    /// The named object does not exist.
    NotFound,
    /// An object with that name or identity already exists.
    AlreadyExists,
    /// The operation conflicts with the current state (in use, joined elsewhere, …).
    Conflict,
    /// The operation or option is not supported by this driver, kernel or build.
    Unsupported,
    /// A resource or service is not available right now (pool exhausted, kernel refused, …).
    Unavailable,
    /// A bug or an unexpected failure inside cnm or the kernel.
    Internal,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::InvalidInput => "invalid input",
            Self::NotFound => "not found",
            Self::AlreadyExists => "already exists",
            Self::Conflict => "conflict",
            Self::Unsupported => "unsupported",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal error",
        })
    }
}

impl ErrorKind {
    /// The kind of failure a Linux errno means for a caller: the one table every crate that
    /// reports kernel or socket errors uses (netlink, nftables, sockets).
    ///
    /// ```
    /// use cnm_types::ErrorKind;
    /// assert_eq!(ErrorKind::from_errno(17), ErrorKind::AlreadyExists); // EEXIST
    /// assert_eq!(ErrorKind::from_errno(5), ErrorKind::Internal); // EIO
    /// ```
    pub fn from_errno(errno: i32) -> ErrorKind {
        match errno {
            libc::EEXIST => Self::AlreadyExists,
            libc::ENOENT | libc::ENODEV | libc::ESRCH => Self::NotFound,
            libc::EBUSY | libc::ENOTEMPTY | libc::EADDRINUSE => Self::Conflict,
            libc::EINVAL | libc::ERANGE | libc::EADDRNOTAVAIL => Self::InvalidInput,
            libc::EPERM
            | libc::EACCES
            | libc::EMFILE
            | libc::ENFILE
            | libc::ENOBUFS
            | libc::ENOMEM => Self::Unavailable,
            libc::EOPNOTSUPP
            | libc::EPROTONOSUPPORT
            | libc::EAFNOSUPPORT
            | libc::ESOCKTNOSUPPORT => Self::Unsupported,
            _ => Self::Internal,
        }
    }

    /// The kind of failure an I/O error means: its errno through [`ErrorKind::from_errno`];
    /// for an error made without one (`io::Error::from(io::ErrorKind::…)`), the same table
    /// read through its [`std::io::ErrorKind`].
    ///
    /// ```
    /// use cnm_types::ErrorKind;
    /// let e = std::io::Error::from_raw_os_error(16); // EBUSY
    /// assert_eq!(ErrorKind::from_io(&e), ErrorKind::Conflict);
    /// let e = std::io::Error::from(std::io::ErrorKind::AddrInUse);
    /// assert_eq!(ErrorKind::from_io(&e), ErrorKind::Conflict);
    /// ```
    pub fn from_io(e: &std::io::Error) -> ErrorKind {
        use std::io::ErrorKind as Io;
        if let Some(errno) = e.raw_os_error() {
            return Self::from_errno(errno);
        }
        match e.kind() {
            Io::AlreadyExists => Self::AlreadyExists,
            Io::NotFound => Self::NotFound,
            Io::ResourceBusy | Io::DirectoryNotEmpty | Io::AddrInUse => Self::Conflict,
            Io::InvalidInput | Io::AddrNotAvailable => Self::InvalidInput,
            Io::PermissionDenied | Io::OutOfMemory => Self::Unavailable,
            Io::Unsupported => Self::Unsupported,
            _ => Self::Internal,
        }
    }
}

/// An operation on an object that failed, with its cause: `failed to {op} {object}: {source}`.
///
/// The one shape of the "failed to …" variants of cnm's error types: a variant holds it with
/// `#[error(transparent)] Kernel(#[from] Failed<SandboxError>)`, and the error is built with
/// [`FailedTo::failed`], the source's type choosing the variant.
#[derive(Debug, thiserror::Error)]
#[error("failed to {op} {object}: {source}")]
pub struct Failed<E> {
    /// What was being done (`create`, `move link`).
    pub op: &'static str,
    /// To what (a link, a key, a path).
    pub object: String,
    /// The cause.
    #[source]
    pub source: E,
}

impl<E> Failed<E> {
    /// `op` failed on `object` because of `source`.
    pub fn new(op: &'static str, object: impl fmt::Display, source: E) -> Self {
        Self {
            op,
            object: object.to_string(),
            source,
        }
    }
}

/// Builds an error that has a variant holding [`Failed<E>`]: `BridgeError::failed("create",
/// name, e)`, where `e`'s type picks the variant.
pub trait FailedTo<E>: From<Failed<E>> {
    /// `op` failed on `object` because of `source`.
    fn failed(op: &'static str, object: impl fmt::Display, source: E) -> Self {
        Failed::new(op, object, source).into()
    }
}

impl<T: From<Failed<E>>, E> FailedTo<E> for T {}

/// Input that cannot be used, naming the field and the value as given: `invalid {field}
/// {value:?}: {reason}`. A variant holds it with `#[error(transparent)] InvalidInput(#[from]
/// Invalid)`, and the error is built with [`InvalidTo::invalid`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field} {value:?}: {reason}")]
pub struct Invalid {
    /// What was refused (`alias`, `IPv4 address`).
    pub field: &'static str,
    /// The value as given.
    pub value: String,
    /// Why.
    pub reason: String,
}

/// Builds an error that has a variant holding [`Invalid`].
pub trait InvalidTo: From<Invalid> {
    /// `value` of `field` is refused because of `reason`.
    fn invalid(field: &'static str, value: impl Into<String>, reason: impl Into<String>) -> Self {
        Invalid {
            field,
            value: value.into(),
            reason: reason.into(),
        }
        .into()
    }
}

impl<T: From<Invalid>> InvalidTo for T {}

/// Errors shown one after the other, separated by `; `: how every crate's error lists the
/// cleanup failures it carries ("…; cleanup also failed: a; b").
pub struct ErrorList<'a, E>(pub &'a [E]);

impl<E: fmt::Display> fmt::Display for ErrorList<'_, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// An error that can carry the errors met while undoing what failed (cnm-core's undo list and
/// every crate's cleanup paths attach them through it).
pub trait Cleanup: Sized {
    /// `self` wrapped with `cleanup`, which is never empty: the error's own "with cleanup"
    /// variant.
    fn wrap_cleanup(self, cleanup: Vec<Self>) -> Self;

    /// `self` with `cleanup` attached; `self` unchanged when `cleanup` is empty.
    fn with_cleanup(self, cleanup: Vec<Self>) -> Self {
        if cleanup.is_empty() {
            self
        } else {
            self.wrap_cleanup(cleanup)
        }
    }
}

/// A Linux interface name: 1 to 15 bytes, no `/`, `:` or whitespace, not `.` or `..`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct IfName(String);

/// Why a string is not a valid [`IfName`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IfNameError {
    /// The name is empty.
    #[error("invalid interface name {0:?}: it is empty")]
    Empty(String),
    /// The name is longer than the kernel's IFNAMSIZ - 1.
    #[error("invalid interface name {0:?}: {len} bytes, at most 15 allowed", len = .0.len())]
    TooLong(String),
    /// The name contains a character the kernel refuses.
    #[error(
        "invalid interface name {0:?}: it must not contain '/', ':', whitespace or be '.' or '..'"
    )]
    BadCharacter(String),
}

impl IfNameError {
    /// Every malformed name is invalid input.
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::InvalidInput
    }
}

impl IfName {
    /// The maximum length of an interface name in bytes (IFNAMSIZ - 1).
    pub const MAX_LEN: usize = 15;

    /// Validates `name` as an interface name.
    pub fn new(name: impl Into<String>) -> Result<Self, IfNameError> {
        let name = name.into();
        if name.is_empty() {
            return Err(IfNameError::Empty(name));
        }
        if name.len() > Self::MAX_LEN {
            return Err(IfNameError::TooLong(name));
        }
        if name == "."
            || name == ".."
            || name
                .chars()
                .any(|c| c == '/' || c == ':' || c.is_whitespace() || c == '\0')
        {
            return Err(IfNameError::BadCharacter(name));
        }
        Ok(Self(name))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IfName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for IfName {
    type Err = IfNameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<String> for IfName {
    type Error = IfNameError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl From<IfName> for String {
    fn from(n: IfName) -> Self {
        n.0
    }
}

impl AsRef<str> for IfName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// A 48-bit Ethernet MAC address, written `aa:bb:cc:dd:ee:ff`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MacAddress(pub [u8; 6]);

/// Why a string is not a valid [`MacAddress`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid MAC address {0:?}: expected six hex octets separated by ':'")]
pub struct MacAddressError(pub String);

impl MacAddressError {
    /// Every malformed address is invalid input.
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::InvalidInput
    }
}

impl MacAddress {
    /// A random, unicast, locally administered address (as the kernel's `eth_random_addr`).
    pub fn random_local() -> Self {
        let mut b: [u8; 6] = rand::random();
        b[0] = (b[0] & 0xfe) | 0x02;
        Self(b)
    }

    /// The locally administered unicast address `02:42:a:b:c:d` of the IPv4 address
    /// `a.b.c.d`, as Docker gives its containers: an address reused by a new endpoint brings
    /// back the same MAC, so a peer's cached neighbour entry stays right.
    pub fn from_ipv4(ip: std::net::Ipv4Addr) -> Self {
        let [a, b, c, d] = ip.octets();
        Self([0x02, 0x42, a, b, c, d])
    }

    /// The octets.
    pub fn octets(&self) -> [u8; 6] {
        self.0
    }

    /// Whether the locally administered bit is set.
    pub fn is_locally_administered(&self) -> bool {
        self.0[0] & 0x02 != 0
    }

    /// Whether this is a multicast (group) address, which no interface may carry.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 0x01 != 0
    }
}

impl fmt::Display for MacAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for MacAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for MacAddress {
    type Err = MacAddressError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || MacAddressError(s.to_owned());
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut out {
            let p = parts.next().ok_or_else(err)?;
            if p.len() != 2 {
                return Err(err());
            }
            *byte = u8::from_str_radix(p, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(Self(out))
    }
}

impl TryFrom<String> for MacAddress {
    type Error = MacAddressError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<MacAddress> for String {
    fn from(m: MacAddress) -> Self {
        m.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        #[error(transparent)]
        Io(#[from] Failed<std::io::Error>),
    }

    #[test]
    fn a_mac_from_an_ipv4_address_is_unicast_local_and_follows_the_address() {
        let mac = MacAddress::from_ipv4("10.78.0.2".parse().unwrap());
        assert_eq!(mac.to_string(), "02:42:0a:4e:00:02");
        assert!(mac.is_locally_administered() && !mac.is_multicast());
        assert_eq!(mac, MacAddress::from_ipv4("10.78.0.2".parse().unwrap()));
    }

    #[test]
    fn failed_names_op_object_and_cause_and_keeps_the_cause_as_source() {
        let cause = std::io::Error::new(std::io::ErrorKind::NotFound, "gone");
        let e = Outer::failed("open", "/run/x", cause);
        assert_eq!(e.to_string(), "failed to open /run/x: gone");
        let source = std::error::Error::source(&e).expect("the cause is the source");
        assert_eq!(source.to_string(), "gone");
        assert!(source.downcast_ref::<std::io::Error>().is_some());
    }

    #[derive(Debug, PartialEq)]
    enum Failure {
        Step(u8),
        Undone(Box<Failure>, Vec<Failure>),
    }

    impl Cleanup for Failure {
        fn wrap_cleanup(self, cleanup: Vec<Self>) -> Self {
            Self::Undone(Box::new(self), cleanup)
        }
    }

    #[test]
    fn cleanup_is_attached_only_when_there_is_some() {
        assert_eq!(Failure::Step(1).with_cleanup(Vec::new()), Failure::Step(1));
        assert_eq!(
            Failure::Step(1).with_cleanup(vec![Failure::Step(2)]),
            Failure::Undone(Box::new(Failure::Step(1)), vec![Failure::Step(2)])
        );
    }

    #[test]
    fn if_name_bounds() {
        assert!(IfName::new("eth0").is_ok());
        assert!(IfName::new("a".repeat(15)).is_ok());
        assert!(matches!(
            IfName::new("a".repeat(16)),
            Err(IfNameError::TooLong(_))
        ));
        assert!(matches!(IfName::new(""), Err(IfNameError::Empty(_))));
        for bad in ["a/b", "a:b", "a b", ".", ".."] {
            assert!(
                matches!(IfName::new(bad), Err(IfNameError::BadCharacter(_))),
                "{bad}"
            );
        }
        let e = IfName::new("0123456789abcdef").unwrap_err();
        assert!(e.to_string().contains("0123456789abcdef"));
    }

    #[test]
    fn errno_maps_to_kind() {
        let cases = [
            (libc::EEXIST, ErrorKind::AlreadyExists),
            (libc::ENOENT, ErrorKind::NotFound),
            (libc::ENODEV, ErrorKind::NotFound),
            (libc::ESRCH, ErrorKind::NotFound),
            (libc::EBUSY, ErrorKind::Conflict),
            (libc::ENOTEMPTY, ErrorKind::Conflict),
            (libc::EADDRINUSE, ErrorKind::Conflict),
            (libc::EINVAL, ErrorKind::InvalidInput),
            (libc::ERANGE, ErrorKind::InvalidInput),
            (libc::EADDRNOTAVAIL, ErrorKind::InvalidInput),
            (libc::EPERM, ErrorKind::Unavailable),
            (libc::EACCES, ErrorKind::Unavailable),
            (libc::EMFILE, ErrorKind::Unavailable),
            (libc::ENOMEM, ErrorKind::Unavailable),
            (libc::EOPNOTSUPP, ErrorKind::Unsupported),
            (libc::EAFNOSUPPORT, ErrorKind::Unsupported),
            (libc::EIO, ErrorKind::Internal),
        ];
        for (errno, kind) in cases {
            assert_eq!(ErrorKind::from_errno(errno), kind, "errno {errno}");
            let io = std::io::Error::from_raw_os_error(errno);
            assert_eq!(ErrorKind::from_io(&io), kind, "errno {errno}");
        }
        // an error made without an errno reads the same through its io::ErrorKind
        let bare = [
            (std::io::ErrorKind::AlreadyExists, ErrorKind::AlreadyExists),
            (std::io::ErrorKind::NotFound, ErrorKind::NotFound),
            (std::io::ErrorKind::AddrInUse, ErrorKind::Conflict),
            (std::io::ErrorKind::InvalidInput, ErrorKind::InvalidInput),
            (std::io::ErrorKind::PermissionDenied, ErrorKind::Unavailable),
            (std::io::ErrorKind::Unsupported, ErrorKind::Unsupported),
            (std::io::ErrorKind::BrokenPipe, ErrorKind::Internal),
        ];
        for (io, kind) in bare {
            assert_eq!(
                ErrorKind::from_io(&std::io::Error::from(io)),
                kind,
                "{io:?}"
            );
        }
    }

    #[test]
    fn mac_round_trip_and_random() {
        let m: MacAddress = "02:42:AC:11:00:02".parse().unwrap();
        assert_eq!(m.to_string(), "02:42:ac:11:00:02");
        for bad in [
            "",
            "02:42:ac:11:00",
            "02:42:ac:11:00:02:03",
            "zz:42:ac:11:00:02",
            "2:42:ac:11:00:02",
        ] {
            assert!(bad.parse::<MacAddress>().is_err(), "{bad}");
        }
        let r = MacAddress::random_local();
        assert!(r.is_locally_administered() && !r.is_multicast());
    }
}
