//! Object ids as Docker makes them (64 random hex characters), their short form, and lookup by
//! full id, name or unique id prefix.

use std::fmt::Write as _;

use crate::CoreError;

/// The length of a full id in hex characters.
pub const ID_LEN: usize = 64;

/// The length of a short id, as `docker network ls` shows it.
pub const SHORT_ID_LEN: usize = 12;

/// A fresh random id: 64 lowercase hex characters.
///
/// As Docker does, an id whose 12-character short form is all decimal digits is drawn again, so a
/// short id can never be mistaken for a number.
pub fn generate() -> String {
    loop {
        let bytes: [u8; ID_LEN / 2] = rand::random();
        let mut id = String::with_capacity(ID_LEN);
        for b in bytes {
            // Writing to a String cannot fail.
            let _ = write!(id, "{b:02x}");
        }
        if !id[..SHORT_ID_LEN].bytes().all(|b| b.is_ascii_digit()) {
            return id;
        }
    }
}

/// The first 12 characters of an id (the whole string when shorter).
pub fn short(id: &str) -> &str {
    id.get(..SHORT_ID_LEN).unwrap_or(id)
}

/// Finds one object among `(name, id, value)` candidates by full id, exact name, or unique id
/// prefix, in that order of precedence (Docker's rule, `daemon.FindNetwork`): a string that is one
/// object's full id finds that object even when another object is named that string.
pub(crate) fn lookup<T: Clone>(
    what: &'static str,
    key: &str,
    candidates: impl IntoIterator<Item = (String, String, T)>,
) -> Result<T, CoreError> {
    let mut by_prefix = Vec::new();
    let mut by_name = None;
    for (name, id, value) in candidates {
        if id == key {
            return Ok(value);
        }
        if name == key {
            by_name = Some(value);
        } else if !key.is_empty() && id.starts_with(key) {
            by_prefix.push((name, id, value));
        }
    }
    if let Some(value) = by_name {
        return Ok(value);
    }
    match by_prefix.len() {
        0 => Err(CoreError::NotFound {
            what,
            key: key.to_owned(),
        }),
        1 => Ok(by_prefix.remove(0).2),
        _ => {
            let mut matches: Vec<String> = by_prefix
                .into_iter()
                .map(|(name, id, _)| format!("{name} ({})", short(&id)))
                .collect();
            matches.sort();
            Err(CoreError::Ambiguous {
                what,
                prefix: key.to_owned(),
                matches,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_64_hex_and_unique() {
        let a = generate();
        let b = generate();
        assert_eq!(a.len(), ID_LEN);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_ne!(a, b);
        assert_eq!(short(&a).len(), SHORT_ID_LEN);
        assert!(!short(&a).bytes().all(|c| c.is_ascii_digit()));
        assert_eq!(short("abc"), "abc");
    }

    fn objects() -> Vec<(String, String, u32)> {
        vec![
            ("alpha".into(), "abc123".into(), 1),
            ("beta".into(), "abd456".into(), 2),
            ("abd".into(), "ffff00".into(), 3),
        ]
    }

    #[test]
    fn lookup_by_name_id_and_unique_prefix() {
        assert_eq!(lookup("network", "alpha", objects()).unwrap(), 1);
        assert_eq!(lookup("network", "abd456", objects()).unwrap(), 2);
        assert_eq!(lookup("network", "abc", objects()).unwrap(), 1);
        assert_eq!(lookup("network", "ff", objects()).unwrap(), 3);
        // A name wins over an id prefix it also matches.
        assert_eq!(lookup("network", "abd", objects()).unwrap(), 3);
    }

    #[test]
    fn a_full_id_wins_over_a_name() {
        // "evil" is named after alpha's full id; the id finds alpha whichever comes first.
        let mut objs = vec![("evil".to_owned(), "ffff11".to_owned(), 9)];
        objs.extend(objects());
        objs[0].0 = "abc123".into();
        assert_eq!(lookup("network", "abc123", objs.clone()).unwrap(), 1);
        objs.reverse();
        assert_eq!(lookup("network", "abc123", objs.clone()).unwrap(), 1);
        // Its own id and a prefix of it still find it; a name beats a prefix.
        assert_eq!(lookup("network", "ffff11", objs.clone()).unwrap(), 9);
        assert_eq!(lookup("network", "ffff1", objs.clone()).unwrap(), 9);
        objs.push(("ffff1".into(), "012345".into(), 7));
        assert_eq!(lookup("network", "ffff1", objs).unwrap(), 7);
    }

    #[test]
    fn lookup_ambiguous_lists_matches_and_none_is_not_found() {
        let e = lookup("network", "ab", objects()).unwrap_err();
        assert_eq!(e.kind(), cnm_types::ErrorKind::InvalidInput);
        let text = e.to_string();
        assert!(
            text.contains("alpha (abc123)") && text.contains("beta (abd456)"),
            "{text}"
        );
        let e = lookup("network", "zz", objects()).unwrap_err();
        assert_eq!(e.kind(), cnm_types::ErrorKind::NotFound);
        assert!(e.to_string().contains("\"zz\""));
        assert!(lookup("network", "", objects()).is_err());
    }
}
