//! Docker networks mapped onto named cnm networks (`-o com.cnm.network=NAME`).
//!
//! dockerd without swarm takes only local-scope remote drivers: a plugin answering
//! `Scope: global` gets its `CreateNetwork` called, then dockerd fails to store the network
//! ("datastore for scope \"global\" is not initialized", shown to the user as "This node is not
//! a swarm manager") and deletes it again; `--scope local` is refused ("cannot downgrade network
//! scope"). So the plugin answers local scope, and a network shared across hosts is shared on
//! cnm's side: each host's dockerd makes its own Docker network (its own `NetworkID`) with the
//! driver option `com.cnm.network=NAME`, and every call naming that `NetworkID` works on the cnm
//! network `NAME` (for an overlay, global scope: its addresses and endpoints in etcd, seen by
//! every cnmd of the cluster). The mapping is saved to `STATE_DIR/docker-plugin-networks.json`
//! (written whole, then renamed over) after every change and restored at start, so a cnmd
//! restart keeps serving the Docker networks dockerd holds.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The file the mapping is saved in, inside the state dir.
pub const STATE_FILE: &str = "docker-plugin-networks.json";

/// Docker's `NetworkID` → the cnm network's name, and where it is saved.
pub(crate) struct NetworkMap {
    map: Mutex<BTreeMap<String, String>>,
    file: PathBuf,
    /// Serialises saves, so the file always ends with the latest state.
    save: tokio::sync::Mutex<()>,
}

impl NetworkMap {
    /// Restores the mapping saved in `state_dir`, or starts empty.
    pub(crate) fn open(state_dir: &Path) -> Result<Self, String> {
        let file = state_dir.join(STATE_FILE);
        let map = match std::fs::read(&file) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| format!("read {}: {e}", file.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(format!("read {}: {e}", file.display())),
        };
        Ok(Self {
            map: Mutex::new(map),
            file,
            save: tokio::sync::Mutex::new(()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, String>> {
        // A panic while holding it cannot leave the map half-changed (single inserts/removes).
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The cnm network Docker's network `id` is mapped onto, if it is.
    pub(crate) fn get(&self, id: &str) -> Option<String> {
        self.lock().get(id).cloned()
    }

    /// Maps `id` onto `name` and saves; on a failed save the mapping is taken back.
    pub(crate) async fn insert(&self, id: &str, name: &str) -> Result<(), String> {
        let before = self.lock().insert(id.to_owned(), name.to_owned());
        if let Err(e) = self.save().await {
            let mut map = self.lock();
            match before {
                Some(b) => map.insert(id.to_owned(), b),
                None => map.remove(id),
            };
            return Err(e);
        }
        Ok(())
    }

    /// Forgets `id` and saves; on a failed save the mapping is put back.
    pub(crate) async fn remove(&self, id: &str) -> Result<(), String> {
        let Some(before) = self.lock().remove(id) else {
            return Ok(());
        };
        if let Err(e) = self.save().await {
            self.lock().insert(id.to_owned(), before);
            return Err(e);
        }
        Ok(())
    }

    /// Writes the current mapping (whole file, then rename: never half a file).
    async fn save(&self) -> Result<(), String> {
        let _guard = self.save.lock().await;
        let bytes = serde_json::to_vec(&*self.lock()).map_err(|e| e.to_string())?;
        super::save_file(self.file.clone(), bytes).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_mapping_survives_a_reopen_and_forgets_what_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let map = NetworkMap::open(dir.path()).unwrap();
        assert_eq!(map.get("d1"), None);
        map.insert("d1", "ov").await.unwrap();
        map.insert("d2", "ov").await.unwrap();
        map.remove("d2").await.unwrap();
        map.remove("absent").await.unwrap();
        let again = NetworkMap::open(dir.path()).unwrap();
        assert_eq!(again.get("d1").as_deref(), Some("ov"));
        assert_eq!(again.get("d2"), None);
    }

    #[tokio::test]
    async fn a_failed_save_takes_the_change_back() {
        let dir = tempfile::tempdir().unwrap();
        let map = NetworkMap::open(&dir.path().join("missing-dir")).unwrap();
        let err = map.insert("d1", "ov").await.unwrap_err();
        assert!(err.contains("docker-plugin-networks.json"), "{err}");
        assert_eq!(map.get("d1"), None);
    }
}
