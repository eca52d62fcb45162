//! Files of the state directory are private to the daemon's user: the store holds every
//! network's and container's configuration (issue 8 found `state.redb` world-readable).
//!
//! Files are created 0600 and the directory 0700 from the start (never created open, then
//! chmodded); a file left more open by an older version is narrowed when it is opened.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

/// The mode of the store and lock files.
pub(crate) const FILE_MODE: u32 = 0o600;
/// The mode of a state directory this crate creates.
pub(crate) const DIR_MODE: u32 = 0o700;

/// Creates `dir` and its missing parents with mode 0700 (an existing one is left as it is: its
/// owner chose its mode).
pub(crate) fn create_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir)
}

/// Opens (or creates, mode 0600) `path` read-write without truncating it, and takes away any
/// group or other permission it had.
pub(crate) fn open_rw(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(FILE_MODE)
        .open(path)?;
    let mode = file.metadata()?.permissions().mode();
    if mode & 0o077 != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))?;
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_files_and_dirs_are_private_and_old_files_are_narrowed() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        create_dir(&dir).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), DIR_MODE);
        assert_eq!(mode(&tmp.path().join("a")), DIR_MODE);
        let f = dir.join("f");
        drop(open_rw(&f).unwrap());
        assert_eq!(mode(&f), FILE_MODE);
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        drop(open_rw(&f).unwrap());
        assert_eq!(mode(&f), FILE_MODE);
    }
}
