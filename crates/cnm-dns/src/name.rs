//! Names as the record tables key them: lower case, no trailing dot, labels of letters, digits,
//! `-` and `_` (what Docker accepts for container, network and alias names).
//!
//! Keys are plain strings so that `name.network` is a suffix test and a lookup is one hash of
//! the query name; a query name with any other byte in a label can never be one of ours.

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

/// The key of a query name, or `None` when a label holds a byte none of our names can hold.
pub(crate) fn query_key(name: &Name) -> Option<String> {
    let mut key = String::with_capacity(name.len());
    for label in name.iter() {
        if label.is_empty() || !label.iter().copied().all(is_name_byte) {
            return None;
        }
        if !key.is_empty() {
            key.push('.');
        }
        key.extend(label.iter().map(|b| char::from(b.to_ascii_lowercase())));
    }
    (!key.is_empty()).then_some(key)
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
        let n = Name::from_ascii("WeB.NeT1.").unwrap();
        assert_eq!(query_key(&n).as_deref(), Some("web.net1"));
        let n = Name::from_labels(vec![b"a.b".to_vec(), b"c".to_vec()]).unwrap();
        assert_eq!(
            query_key(&n),
            None,
            "a label holding a dot is not two labels"
        );
        assert_eq!(query_key(&Name::root()), None);
        assert_eq!(fqdn("web.net1").to_ascii(), "web.net1.");
    }
}
