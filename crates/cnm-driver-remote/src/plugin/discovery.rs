//! Finding a plugin by name, by Docker's rules.
//!
//! Docker looks, in this order, and stops at the first that exists
//! (`docs/extend/plugin_api.md`, "Plugin discovery"):
//!
//! 1. a unix socket `NAME.sock`, then `NAME/NAME.sock`, in `/run/docker/plugins`;
//! 2. in `/etc/docker/plugins`, then `/usr/lib/docker/plugins`: `NAME.spec`, `NAME/NAME.spec`,
//!    `NAME.json`, `NAME/NAME.json`. A `.spec` file holds a URL (`unix:///other.sock`,
//!    `tcp://host:port`); a `.json` file holds `{"Name", "Addr", "TLSConfig"}`.
//!
//! Unlike Docker, a name that matches nothing fails at once: Docker retries the lookup with
//! back-off for up to 15 seconds, which stalls `network create -d typo` for that long. A plugin
//! whose socket exists but does not answer yet is waited for, briefly (see
//! [`ClientConfig::activate_wait`](super::ClientConfig::activate_wait)).

use std::os::unix::fs::FileTypeExt as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::addr::{AddrProblem, PluginAddr};
use super::error::PluginError;

/// Docker's socket directory.
pub const DOCKER_SOCKET_DIR: &str = "/run/docker/plugins";
/// Docker's spec directories, in search order.
pub const DOCKER_SPEC_DIRS: [&str; 2] = ["/etc/docker/plugins", "/usr/lib/docker/plugins"];

/// The directories plugins are looked for in (Docker's by default; tests use their own).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginDirs {
    /// Directories holding `NAME.sock` or `NAME/NAME.sock`, in search order.
    pub sockets: Vec<PathBuf>,
    /// Directories holding `NAME.spec`/`NAME.json` (or in `NAME/`), in search order.
    pub specs: Vec<PathBuf>,
}

impl Default for PluginDirs {
    fn default() -> Self {
        Self {
            sockets: vec![PathBuf::from(DOCKER_SOCKET_DIR)],
            specs: DOCKER_SPEC_DIRS.iter().map(PathBuf::from).collect(),
        }
    }
}

/// A plugin found by name: where it listens and which file said so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginSpec {
    /// The plugin's name.
    pub name: String,
    /// Its address.
    pub addr: PluginAddr,
    /// The socket or spec file it was found by.
    pub source: PathBuf,
}

/// The `.json` spec file, with Docker's field names.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JsonSpec {
    /// The plugin's name (Docker ignores it and uses the file's name; so does cnm).
    #[serde(rename = "Name", default)]
    pub name: String,
    /// The URL of the plugin.
    #[serde(rename = "Addr", default)]
    pub addr: String,
    /// TLS settings, if the plugin is reached over TLS.
    #[serde(rename = "TLSConfig", default, skip_serializing_if = "Option::is_none")]
    pub tls_config: Option<TlsConfig>,
}

/// `TLSConfig` of a `.json` spec file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsConfig {
    /// Whether the server's certificate is not verified.
    #[serde(rename = "InsecureSkipVerify", default)]
    pub insecure_skip_verify: bool,
    /// The CA bundle.
    #[serde(rename = "CAFile", default)]
    pub ca_file: String,
    /// The client certificate.
    #[serde(rename = "CertFile", default)]
    pub cert_file: String,
    /// The client key.
    #[serde(rename = "KeyFile", default)]
    pub key_file: String,
}

/// Refuses a name that is not one path component (it would look outside the directories).
pub fn check_name(name: &str) -> Result<(), PluginError> {
    let reason = if name.is_empty() {
        Some("it is empty")
    } else if name == "." || name == ".." {
        Some("it must not be \".\" or \"..\"")
    } else if name.contains('/') || name.contains('\0') {
        Some("it must not contain '/' or NUL")
    } else if name.len() > 255 {
        Some("it is longer than 255 bytes")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(PluginError::InvalidName {
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

impl PluginDirs {
    /// The given directories.
    pub fn new(sockets: Vec<PathBuf>, specs: Vec<PathBuf>) -> Self {
        Self { sockets, specs }
    }

    /// Every path a plugin of this name may be found at, in search order.
    pub fn candidates(&self, name: &str) -> Vec<PathBuf> {
        let both = |dir: &Path, ext: &str| {
            [
                dir.join(format!("{name}.{ext}")),
                dir.join(name).join(format!("{name}.{ext}")),
            ]
        };
        let mut out = Vec::new();
        for dir in &self.sockets {
            out.extend(both(dir, "sock"));
        }
        for dir in &self.specs {
            out.extend(both(dir, "spec"));
            out.extend(both(dir, "json"));
        }
        out
    }

    /// Finds the plugin `name` (blocking: a few `stat`s and at most one small read).
    ///
    /// Fails at once with [`PluginError::NotFound`], listing every path looked at, when none
    /// exists.
    pub fn find(&self, name: &str) -> Result<PluginSpec, PluginError> {
        check_name(name)?;
        let candidates = self.candidates(name);
        for path in &candidates {
            let Ok(meta) = std::fs::metadata(path) else {
                continue;
            };
            match path.extension().and_then(|e| e.to_str()) {
                // Docker skips a `.sock` path that is not a socket.
                Some("sock") if meta.file_type().is_socket() => {
                    return Ok(PluginSpec {
                        name: name.to_owned(),
                        addr: PluginAddr::Unix(path.clone()),
                        source: path.clone(),
                    });
                }
                Some("spec") => return read_spec(name, path),
                Some("json") => return read_json(name, path),
                _ => {}
            }
        }
        Err(PluginError::NotFound {
            name: name.to_owned(),
            searched: candidates,
        })
    }
}

fn read(name: &str, path: &Path) -> Result<String, PluginError> {
    std::fs::read_to_string(path).map_err(|source| PluginError::ReadSpec {
        name: name.to_owned(),
        path: path.to_owned(),
        source,
    })
}

fn spec_with(name: &str, path: &Path, url: &str) -> Result<PluginSpec, PluginError> {
    match PluginAddr::parse(url) {
        Ok(addr) => Ok(PluginSpec {
            name: name.to_owned(),
            addr,
            source: path.to_owned(),
        }),
        Err(AddrProblem::Invalid(reason)) => Err(PluginError::InvalidSpec {
            name: name.to_owned(),
            path: path.to_owned(),
            reason,
        }),
        Err(AddrProblem::Tls) => Err(PluginError::Unsupported {
            name: name.to_owned(),
            path: path.to_owned(),
            what: format!("TLS ({})", url.trim()),
        }),
    }
}

fn read_spec(name: &str, path: &Path) -> Result<PluginSpec, PluginError> {
    spec_with(name, path, &read(name, path)?)
}

fn read_json(name: &str, path: &Path) -> Result<PluginSpec, PluginError> {
    let text = read(name, path)?;
    let spec: JsonSpec = serde_json::from_str(&text).map_err(|e| PluginError::InvalidSpec {
        name: name.to_owned(),
        path: path.to_owned(),
        reason: format!("not a JSON plugin spec: {e}"),
    })?;
    if spec.tls_config.is_some() {
        // Docker would talk plain HTTP to a tcp:// address despite a TLSConfig; refusing is the
        // safe reading of "TLS will only be verified if this configuration is present".
        return Err(PluginError::Unsupported {
            name: name.to_owned(),
            path: path.to_owned(),
            what: "TLS (TLSConfig)".to_owned(),
        });
    }
    spec_with(name, path, &spec.addr)
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixListener;

    use super::*;

    struct Dirs {
        _tmp: tempfile::TempDir,
        run: PathBuf,
        etc: PathBuf,
        lib: PathBuf,
    }

    impl Dirs {
        fn new() -> Self {
            let tmp = tempfile::tempdir().unwrap();
            let [run, etc, lib] = ["run", "etc", "lib"].map(|d| tmp.path().join(d));
            for d in [&run, &etc, &lib] {
                std::fs::create_dir_all(d).unwrap();
            }
            Self {
                _tmp: tmp,
                run,
                etc,
                lib,
            }
        }

        fn dirs(&self) -> PluginDirs {
            PluginDirs::new(
                vec![self.run.clone()],
                vec![self.etc.clone(), self.lib.clone()],
            )
        }

        fn write(&self, path: PathBuf, text: &str) -> PathBuf {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, text).unwrap();
            path
        }
    }

    #[test]
    fn the_search_order_is_dockers() {
        let d = Dirs::new();
        let c = d.dirs().candidates("p");
        let expect: Vec<PathBuf> = vec![
            d.run.join("p.sock"),
            d.run.join("p/p.sock"),
            d.etc.join("p.spec"),
            d.etc.join("p/p.spec"),
            d.etc.join("p.json"),
            d.etc.join("p/p.json"),
            d.lib.join("p.spec"),
            d.lib.join("p/p.spec"),
            d.lib.join("p.json"),
            d.lib.join("p/p.json"),
        ];
        assert_eq!(c, expect);
        assert_eq!(
            PluginDirs::default().candidates("weave")[..3],
            [
                PathBuf::from("/run/docker/plugins/weave.sock"),
                PathBuf::from("/run/docker/plugins/weave/weave.sock"),
                PathBuf::from("/etc/docker/plugins/weave.spec"),
            ]
        );
    }

    #[test]
    fn a_socket_wins_over_spec_files_and_a_subdirectory_socket_is_found() {
        let d = Dirs::new();
        d.write(d.etc.join("p.spec"), "tcp://127.0.0.1:9\n");
        std::fs::create_dir_all(d.run.join("p")).unwrap();
        let _l = UnixListener::bind(d.run.join("p/p.sock")).unwrap();
        let spec = d.dirs().find("p").unwrap();
        assert_eq!(spec.addr, PluginAddr::Unix(d.run.join("p/p.sock")));
        assert_eq!(spec.source, d.run.join("p/p.sock"));
    }

    #[test]
    fn a_sock_file_that_is_not_a_socket_is_skipped() {
        let d = Dirs::new();
        d.write(d.run.join("p.sock"), "");
        let spec_path = d.write(d.lib.join("p/p.spec"), "unix:///elsewhere/p.sock");
        let spec = d.dirs().find("p").unwrap();
        assert_eq!(spec.addr, PluginAddr::Unix("/elsewhere/p.sock".into()));
        assert_eq!(spec.source, spec_path);
    }

    #[test]
    fn a_json_spec_as_in_dockers_docs() {
        let d = Dirs::new();
        // The example of docs/extend/plugin_api.md, without TLSConfig and with a tcp address.
        d.write(
            d.etc.join("plugin-example.json"),
            r#"{"Name": "plugin-example", "Addr": "tcp://127.0.0.1:8080"}"#,
        );
        let spec = d.dirs().find("plugin-example").unwrap();
        assert_eq!(spec.addr, PluginAddr::Tcp("127.0.0.1:8080".into()));
        // The docs' own example asks for TLS: refused, naming it.
        d.write(
            d.etc.join("tls.json"),
            r#"{
  "Name": "plugin-example",
  "Addr": "https://example.com/docker/plugin",
  "TLSConfig": {
    "InsecureSkipVerify": false,
    "CAFile": "/usr/shared/docker/certs/example-ca.pem",
    "CertFile": "/usr/shared/docker/certs/example-cert.pem",
    "KeyFile": "/usr/shared/docker/certs/example-key.pem"
  }
}"#,
        );
        let e = d.dirs().find("tls").unwrap_err();
        assert!(matches!(e, PluginError::Unsupported { .. }), "{e}");
        assert!(e.to_string().contains("TLS"), "{e}");
        let parsed: JsonSpec =
            serde_json::from_str(&std::fs::read_to_string(d.etc.join("tls.json")).unwrap())
                .unwrap();
        assert_eq!(
            parsed.tls_config.unwrap().ca_file,
            "/usr/shared/docker/certs/example-ca.pem"
        );
    }

    #[test]
    fn unknown_and_bad_names_fail_naming_what_was_searched() {
        let d = Dirs::new();
        let e = d.dirs().find("nosuch").unwrap_err();
        assert_eq!(e.kind(), cnm_types::ErrorKind::NotFound);
        let text = e.to_string();
        assert!(text.contains("\"nosuch\" not found"), "{text}");
        assert!(text.contains(&d.run.join("nosuch.sock").display().to_string()));
        assert!(text.contains(&d.lib.join("nosuch/nosuch.json").display().to_string()));
        for bad in ["", "..", "a/b"] {
            let e = d.dirs().find(bad).unwrap_err();
            assert_eq!(e.kind(), cnm_types::ErrorKind::InvalidInput, "{e}");
        }
    }

    #[test]
    fn bad_spec_files_name_the_file() {
        let d = Dirs::new();
        let p = d.write(d.etc.join("a.spec"), "not a url");
        let e = d.dirs().find("a").unwrap_err();
        assert!(e.to_string().contains(&p.display().to_string()), "{e}");
        let p = d.write(d.etc.join("b.json"), "{");
        let e = d.dirs().find("b").unwrap_err();
        assert!(e.to_string().contains(&p.display().to_string()), "{e}");
    }
}
