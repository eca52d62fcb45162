//! The TUN device the encrypted networks' VXLAN traffic goes through: opened with the
//! `TUNSETIFF` ioctl on `/dev/net/tun` (no program runs). Not persistent: the device lives as
//! long as the file descriptor, so a crashed cnmd leaves no device behind, and a restarted one
//! makes it anew.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::OverlayError;

/// The character device TUN devices are made through.
pub(crate) const TUN_PATH: &str = "/dev/net/tun";

/// Opens (creates) the TUN device `name` (no packet-information header: each read is one IP
/// packet) on the calling thread's network namespace, non-blocking. `dev` is [`TUN_PATH`]
/// but for tests. A missing `dev` is [`OverlayError::Unsupported`].
pub(crate) fn open(dev: &Path, name: &str) -> Result<File, OverlayError> {
    if !dev.exists() {
        return Err(OverlayError::Unsupported(format!(
            "{} is missing (no TUN support: load the tun module, or give the container \
             /dev/net/tun), and the userspace WireGuard needs it",
            dev.display()
        )));
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dev)
        .map_err(|e| OverlayError::io("open", dev.display().to_string(), e))?;
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ {
        return Err(OverlayError::invalid("tun name", name, "1 to 15 bytes"));
    }
    // SAFETY: ifreq is plain data (a name and a union of integers and pointers); all zeros is
    // a valid value of it.
    #[allow(unsafe_code)]
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes one `struct ifreq`, which `req` is, alive and
    // exclusively borrowed for the call; the fd is open for the whole call.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) };
    if rc < 0 {
        return Err(OverlayError::io(
            "create TUN device",
            name,
            std::io::Error::last_os_error(),
        ));
    }
    set_nonblocking(&file, name)?;
    Ok(file)
}

fn set_nonblocking(file: &File, name: &str) -> Result<(), OverlayError> {
    let fd = file.as_raw_fd();
    // SAFETY: F_GETFL/F_SETFL on an fd we own take and return plain integers.
    #[allow(unsafe_code)]
    let rc = unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 {
            flags
        } else {
            libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK)
        }
    };
    if rc < 0 {
        return Err(OverlayError::io(
            "make non-blocking TUN device",
            name,
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_tun_device_is_unsupported() {
        let dir = tempfile::tempdir().unwrap();
        let e = open(&dir.path().join("tun"), "cnm-wg0").unwrap_err();
        assert_eq!(e.kind(), cnm_types::ErrorKind::Unsupported);
        assert!(e.to_string().contains("tun"), "{e}");
    }
}
