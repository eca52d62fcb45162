//! Creating a container's sandbox: a persisted namespace whose interfaces are born with IPv6 off
//! (CVE-2024-32473: no IPv6, not even link-local, on the interfaces of IPv4-only endpoints; a
//! join turns it on for an IPv6 endpoint's), loopback up (it predates the default and keeps
//! `::1`), a resolv.conf and a hosts file; the record committed meanwhile.

use cnm_types::FailedTo;
use std::path::PathBuf;
use std::sync::Arc;

use super::{delete_record, put_new_record};
use crate::CoreError;
use crate::id;
use crate::kernel::{IPV6_DEFAULT_OFF, Kernel, SandboxNs};
use crate::model::sandbox::{SandboxInner, SandboxState};
use crate::options::JoinOptions;
use crate::record::{self, SandboxRecord};
use crate::state::Core;
use crate::undo::Undo;

fn check_container_id(cid: &str) -> Result<(), CoreError> {
    if cid.is_empty()
        || cid.len() > 255
        || cid
            .chars()
            .any(|c| c == '/' || c.is_whitespace() || c.is_control())
    {
        return Err(CoreError::invalid(
            "container id",
            cid,
            "must be 1 to 255 characters without '/' or whitespace",
        ));
    }
    Ok(())
}

/// Finds the sandbox of a container, or creates it. With `allow_existing` false an existing
/// sandbox is an error. Returns whether this call created it.
pub(crate) async fn find_or_create(
    core: &Arc<Core>,
    cid: &str,
    opts: JoinOptions,
    allow_existing: bool,
) -> Result<(Arc<SandboxInner>, bool), CoreError> {
    check_container_id(cid)?;
    if !allow_existing && opts.gateway_priority != 0 {
        return Err(CoreError::invalid(
            "gateway priority",
            opts.gateway_priority,
            "it is a join option, not a sandbox option",
        ));
    }
    loop {
        let slot = core.containers.entry(cid.to_owned()).or_default().clone();
        let mut guard = slot.lock().await;
        // The slot may have been retired (sandbox deleted, creation failed) while we waited.
        if !core
            .containers
            .get(cid)
            .is_some_and(|s| Arc::ptr_eq(&s, &slot))
        {
            continue;
        }
        if let Some(sb) = guard.as_ref() {
            if allow_existing {
                return Ok((sb.clone(), false));
            }
            return Err(CoreError::SandboxExists(cid.to_owned()));
        }
        return match create(core, cid, opts).await {
            Ok(sb) => {
                core.sandboxes.insert(sb.id.clone(), sb.clone());
                *guard = Some(sb.clone());
                Ok((sb, true))
            }
            Err(e) => {
                core.containers.remove_if(cid, |_, s| Arc::ptr_eq(s, &slot));
                Err(e)
            }
        };
    }
}

async fn create(
    core: &Arc<Core>,
    cid: &str,
    opts: JoinOptions,
) -> Result<Arc<SandboxInner>, CoreError> {
    let id = id::generate();
    let short = id::short(&id).to_owned();
    let key = core.run_dir.join("netns").join(&id);
    let dir = core.run_dir.join("sandboxes").join(&id);
    let kernel = core.kernel.clone();
    let mut undo = Undo::new();
    let host_namespace = opts.host_namespace;
    // The record depends on nothing the kernel says: it is committed while the namespace and
    // the files are made (its sync overlaps their round trips). A crash in between leaves a
    // record whose namespace is missing or whose hosts file is (written last): the restore
    // drops it (`reload::reopen_sandboxes`) and sweeps what was made.
    let ns_key = if host_namespace {
        host_sandbox_ns(kernel.as_ref()).key
    } else {
        key.clone()
    };
    let rkey = record::sandbox_key(&id);
    let rec = new_record(&id, cid, ns_key, &opts);
    let made = async {
        // A sandbox in the host's own namespace (libnetwork's default sandbox) makes no
        // namespace and changes nothing in the host's: only its directory, files and record.
        let (ns, fresh) = if host_namespace {
            (host_sandbox_ns(kernel.as_ref()), false)
        } else {
            let ns = kernel
                .create_netns(&key, &[(IPV6_DEFAULT_OFF, "1")])
                .await
                .map_err(|e| CoreError::failed("create netns of sandbox", &short, e))?;
            {
                let (kernel, key) = (kernel.clone(), key.clone());
                undo.push("delete netns", move || async move {
                    kernel.delete_netns(&key).await.map_err(|e| {
                        CoreError::failed("delete netns", key.display().to_string(), e)
                    })
                });
            }
            crate::crash::point("sandbox-create:after-netns");
            (ns, true)
        };
        // Loopback comes up while the directory is made and the host's resolv.conf read.
        let (lo, host) = futures::join!(
            async {
                if fresh {
                    kernel.loopback_up(&ns).await
                } else {
                    Ok(())
                }
            },
            kernel.prepare_dir(&dir, &core.resolv_conf)
        );
        {
            let (kernel, dir) = (kernel.clone(), dir.clone());
            undo.push("remove sandbox directory", move || async move {
                kernel.remove_dir(&dir).await.map_err(|e| {
                    CoreError::failed("remove directory", dir.display().to_string(), e)
                })
            });
        }
        let host =
            host.map_err(|e| CoreError::failed("prepare the files of sandbox", &short, e))?;
        lo.map_err(|e| CoreError::failed("bring up loopback in sandbox", &short, e))?;
        finish(&kernel, id.clone(), cid, dir.clone(), ns, opts, &host)
    };
    let (committed, made) = super::overlapped(
        "sandbox-create:record-before-netns",
        put_new_record(core, &rkey, &rec),
        made,
    )
    .await;
    if let Ok(version) = committed {
        // Newest first on unwind: the record goes before the namespace and the files.
        undo.push("delete sandbox record", delete_record(core, rkey, version));
    }
    let result = match (committed, made) {
        (Ok(version), Ok(sb)) => {
            debug_assert_eq!(sb.record(&[], None), rec, "the record committed ahead");
            sb.state().version = version;
            crate::crash::point("sandbox-create:after-record");
            Ok(Arc::new(sb))
        }
        (Err(e), _) | (Ok(_), Err(e)) => Err(e),
    };
    let sb = undo.finish(result).await?;
    tracing::info!(sandbox = %short, container = %cid, key = %sb.key().display(), "sandbox created");
    Ok(sb)
}

/// A new sandbox's record (no endpoint joined yet), as [`SandboxInner::record`] writes it.
fn new_record(id: &str, cid: &str, key: PathBuf, opts: &JoinOptions) -> SandboxRecord {
    SandboxRecord {
        schema: record::SCHEMA,
        id: id.to_owned(),
        container_id: cid.to_owned(),
        key,
        options: opts.clone(),
        endpoints: Vec::new(),
        gateway_endpoint: None,
    }
}

/// The host's namespace as a sandbox's: its key is where the host's namespace is found (the
/// controller's own when the host namespace has no path). Reload reopens it so too.
pub(crate) fn host_sandbox_ns(kernel: &dyn Kernel) -> SandboxNs {
    let key = kernel
        .host_ns()
        .path()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(format!("/proc/{}/ns/net", std::process::id())));
    SandboxNs {
        key,
        ns: kernel.host_ns().clone(),
        netlink: kernel.host_netlink().clone(),
    }
}

/// The files of a sandbox whose namespace is ready, the hosts file last (a recorded sandbox
/// without endpoints and without its hosts file is one whose creation was cut short).
fn finish(
    kernel: &Arc<dyn Kernel>,
    id: String,
    cid: &str,
    dir: PathBuf,
    ns: SandboxNs,
    opts: JoinOptions,
    host: &cnm_sandbox::ResolvConf,
) -> Result<SandboxInner, CoreError> {
    let sb = SandboxInner::new(
        id,
        cid.to_owned(),
        dir,
        ns,
        opts,
        SandboxState {
            joined: Vec::new(),
            gateway: None,
            deleted: false,
            version: 0,
        },
    );
    let rc_path = sb.resolv_conf_path();
    kernel
        .write_resolv_conf(&rc_path, &sb.resolv_conf(host))
        .map_err(|e| CoreError::failed("write resolv.conf", rc_path.display().to_string(), e))?;
    let hosts_path = sb.hosts_path();
    kernel
        .write_hosts(&hosts_path, &sb.hosts_file(&[]))
        .map_err(|e| CoreError::failed("write hosts file", hosts_path.display().to_string(), e))?;
    Ok(sb)
}
