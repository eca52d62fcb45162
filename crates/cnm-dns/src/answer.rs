//! What to do with a query: answer it from the records, or forward it. Pure; the listeners
//! call it under the records' read lock and do the I/O.

use std::net::IpAddr;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, PTR};
use hickory_proto::rr::{DNSClass, RData, Record, RecordType};

use crate::name::{KeyBuf, query_key};
use crate::records::{Found, HostFound, Ptr, Records, Want};
use crate::wire::Reply;

/// Who is asking.
#[derive(Clone, Copy, Debug)]
pub(crate) enum View<'a> {
    /// A sandbox through its own listener.
    Sandbox(&'a str),
    /// The host listener, with the cnm domain if one is configured.
    Host(Option<&'a str>),
}

/// The decision for one query.
#[derive(Debug)]
pub(crate) enum Decision {
    /// Answer this.
    Answer(Reply),
    /// Not ours: forward (the caller checks whether the sandbox may).
    Forward,
}

/// Decides how to answer `query` (already checked by [`crate::wire::parse_query`]).
pub(crate) fn decide(records: &Records, view: View<'_>, query: &Message, ttl: u32) -> Decision {
    let q = &query.queries[0];
    let answer = |code| Decision::Answer(Reply::code(code));
    if q.query_class() != DNSClass::IN {
        return answer(ResponseCode::Refused);
    }
    let qtype = q.query_type();
    if matches!(qtype, RecordType::AXFR | RecordType::IXFR) {
        return answer(ResponseCode::Refused);
    }

    if qtype == RecordType::PTR
        && let Some(ip) = reverse_address(q.name())
    {
        let ptr = match view {
            View::Sandbox(s) => records.sandbox_ptr(s, ip),
            View::Host(_) => records.host_ptr(ip),
        };
        return match ptr {
            Ptr::Name(target) => Decision::Answer(Reply {
                code: ResponseCode::NoError,
                authoritative: true,
                answers: vec![Record::from_rdata(
                    q.name().clone(),
                    ttl,
                    RData::PTR(PTR(target)),
                )],
            }),
            Ptr::NxDomain => answer(ResponseCode::NXDomain),
            Ptr::NotOurs => match view {
                View::Sandbox(_) => Decision::Forward,
                View::Host(_) => answer(ResponseCode::Refused),
            },
        };
    }

    let want = Want {
        v4: matches!(qtype, RecordType::A | RecordType::ANY),
        v6: matches!(qtype, RecordType::AAAA | RecordType::ANY),
    };
    let mut buf = KeyBuf::new();
    let key = query_key(q.name(), &mut buf);
    let found = match (view, key) {
        (View::Sandbox(s), Some(key)) => records.sandbox_lookup(s, key, want),
        (View::Sandbox(_), None) => Found::Unknown,
        (View::Host(domain), Some(key)) => match records.host_lookup(key, domain, want) {
            HostFound::Found(f) => f,
            HostFound::NxDomain => return answer(ResponseCode::NXDomain),
            HostFound::OutOfZone => return answer(ResponseCode::Refused),
        },
        (View::Host(_), None) => return answer(ResponseCode::Refused),
    };
    match found {
        Found::Addrs(addrs) => {
            let answers = addrs
                .into_iter()
                .map(|addr| {
                    let rdata = match addr {
                        IpAddr::V4(a) => RData::A(A(a)),
                        IpAddr::V6(a) => RData::AAAA(AAAA(a)),
                    };
                    Record::from_rdata(q.name().clone(), ttl, rdata)
                })
                .collect();
            Decision::Answer(Reply {
                code: ResponseCode::NoError,
                authoritative: true,
                answers,
            })
        }
        // A name we know with nothing of this type: NOERROR, no answer, never forwarded.
        Found::NoData => Decision::Answer(Reply {
            code: ResponseCode::NoError,
            authoritative: true,
            answers: Vec::new(),
        }),
        Found::Unknown => {
            // Docker's rule: when the sandbox's resolv.conf sets ndots itself, a single-label
            // name is the client's first try before its search list; keep it home.
            if let (View::Sandbox(s), Some(key)) = (view, key)
                && matches!(qtype, RecordType::A | RecordType::AAAA)
                && !key.contains('.')
                && records.sandbox(s).is_some_and(|sbx| sbx.dns.ndots_set)
            {
                return answer(ResponseCode::NoError);
            }
            Decision::Forward
        }
    }
}

/// The address a full `in-addr.arpa.`/`ip6.arpa.` name stands for; `None` for anything else
/// (including partial reverse names, which are forwarded like any name).
fn reverse_address(name: &hickory_proto::rr::Name) -> Option<IpAddr> {
    let net = name.parse_arpa_name().ok()?;
    let full = match net.addr() {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    };
    (net.prefix_len() == full).then(|| net.addr())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{EndpointDns, NetworkDns, SandboxDns};
    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;

    fn records() -> Records {
        let mut r = Records::default();
        r.upsert_network(
            "n1",
            &NetworkDns::new("front").subnet("10.1.0.0/24".parse().unwrap()),
        )
        .unwrap();
        r.add_endpoint(
            "n1",
            &EndpointDns::new("e1", "s1", "web").address("10.1.0.2".parse().unwrap()),
        )
        .unwrap();
        r
    }

    fn ask(name: &str, qtype: RecordType) -> Message {
        let mut m = Message::query();
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        m
    }

    /// What sandbox `s1` is told when it asks for `name`.
    fn from_s1(r: &Records, name: &str, qtype: RecordType) -> Decision {
        decide(r, View::Sandbox("s1"), &ask(name, qtype), 0)
    }

    /// The response `view` gets to `query`, which must be answered locally.
    fn answered_to(r: &Records, view: View<'_>, query: &Message) -> Message {
        match decide(r, view, query, 0) {
            Decision::Answer(reply) => reply.into_message(query),
            Decision::Forward => panic!("expected a local answer"),
        }
    }

    /// The response sandbox `s1` gets when it asks for `name`.
    fn answered(r: &Records, name: &str, qtype: RecordType) -> Message {
        answered_to(r, View::Sandbox("s1"), &ask(name, qtype))
    }

    #[test]
    fn local_names_answer_case_insensitively() {
        let r = records();
        let m = answered(&r, "WEB.", RecordType::A);
        assert_eq!(m.response_code, ResponseCode::NoError);
        assert!(m.authoritative && m.recursion_available && m.recursion_desired);
        assert_eq!(m.answers.len(), 1);
        assert_eq!(
            m.answers[0].name.to_ascii(),
            "WEB.",
            "the owner name echoes the question"
        );
        let m = answered(&r, "web.", RecordType::MX);
        assert_eq!(
            (m.response_code, m.answers.len()),
            (ResponseCode::NoError, 0)
        );
        assert!(matches!(
            from_s1(&r, "example.com.", RecordType::A),
            Decision::Forward
        ));
    }

    #[test]
    fn reverse_names_inside_our_subnets_stay_home() {
        let r = records();
        let m = answered(&r, "2.0.1.10.in-addr.arpa.", RecordType::PTR);
        let RData::PTR(PTR(target)) = &m.answers[0].data else {
            panic!()
        };
        assert_eq!(target.to_ascii(), "web.front.");
        let m = answered(&r, "9.0.1.10.in-addr.arpa.", RecordType::PTR);
        assert_eq!(m.response_code, ResponseCode::NXDomain);
        assert!(matches!(
            from_s1(&r, "1.2.0.192.in-addr.arpa.", RecordType::PTR),
            Decision::Forward
        ));
        assert!(matches!(
            from_s1(&r, "1.10.in-addr.arpa.", RecordType::PTR),
            Decision::Forward
        ));
    }

    #[test]
    fn ndots_set_keeps_single_labels_home() {
        let mut r = records();
        assert!(matches!(
            from_s1(&r, "printer.", RecordType::A),
            Decision::Forward
        ));
        r.set_sandbox_dns(
            "s1",
            SandboxDns {
                servers: vec![],
                ndots_set: true,
            },
        );
        let m = answered(&r, "printer.", RecordType::A);
        assert_eq!(
            (m.response_code, m.answers.len()),
            (ResponseCode::NoError, 0)
        );
    }

    #[test]
    fn host_view_refuses_what_it_does_not_serve() {
        let r = records();
        let m = answered_to(
            &r,
            View::Host(Some("cnm")),
            &ask("web.front.cnm.", RecordType::A),
        );
        assert_eq!(m.answers.len(), 1);
        let m = answered_to(
            &r,
            View::Host(Some("cnm")),
            &ask("example.com.", RecordType::A),
        );
        assert_eq!(m.response_code, ResponseCode::Refused);
        let m = answered_to(&r, View::Host(None), &ask("x.front.", RecordType::A));
        assert_eq!(m.response_code, ResponseCode::NXDomain);
        let mut chaos = ask("version.bind.", RecordType::TXT);
        chaos.queries[0].set_query_class(DNSClass::CH);
        let m = answered_to(&r, View::Sandbox("s1"), &chaos);
        assert_eq!(m.response_code, ResponseCode::Refused);
    }

    proptest::proptest! {
        /// Whatever arrives, parsing never panics, an error answer fits a classic datagram, and
        /// a decided answer fits the client's limit.
        #[test]
        fn any_bytes_get_a_bounded_answer_or_none(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
        ) {
            let r = records();
            match crate::wire::parse_query(&bytes) {
                Err(crate::wire::Reject::Drop) => {}
                Err(crate::wire::Reject::Respond(b)) => proptest::prop_assert!(b.len() <= 512),
                Ok(q) => {
                    if let Decision::Answer(reply) = decide(&r, View::Sandbox("s1"), &q.msg, 0) {
                        let mut b = Vec::new();
                        crate::wire::write_reply(&q.msg, reply, q.udp_limit, &mut b);
                        proptest::prop_assert!(b.len() <= q.udp_limit);
                    }
                }
            }
        }
    }
}
