//! This host's WireGuard static key pair: X25519, kept in the driver's state dir (mode 0600)
//! so a restarted cnmd keeps its identity, replaced by a rotation.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use boringtun::x25519::{PublicKey, StaticSecret};

use crate::OverlayError;

/// The key file's name in `state_dir/overlay/`.
pub(crate) const KEY_FILE: &str = "wireguard.key";

/// A static key pair.
#[derive(Clone)]
pub(crate) struct KeyPair {
    pub(crate) secret: StaticSecret,
    pub(crate) public: PublicKey,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret, not even in a debug log.
        f.debug_struct("KeyPair")
            .field("public", &hex(self.public.as_bytes()))
            .finish_non_exhaustive()
    }
}

impl KeyPair {
    /// A fresh pair from the OS's random source (the secret is clamped by X25519 itself).
    pub(crate) fn generate() -> Self {
        Self::from_secret(rand::random::<[u8; 32]>())
    }

    pub(crate) fn from_secret(bytes: [u8; 32]) -> Self {
        let secret = StaticSecret::from(bytes);
        let public = PublicKey::from(&secret);
        Self { secret, public }
    }

    /// The public key as published: 64 lowercase hex digits.
    pub(crate) fn public_hex(&self) -> String {
        hex(self.public.as_bytes())
    }

    /// The pair kept at `path`, or a new one written there (0600) when there is none.
    pub(crate) fn load_or_create(path: &Path) -> Result<Self, OverlayError> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let bytes = parse_key(text.trim()).ok_or_else(|| {
                    OverlayError::invalid(
                        "wireguard key file",
                        path.display().to_string(),
                        "not 64 hex digits",
                    )
                })?;
                Ok(Self::from_secret(bytes))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let pair = Self::generate();
                pair.save(path)?;
                Ok(pair)
            }
            Err(e) => Err(OverlayError::io("read", path.display().to_string(), e)),
        }
    }

    /// Writes the secret to `path` (0600), through a temporary file renamed over it, so a
    /// crash leaves the old key or the new one, never half of one.
    pub(crate) fn save(&self, path: &Path) -> Result<(), OverlayError> {
        let shown = || path.display().to_string();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| OverlayError::io("create directory", dir.display().to_string(), e))?;
        }
        let tmp: PathBuf = path.with_extension("tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| OverlayError::io("create", tmp.display().to_string(), e))?;
        // The mode of an existing file is not changed by `mode`: set it.
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(|e| OverlayError::io("chmod", tmp.display().to_string(), e))?;
        f.write_all(format!("{}\n", hex(&self.secret.to_bytes())).as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|e| OverlayError::io("write", tmp.display().to_string(), e))?;
        std::fs::rename(&tmp, path).map_err(|e| OverlayError::io("rename", shown(), e))
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// 64 hex digits → 32 bytes.
pub(crate) fn parse_key(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_hex_and_bad_text_is_refused() {
        let pair = KeyPair::generate();
        let back = parse_key(&pair.public_hex()).unwrap();
        assert_eq!(&back, pair.public.as_bytes());
        assert!(parse_key("zz").is_none());
        assert!(parse_key(&"g".repeat(64)).is_none());
        assert!(parse_key(&"é".repeat(32)).is_none());
    }

    #[test]
    fn the_key_file_is_private_kept_and_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("overlay").join(KEY_FILE);
        let first = KeyPair::load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = KeyPair::load_or_create(&path).unwrap();
        assert_eq!(first.public, again.public, "a restart keeps the key");
        let rotated = KeyPair::generate();
        rotated.save(&path).unwrap();
        assert_eq!(
            KeyPair::load_or_create(&path).unwrap().public,
            rotated.public
        );
        assert!(!path.with_extension("tmp").exists());
        std::fs::write(&path, "not a key").unwrap();
        let e = KeyPair::load_or_create(&path).unwrap_err();
        assert!(e.to_string().contains("wireguard key file"), "{e}");
        assert!(
            !format!("{rotated:?}").contains(&hex(&rotated.secret.to_bytes())),
            "Debug never shows the secret"
        );
    }
}
