//! The systemd-resolved registration against a fake `org.freedesktop.resolve1` on a private
//! `dbus-daemon` of the test's own: the calls are checked field by field as resolved receives
//! them. Privileged only because they need `dbus-daemon`, which `cargo xtask test` installs and
//! runs inside its private mount namespace.

mod fake_resolved;

use anyhow::{Result, bail, ensure};
use cnm_dns::resolved::{Registered, ResolvedBus, ResolvedLink, register};
use fake_resolved::{Behaviour, Call, FakeResolved, PrivateBus};

fn link(ifindex: u32, server: &str) -> Result<ResolvedLink> {
    Ok(ResolvedLink {
        ifindex,
        server: server.parse()?,
        domain: "cnm".to_owned(),
    })
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn registers_server_port_and_routing_domain_then_reverts() -> Result<()> {
    let bus = PrivateBus::start().await?;
    let fake = FakeResolved::start(&bus, Behaviour::default()).await?;
    let on = ResolvedBus::Address(bus.address().to_owned());

    let Registered::Done(reg) = register(&on, &link(7, "127.0.0.153:5353")?).await? else {
        bail!("resolved runs on the bus, yet no registration");
    };
    ensure!(reg.ifindex() == 7);
    let calls = fake.calls();
    ensure!(
        calls
            == [
                Call::SetLinkDnsEx(7, vec![(2, vec![127, 0, 0, 153], 5353, String::new())]),
                Call::SetLinkDomains(7, vec![("cnm".to_owned(), true)]),
                Call::SetLinkDefaultRoute(7, false),
            ],
        "{calls:?}"
    );
    reg.revert().await?;
    let calls = fake.calls();
    ensure!(
        calls.len() == 4 && calls[3] == Call::RevertLink(7),
        "{calls:?}"
    );

    // IPv6: family 10, 16 bytes; a trailing dot on the domain is dropped.
    let mut v6 = link(9, "[::1]:53")?;
    v6.domain = "cnm.".to_owned();
    let Registered::Done(reg) = register(&on, &v6).await? else {
        bail!("no registration over IPv6");
    };
    let mut one = [0u8; 16];
    one[15] = 1;
    let calls = fake.calls();
    ensure!(
        calls[4..]
            == [
                Call::SetLinkDnsEx(9, vec![(10, one.to_vec(), 53, String::new())]),
                Call::SetLinkDomains(9, vec![("cnm".to_owned(), true)]),
                Call::SetLinkDefaultRoute(9, false),
            ],
        "{calls:?}"
    );
    reg.revert().await?;
    ensure!(fake.calls().last() == Some(&Call::RevertLink(9)));
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn a_resolved_without_set_link_dns_ex_gets_set_link_dns_on_port_53_only() -> Result<()> {
    let bus = PrivateBus::start().await?;
    let old = Behaviour {
        without_dns_ex: true,
        ..Behaviour::default()
    };
    let fake = FakeResolved::start(&bus, old).await?;
    let on = ResolvedBus::Address(bus.address().to_owned());

    let Registered::Done(_reg) = register(&on, &link(4, "127.0.0.153:53")?).await? else {
        bail!("no registration");
    };
    let calls = fake.calls();
    ensure!(
        calls
            == [
                Call::SetLinkDns(4, vec![(2, vec![127, 0, 0, 153])]),
                Call::SetLinkDomains(4, vec![("cnm".to_owned(), true)]),
                Call::SetLinkDefaultRoute(4, false),
            ],
        "{calls:?}"
    );
    // Another port cannot be said without SetLinkDNSEx: an error naming the method, and
    // nothing left behind (no call recorded but the revert).
    let err = register(&on, &link(5, "127.0.0.153:5353")?)
        .await
        .expect_err("a port other than 53 needs SetLinkDNSEx");
    ensure!(err.to_string().contains("SetLinkDNSEx on link 5"), "{err}");
    let calls = fake.calls();
    ensure!(calls[3..] == [Call::RevertLink(5)], "{calls:?}");
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn a_refused_domain_reverts_the_server_already_set() -> Result<()> {
    let bus = PrivateBus::start().await?;
    let refusing = Behaviour {
        refuse_domains: true,
        ..Behaviour::default()
    };
    let fake = FakeResolved::start(&bus, refusing).await?;
    let on = ResolvedBus::Address(bus.address().to_owned());
    let err = register(&on, &link(3, "127.0.0.153:53")?)
        .await
        .expect_err("resolved refused the domain");
    ensure!(
        err.to_string()
            .starts_with("systemd-resolved refused SetLinkDomains on link 3"),
        "{err}"
    );
    let calls = fake.calls();
    ensure!(
        matches!(
            calls.as_slice(),
            [
                Call::SetLinkDnsEx(3, _),
                Call::SetLinkDomains(3, _),
                Call::RevertLink(3)
            ]
        ),
        "{calls:?}"
    );
    Ok(())
}

#[tokio::test]
#[ignore = "privileged: run cargo xtask test"]
async fn a_bus_without_resolved_is_a_note_and_nothing_is_called() -> Result<()> {
    let bus = PrivateBus::start().await?;
    let on = ResolvedBus::Address(bus.address().to_owned());
    match register(&on, &link(3, "127.0.0.153:53")?).await? {
        Registered::Unavailable(why) => {
            ensure!(why.contains("systemd-resolved does not run"), "{why}")
        }
        Registered::Done(_) => bail!("registered with nobody"),
    }
    // The name appears later: the next registration reaches it, and it saw only that one.
    let fake = FakeResolved::start(&bus, Behaviour::default()).await?;
    let Registered::Done(_reg) = register(&on, &link(3, "127.0.0.153:53")?).await? else {
        bail!("no registration once resolved runs");
    };
    ensure!(fake.calls().len() == 3, "{:?}", fake.calls());
    Ok(())
}
