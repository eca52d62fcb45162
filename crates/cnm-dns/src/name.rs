//! Names as the record tables key them: lower case, no trailing dot, labels of letters, digits,
//! `-` and `_` (what Docker accepts for container, network and alias names).
//!
//! Keys are plain strings so that `name.network` is a suffix test and a lookup is one hash of
//! the query name; a query name with any other byte in a label can never be one of ours.

use cnm_types::InvalidTo;
use hickory_proto::rr::Name;

use crate::DnsError;

/// Checks a name given by the controller and returns its key (lower case, no trailing dot).
pub(crate) fn key_of(field: &'static str, value: &str) -> Result<String, DnsError> {
    let bad = |reason: &str| Err(DnsError::invalid(field, value, reason));
    let trimmed = value.strip_suffix('.').unwrap_or(value);
    if trimmed.is_empty() {
        return bad("it is empty");
    }
    if trimmed.len() > 253 {
        return bad("longer than 253 bytes");
    }
    for label in trimmed.split('.') {
        if label.is_empty() || label.len() > 63 {
            return bad("each dot-separated label must be 1 to 63 bytes");
        }
        if !label.bytes().all(is_name_byte) {
            return bad("only letters, digits, '-', '_' and '.' are allowed");
        }
    }
    Ok(trimmed.to_ascii_lowercase())
}

/// Room for a query key on the stack: our keys are at most 253 bytes ([`key_of`]).
pub(crate) struct KeyBuf([u8; 253]);

impl KeyBuf {
    pub(crate) fn new() -> Self {
        Self([0; 253])
    }
}

/// The key of a query name, written into `buf` (one per query, no allocation), or `None` when
/// a label holds a byte none of our names can hold or the name is longer than any of ours.
pub(crate) fn query_key<'b>(name: &Name, buf: &'b mut KeyBuf) -> Option<&'b str> {
    let buf = &mut buf.0;
    let mut len = 0usize;
    for label in name.iter() {
        if label.is_empty() || !label.iter().copied().all(is_name_byte) {
            return None;
        }
        let dot = usize::from(len != 0);
        let end = len + dot + label.len();
        if end > buf.len() {
            return None;
        }
        if dot == 1 {
            buf[len] = b'.';
        }
        for (to, from) in buf[len + dot..end].iter_mut().zip(label) {
            *to = from.to_ascii_lowercase();
        }
        len = end;
    }
    if len == 0 {
        return None;
    }
    // Only ASCII letters, digits, '-', '_' and '.' were written.
    std::str::from_utf8(&buf[..len]).ok()
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// A fully qualified hickory name from a key (keys are valid names by construction).
pub(crate) fn fqdn(key: &str) -> Name {
    let mut name = Name::from_ascii(key).expect("keys are checked names");
    name.set_fqdn(true);
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_lower_case_without_the_root_dot() {
        assert_eq!(key_of("name", "Web.Net1.").unwrap(), "web.net1");
        assert_eq!(key_of("name", "my_app-2").unwrap(), "my_app-2");
        for bad in ["", ".", "a..b", "a b", "ü", &"x".repeat(64), "a/b"] {
            let e = key_of("alias", bad).unwrap_err();
            assert!(e.to_string().starts_with("invalid alias"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn query_keys_fold_case_and_refuse_foreign_bytes() {
        let key = |n: &Name| query_key(n, &mut KeyBuf::new()).map(str::to_owned);
        let n = Name::from_ascii("WeB.NeT1.").unwrap();
        assert_eq!(key(&n).as_deref(), Some("web.net1"));
        let n = Name::from_labels(vec![b"a.b".to_vec(), b"c".to_vec()]).unwrap();
        assert_eq!(key(&n), None, "a label holding a dot is not two labels");
        assert_eq!(key(&Name::root()), None);
        let longest = [
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(61),
        ]
        .join(".");
        assert_eq!(longest.len(), 253);
        assert_eq!(
            key(&Name::from_ascii(&longest).unwrap()),
            Some(longest.clone())
        );
        assert_eq!(fqdn("web.net1").to_ascii(), "web.net1.");
    }
}
