//! Unmounting what tests left mounted under a fixture's directories (namespace bind mounts).

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, umount2};

/// Mount points at or below `root`, deepest first, read from /proc/self/mountinfo.
fn mounts_under(root: &Path) -> Vec<PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = info
        .lines()
        // Field 5 is the mount point, with space, tab, newline and backslash octal-escaped.
        .filter_map(|line| line.split(' ').nth(4))
        .map(|escaped| PathBuf::from(unescape(escaped)))
        .filter(|point| point.starts_with(root))
        .collect();
    found.sort_by_key(|point| std::cmp::Reverse(point.components().count()));
    found.dedup();
    found
}

fn unescape(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut rest = field;
    while let Some(pos) = rest.find('\\') {
        out.push_str(&rest[..pos]);
        let code = rest
            .get(pos + 1..pos + 4)
            .and_then(|oct| u8::from_str_radix(oct, 8).ok());
        match code {
            Some(byte) => {
                out.push(char::from(byte));
                rest = &rest[pos + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[pos + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Detaches every mount at or below `root` (best effort, for Drop): a bind-mounted namespace file
/// cannot be unlinked while mounted, so the temp directory could not be removed otherwise.
pub(crate) fn unmount_all_under(root: &Path) {
    for point in mounts_under(root) {
        if let Err(errno) = umount2(&point, MntFlags::MNT_DETACH) {
            tracing::warn!(mount = %point.display(), %errno, "failed to unmount a test mount");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape(r"/tmp/a\040b\011c\134d"), "/tmp/a b\tc\\d");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape(r"/trailing\"), r"/trailing\");
    }

    #[test]
    fn nothing_is_mounted_under_a_fresh_directory() {
        let dir = tempfile::tempdir().unwrap();
        assert!(mounts_under(dir.path()).is_empty());
    }
}
