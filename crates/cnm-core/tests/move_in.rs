//! The move-in join path (a driver that creates the interface in the host namespace and lets the
//! controller move it into the sandbox), and undo when a late step of a join fails, with a
//! test-local driver doing real kernel work in throwaway namespaces.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, ensure};
use async_trait::async_trait;
use cnm_core::cnm_sandbox::{LinkKind, LinkSpec, Netlink};
use cnm_core::cnm_types::{ErrorKind, IfName};
use cnm_core::port::PortBinding;
use cnm_core::{
    Capability, Driver, DriverContext, DriverError, DriverRegistration, EndpointInfo,
    EndpointOptions, EndpointSpec, JoinInfo, JoinRequest, JoinedInterface, LeaveRequest,
    NetworkOptions, NetworkSpec, PublishRequest,
};
use cnm_testkit::TestHost;

/// Fails `program_external_connectivity` (the step after the interface is configured) when set.
static FAIL_PUBLISH: AtomicBool = AtomicBool::new(false);

#[derive(Debug)]
struct MoveInDriver {
    host: Netlink,
}

inventory::submit! { DriverRegistration::new("movein", MoveInDriver::create) }

impl MoveInDriver {
    fn create(ctx: &DriverContext) -> Result<Arc<dyn Driver>, DriverError> {
        Ok(Arc::new(Self {
            host: ctx.host_netlink.clone(),
        }))
    }

    fn names(endpoint_id: &str) -> (IfName, IfName) {
        let short = &endpoint_id[..8];
        (
            IfName::new(format!("mv{short}")).expect("10 bytes"),
            IfName::new(format!("mp{short}")).expect("10 bytes"),
        )
    }

    fn err(e: impl std::error::Error + Send + Sync + 'static) -> DriverError {
        DriverError::new("movein", ErrorKind::Internal, e)
    }
}

#[async_trait]
impl Driver for MoveInDriver {
    fn name(&self) -> &str {
        "movein"
    }
    fn capability(&self) -> Capability {
        Capability::local()
    }
    async fn create_network(&self, _: &NetworkSpec) -> Result<(), DriverError> {
        Ok(())
    }
    async fn delete_network(&self, _: &str) -> Result<(), DriverError> {
        Ok(())
    }
    async fn create_endpoint(&self, _: &EndpointSpec) -> Result<EndpointInfo, DriverError> {
        Ok(EndpointInfo::default())
    }
    async fn delete_endpoint(&self, _: &str, _: &str) -> Result<(), DriverError> {
        Ok(())
    }
    async fn join(&self, req: &JoinRequest) -> Result<JoinInfo, DriverError> {
        let (host_end, peer) = Self::names(&req.endpoint_id);
        let spec = LinkSpec::new(
            host_end,
            LinkKind::Veth {
                peer_name: peer.clone(),
                peer_ns: None,
                peer_mac: None,
                peer_mtu: None,
                peer_up: false,
            },
        );
        self.host.create_link(&spec).await.map_err(Self::err)?;
        let mut info = JoinInfo::new(JoinedInterface::MoveIn {
            host_name: peer,
            name_prefix: None,
        });
        let ip = req
            .ipv4
            .context("no address")
            .map_err(|e| DriverError::new("movein", ErrorKind::Internal, e.to_string()))?;
        info.gateway_v4 = Some(Ipv4Addr::from(u32::from(ip.network()) + 1));
        Ok(info)
    }
    async fn leave(&self, req: &LeaveRequest) -> Result<(), DriverError> {
        let (host_end, _) = Self::names(&req.endpoint_id);
        if let Some(link) = self.host.link(host_end.as_str()).await.map_err(Self::err)? {
            self.host.delete_link(link.index).await.map_err(Self::err)?;
        }
        Ok(())
    }
    async fn program_external_connectivity(
        &self,
        request: &PublishRequest<'_>,
    ) -> Result<Vec<PortBinding>, DriverError> {
        let bindings = request.bindings;
        if FAIL_PUBLISH.load(Ordering::SeqCst) {
            return Err(DriverError::new(
                "movein",
                ErrorKind::Unavailable,
                "injected publish failure",
            ));
        }
        Ok(bindings.to_vec())
    }
}

async fn links(nl: &Netlink) -> Result<BTreeSet<String>> {
    Ok(nl.links().await?.into_iter().map(|l| l.name).collect())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn move_in_join_and_undo_of_a_failed_join() -> Result<()> {
    let host = TestHost::new().await?;
    let ctl = host.controller().await?;
    assert_eq!(
        ctl.drivers(),
        ["movein"],
        "only the test's driver is linked into core's tests"
    );
    let net = ctl
        .new_network(
            "movein",
            "mv",
            NetworkOptions::default().subnet("10.56.0.0/24".parse()?),
        )
        .await?;
    let ep = net
        .create_endpoint("ep", EndpointOptions::default())
        .await?;
    let sb = ctl.new_sandbox("c", []).await?;
    let nl = Netlink::connect(sb.netns()).await?;
    let host_before = links(host.netlink()).await?;
    let store_before = ctl.store()?.list("").await?;
    let ipam_before = ctl.ipam()?.snapshot().await;

    // A failure after the interface was moved in and configured unwinds everything.
    FAIL_PUBLISH.store(true, Ordering::SeqCst);
    let e = ep.join_sandbox(&sb, []).await.unwrap_err();
    assert!(e.to_string().contains("injected publish failure"), "{e}");
    assert_eq!(links(&nl).await?.into_iter().collect::<Vec<_>>(), ["lo"]);
    assert_eq!(links(host.netlink()).await?, host_before);
    // The records say what they said before: the join's, committed while its default route
    // and ports were made, are written back (a newer version of the same values).
    let values = |l: Vec<(String, cnm_core::store::Versioned<Vec<u8>>)>| {
        l.into_iter().map(|(k, v)| (k, v.value)).collect::<Vec<_>>()
    };
    assert_eq!(values(ctl.store()?.list("").await?), values(store_before));
    assert_eq!(ctl.ipam()?.snapshot().await, ipam_before);

    FAIL_PUBLISH.store(false, Ordering::SeqCst);
    ep.join_sandbox(&sb, []).await?;
    let eth0 = nl.link("eth0").await?.context("eth0 was not moved in")?;
    ensure!(eth0.up, "eth0 must be up");
    let addrs: Vec<IpAddr> = nl
        .addresses(Some(eth0.index))
        .await?
        .into_iter()
        .map(|a| a.addr.addr())
        .collect();
    assert!(
        addrs.contains(&IpAddr::V4(ep.ipv4().context("no address")?.addr())),
        "{addrs:?}"
    );
    sb.delete().await?;
    assert_eq!(
        links(host.netlink()).await?,
        host_before,
        "leave must give back and delete the pair"
    );
    ep.delete().await?;
    net.delete().await?;
    Ok(())
}
