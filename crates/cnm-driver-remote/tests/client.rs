//! The protocol client against the test plugin, no privileges needed: discovery, the
//! handshake, Docker's headers and bodies, bounded waits, typed errors, optional calls and
//! re-activation after a restart.

mod common;

use std::os::unix::net::UnixListener;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use cnm_core::{Driver, NetworkSpec, PublishRequest};
use cnm_driver_remote::plugin::{
    Body, Call, ClientConfig, MEDIA_TYPE, PluginClient, PluginDirs, PluginError,
};
use cnm_driver_remote::wire::network::{self as net, NodeDiscoveryData};
use cnm_driver_remote::{RemoteConfig, RemoteDriver, RemoteError};
use common::{FakePlugin, PluginArgs};
use serde_json::json;

const SHORT: Duration = Duration::from_millis(300);

async fn client(p: &FakePlugin) -> Result<PluginClient> {
    Ok(PluginClient::connect(&p.name, net::SUBSYSTEM, p.dirs(), p.config(SHORT).client).await?)
}

async fn call(
    c: &PluginClient,
    call: Call,
    body: serde_json::Value,
) -> Result<net::Response, PluginError> {
    c.call(call, Body::json(&body).unwrap()).await
}

#[tokio::test]
async fn activation_sends_dockers_headers_and_checks_implements() -> Result<()> {
    let p = FakePlugin::start("hs", None, PluginArgs::default()).await?;
    let c = client(&p).await?;
    assert_eq!(c.implements(), ["NetworkDriver"]);
    let r = &p.requests()?[0];
    assert_eq!(r.method, "Plugin.Activate");
    assert_eq!(r.accept.as_deref(), Some(MEDIA_TYPE));
    assert_eq!(r.content_type.as_deref(), Some(MEDIA_TYPE));
    assert_eq!(MEDIA_TYPE, "application/vnd.docker.plugins.v1.2+json");
    assert!(r.body.is_null(), "the handshake has no body: {:?}", r.body);
    let e = PluginClient::connect("hs", "IpamDriver", p.dirs(), ClientConfig::default())
        .await
        .unwrap_err();
    assert!(matches!(e, PluginError::NotImplemented { .. }), "{e}");
    assert_eq!(
        e.to_string(),
        "plugin \"hs\" does not implement IpamDriver (its handshake lists [\"NetworkDriver\"])"
    );
    Ok(())
}

#[tokio::test]
async fn an_unknown_name_fails_fast_and_says_where_it_looked() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let config = RemoteConfig {
        dirs: PluginDirs::new(vec![dir.path().join("run")], vec![dir.path().join("etc")]),
        // The default wait: an unknown name must not use it.
        client: ClientConfig::default(),
    };
    let started = Instant::now();
    let e = RemoteDriver::connect("nosuchplugin", &config)
        .await
        .unwrap_err();
    let took = started.elapsed();
    // Well under the 2 s activation wait, which an unknown name must not spend (a loaded
    // machine gets room; waiting would take the whole 2 s).
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert!(
        matches!(e, RemoteError::Plugin(PluginError::NotFound { .. })),
        "{e}"
    );
    let text = e.to_string();
    assert!(
        text.starts_with("plugin \"nosuchplugin\" not found"),
        "{text}"
    );
    assert!(
        text.contains(
            &dir.path()
                .join("run/nosuchplugin.sock")
                .display()
                .to_string()
        )
    );
    assert!(
        text.contains(
            &dir.path()
                .join("etc/nosuchplugin/nosuchplugin.json")
                .display()
                .to_string()
        )
    );
    assert_eq!(e.kind(), cnm_types::ErrorKind::NotFound);
    Ok(())
}

#[tokio::test]
async fn a_socket_that_does_not_answer_is_waited_for_briefly() -> Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::create_dir_all(dir.path().join("run"))?;
    // A socket file with nobody listening: connections are refused, as while a plugin starts.
    drop(UnixListener::bind(dir.path().join("run/ghost.sock"))?);
    let config = RemoteConfig {
        dirs: PluginDirs::new(vec![dir.path().join("run")], vec![]),
        client: ClientConfig {
            activate_wait: SHORT,
            ..ClientConfig::default()
        },
    };
    let started = Instant::now();
    let e = RemoteDriver::connect("ghost", &config).await.unwrap_err();
    let took = started.elapsed();
    assert!(
        took >= SHORT && took < Duration::from_secs(2),
        "took {took:?}"
    );
    let text = e.to_string();
    assert!(
        text.contains("plugin \"ghost\": Plugin.Activate: cannot connect to unix://"),
        "{text}"
    );
    assert!(text.contains("waited"), "{text}");
    assert_eq!(e.kind(), cnm_types::ErrorKind::Unavailable);
    Ok(())
}

#[tokio::test]
async fn spec_files_lead_to_plugins_on_tcp_and_on_unix_sockets_elsewhere() -> Result<()> {
    // A TCP plugin named by a .spec file.
    let p = FakePlugin::start(
        "tcpp",
        None,
        PluginArgs {
            tcp: true,
            ..PluginArgs::default()
        },
    )
    .await?;
    let url = p.url.lock().unwrap().clone();
    assert!(url.starts_with("tcp://127.0.0.1:"), "{url}");
    std::fs::write(p.root().join("etc/tcpp.spec"), format!("{url}\n"))?;
    let c = client(&p).await?;
    assert_eq!(c.spec().source, p.root().join("etc/tcpp.spec"));
    let caps: net::CapabilitiesResponse = c.call(net::GET_CAPABILITIES, Body::empty()).await?;
    assert_eq!(caps.scope, "local");
    // A unix plugin in a subdirectory, named by a .json file in the second spec directory.
    let u = FakePlugin::start(
        "jsonp",
        None,
        PluginArgs {
            in_subdir: true,
            ..PluginArgs::default()
        },
    )
    .await?;
    let dirs = PluginDirs::new(vec![], vec![p.root().join("etc"), p.root().join("lib")]);
    std::fs::create_dir_all(p.root().join("lib/jsonp"))?;
    std::fs::write(
        p.root().join("lib/jsonp/jsonp.json"),
        json!({"Name": "jsonp", "Addr": format!("unix://{}", u.socket().display())}).to_string(),
    )?;
    let c = PluginClient::connect("jsonp", net::SUBSYSTEM, dirs, ClientConfig::default()).await?;
    assert_eq!(c.spec().source, p.root().join("lib/jsonp/jsonp.json"));
    assert_eq!(u.requests()?.len(), 1);
    // And its own directory finds it by its socket in NAME/NAME.sock.
    let c = client(&u).await?;
    assert_eq!(c.spec().source, u.socket());
    Ok(())
}

#[tokio::test]
async fn a_hung_plugin_gives_a_bounded_wait_and_a_clear_error() -> Result<()> {
    let p = FakePlugin::start("hang", None, PluginArgs::default()).await?;
    let c = client(&p).await?;
    p.fault("NetworkDriver.DeleteNetwork", Some("hang"))?;
    let started = Instant::now();
    let e = call(&c, net::DELETE_NETWORK, json!({"NetworkID": "n"}))
        .await
        .unwrap_err();
    let took = started.elapsed();
    // Bounded by the call timeout; one attempt (a timeout is not retried, even for an
    // idempotent call) is checked below by the requests the plugin received, not by the clock.
    assert!(took >= SHORT && took < SHORT * 10, "took {took:?}");
    assert_eq!(
        e.to_string(),
        "plugin \"hang\": NetworkDriver.DeleteNetwork: no answer within 300ms"
    );
    assert!(e.may_have_acted());
    assert_eq!(p.requests_of("NetworkDriver.DeleteNetwork")?.len(), 1);
    Ok(())
}

#[tokio::test]
async fn garbage_500_and_refusals_are_typed_errors_naming_plugin_call_and_text() -> Result<()> {
    let p = FakePlugin::start("bad", None, PluginArgs::default()).await?;
    let c = client(&p).await?;
    let leave = json!({"NetworkID": "n", "EndpointID": "e"});

    p.fault("NetworkDriver.Leave", Some("garbage"))?;
    let e = call(&c, net::LEAVE, leave.clone()).await.unwrap_err();
    assert!(matches!(e, PluginError::Garbage { .. }), "{e}");
    assert_eq!(
        e.to_string(),
        "plugin \"bad\": NetworkDriver.Leave: the answer is not valid JSON for this call (\"<html>this is not JSON\")"
    );

    p.fault("NetworkDriver.Leave", Some("500"))?;
    let e = call(&c, net::LEAVE, leave.clone()).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "plugin \"bad\": NetworkDriver.Leave: HTTP 500: simulated failure of NetworkDriver.Leave"
    );
    assert!(!e.may_have_acted());

    p.fault("NetworkDriver.Leave", Some("refuse"))?;
    let e = call(&c, net::LEAVE, leave.clone()).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "plugin \"bad\": NetworkDriver.Leave: simulated refusal of NetworkDriver.Leave"
    );
    assert_eq!(e.kind(), cnm_types::ErrorKind::Internal);

    // No fault: the plugin's own error (no such endpoint) travels in `Err`.
    p.fault("NetworkDriver.Leave", None)?;
    let e = call(&c, net::LEAVE, leave).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "plugin \"bad\": NetworkDriver.Leave: no endpoint e"
    );
    Ok(())
}

#[tokio::test]
async fn an_ipam_plugins_error_travels_in_error() -> Result<()> {
    use cnm_driver_remote::wire::ipam;
    let p = FakePlugin::start(
        "ip",
        None,
        PluginArgs {
            implements: "IpamDriver",
            ..PluginArgs::default()
        },
    )
    .await?;
    let c = PluginClient::connect("ip", ipam::SUBSYSTEM, p.dirs(), p.config(SHORT).client).await?;
    let body = Body::json(&ipam::ReleasePoolRequest {
        pool_id: "nope".into(),
    })?;
    let e = c
        .call::<ipam::Response>(ipam::RELEASE_POOL, body.clone())
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "plugin \"ip\": IpamDriver.ReleasePool: no pool nope"
    );
    p.fault("IpamDriver.ReleasePool", Some("500"))?;
    let e = c
        .call::<ipam::Response>(ipam::RELEASE_POOL, body)
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "plugin \"ip\": IpamDriver.ReleasePool: HTTP 500: simulated failure of IpamDriver.ReleasePool"
    );
    Ok(())
}

#[tokio::test]
async fn optional_calls_tolerate_404_and_required_ones_do_not() -> Result<()> {
    let p = FakePlugin::start("opt", None, PluginArgs::default()).await?;
    let d = RemoteDriver::connect("opt", &p.config(SHORT)).await?;
    for m in [
        "NetworkDriver.ProgramExternalConnectivity",
        "NetworkDriver.RevokeExternalConnectivity",
        "NetworkDriver.DiscoverNew",
        "NetworkDriver.DiscoverDelete",
        "NetworkDriver.DeleteNetwork",
    ] {
        p.fault(m, Some("404"))?;
    }
    d.program_external_connectivity(&PublishRequest::new("n", "e", &[]))
        .await?;
    d.revoke_external_connectivity("n", "e").await?;
    let node = NodeDiscoveryData {
        address: "10.0.0.5".into(),
        bind_address: String::new(),
        self_: true,
    };
    d.discover_new(&node).await?;
    d.discover_delete(&node).await?;
    p.clear_requests()?;
    let e = d.delete_network("n").await.unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("NetworkDriver.DeleteNetwork: not implemented by the plugin (HTTP 404: 404 page not found)"),
        "{text}"
    );
    // A 404 on a required call may mean "restarted, activate me first": it activated the plugin
    // again and asked once more.
    assert_eq!(
        p.methods()?,
        [
            "NetworkDriver.DeleteNetwork",
            "Plugin.Activate",
            "NetworkDriver.DeleteNetwork"
        ]
    );
    assert_eq!(d.client().reactivations(), 1);
    Ok(())
}

#[tokio::test]
async fn requests_have_dockers_shapes() -> Result<()> {
    let p = FakePlugin::start("shape", None, PluginArgs::default()).await?;
    let d = RemoteDriver::connect("shape", &p.config(SHORT)).await?;
    assert_eq!(
        p.methods()?,
        ["Plugin.Activate", "NetworkDriver.GetCapabilities"]
    );
    assert!(
        p.requests()?[1].body.is_null(),
        "GetCapabilities has no body"
    );
    let mut spec = NetworkSpec::new("a".repeat(64), "n1");
    spec.options.insert("com.example.x".into(), "1".into());
    d.create_network(&spec).await?;
    let r = p.requests_of("NetworkDriver.CreateNetwork")?;
    assert_eq!(
        r[0].body,
        json!({
            "NetworkID": "a".repeat(64),
            "Options": {
                "com.docker.network.generic": {"com.example.x": "1"},
                "com.docker.network.enable_ipv6": false,
            },
            "IPv4Data": [],
            "IPv6Data": [],
        })
    );
    assert_eq!(r[0].accept.as_deref(), Some(MEDIA_TYPE));
    let e = d
        .endpoint_oper_info(&"a".repeat(64), "e1")
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("NetworkDriver.EndpointOperInfo: no endpoint e1"),
        "{e}"
    );
    assert_eq!(
        p.requests_of("NetworkDriver.EndpointOperInfo")?[0].body,
        json!({"NetworkID": "a".repeat(64), "EndpointID": "e1"})
    );
    d.discover_new(&NodeDiscoveryData {
        address: "10.0.0.5".into(),
        bind_address: "10.0.0.5".into(),
        self_: false,
    })
    .await?;
    assert_eq!(
        p.requests_of("NetworkDriver.DiscoverNew")?[0].body,
        json!({"DiscoveryType": 1,
               "DiscoveryData": {"Address": "10.0.0.5", "BindAddress": "10.0.0.5", "Self": false}})
    );
    d.delete_network(&"a".repeat(64)).await?;
    assert_eq!(
        p.requests_of("NetworkDriver.DeleteNetwork")?[0].body,
        json!({"NetworkID": "a".repeat(64)})
    );
    Ok(())
}

#[tokio::test]
async fn a_restarted_plugin_is_activated_again() -> Result<()> {
    let p = FakePlugin::start("rs", None, PluginArgs::default()).await?;
    let c = client(&p).await?;
    let first_pid = p.requests()?[0].pid;
    // Down: the call fails after the bounded wait for the plugin to come back, saying so.
    p.kill()?;
    let started = Instant::now();
    let e = call(&c, net::DELETE_NETWORK, json!({"NetworkID": "n"}))
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(2), "took {took:?}");
    let text = format!("{:#}", anyhow::Error::from(e));
    assert!(
        text.contains(
            "NetworkDriver.DeleteNetwork: the plugin went away and could not be activated again"
        ),
        "{text}"
    );
    assert!(text.contains("Plugin.Activate: cannot connect"), "{text}");
    // Back, insisting on the handshake: the call is answered 404 "not activated", the client
    // activates the plugin again and sends the call once more.
    p.restart(|a| a.require_activation = true).await?;
    p.clear_requests()?;
    let answer = call(&c, net::DELETE_NETWORK, json!({"NetworkID": "n"})).await;
    let e = answer.unwrap_err();
    // (The plugin has no network "n": what matters is who answered, and in which order.)
    assert_eq!(
        e.to_string(),
        "plugin \"rs\": NetworkDriver.DeleteNetwork: no network n"
    );
    let reqs = p.requests()?;
    let methods: Vec<&str> = reqs.iter().map(|r| r.method.as_str()).collect();
    assert_eq!(
        methods,
        [
            "NetworkDriver.DeleteNetwork",
            "Plugin.Activate",
            "NetworkDriver.DeleteNetwork"
        ]
    );
    ensure!(
        reqs.iter().all(|r| r.pid != first_pid),
        "answered by the new process"
    );
    assert_eq!(c.reactivations(), 1);
    Ok(())
}

#[tokio::test]
async fn a_plugin_dying_mid_call_is_a_lost_connection_and_is_not_resent_unless_idempotent()
-> Result<()> {
    let p = FakePlugin::start("dies", None, PluginArgs::default()).await?;
    let c = client(&p).await?;
    p.fault("NetworkDriver.Join", Some("die"))?;
    let join = json!({"NetworkID": "n", "EndpointID": "e", "SandboxKey": "/k", "Options": {}});
    let e = call(&c, net::JOIN, join).await.unwrap_err();
    assert!(matches!(e, PluginError::ConnectionLost { .. }), "{e}");
    assert_eq!(
        e.to_string(),
        "plugin \"dies\": NetworkDriver.Join: connection lost before a complete answer"
    );
    assert!(e.may_have_acted());
    p.wait_exit()
        .await
        .context("the plugin exits on a die fault")?;
    assert_eq!(
        p.requests_of("NetworkDriver.Join")?.len(),
        1,
        "a join is never sent twice"
    );
    Ok(())
}

#[tokio::test]
async fn an_idempotent_call_lost_to_a_restart_is_sent_again() -> Result<()> {
    let p = FakePlugin::start("again", None, PluginArgs::default()).await?;
    // Long enough a wait for the plugin to come back that the test's restart fits in it.
    let config = ClientConfig {
        call_timeout: SHORT,
        activate_wait: Duration::from_secs(5),
        ..ClientConfig::default()
    };
    let c = PluginClient::connect("again", net::SUBSYSTEM, p.dirs(), config).await?;
    // The Leave kills the plugin mid-call; the client finds the socket refusing connections and
    // waits; the test restarts the plugin as soon as it is dead.
    p.fault("NetworkDriver.Leave", Some("die"))?;
    let leave = json!({"NetworkID": "n", "EndpointID": "e"});
    let restarted = async {
        p.wait_exit().await?;
        p.fault("NetworkDriver.Leave", None)?;
        p.restart(|_| {}).await
    };
    let (answer, restart) = tokio::join!(call(&c, net::LEAVE, leave), restarted);
    restart?;
    let e = answer.unwrap_err();
    // Answered by the restarted plugin (which knows no endpoint "e"): the Leave was sent again.
    assert_eq!(
        e.to_string(),
        "plugin \"again\": NetworkDriver.Leave: no endpoint e"
    );
    let methods = p.methods()?;
    assert_eq!(
        methods[methods.len() - 3..],
        [
            "NetworkDriver.Leave",
            "Plugin.Activate",
            "NetworkDriver.Leave"
        ]
    );
    assert_eq!(c.reactivations(), 1);
    Ok(())
}
