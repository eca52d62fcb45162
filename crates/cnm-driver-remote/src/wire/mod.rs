//! The JSON bodies of every call, with Docker's exact field names.
//!
//! Requests are what cnm sends as a client and reads as a server (cnmd's `--docker-plugin`);
//! everything is read leniently, as Go's decoder reads it: a missing field, or `null` (what Go
//! writes for a nil map, slice or pointer), is the empty value, and unknown fields are ignored.

/// Implements [`Answer`](crate::plugin::Answer) for answer types whose error text is `field`
/// (`err` for network drivers, `error` for IPAM drivers).
macro_rules! answers {
    ($field:ident: $($ty:ty),+ $(,)?) => {
        $(impl crate::plugin::Answer for $ty {
            fn error(&self) -> &str {
                &self.$field
            }
        })+
    };
}

pub mod ipam;
pub mod network;

use serde::{Deserialize, Deserializer};

/// Reads `null` or a missing field as the type's default.
pub(crate) fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Option::unwrap_or_default)
}

/// The keys of a JSON object, in order (the wire tests compare them with the documented shapes).
#[cfg(test)]
pub(crate) fn keys(v: &serde_json::Value) -> Vec<&str> {
    v.as_object().unwrap().keys().map(String::as_str).collect()
}
