//! From bytes to a checked query, and from a response to bytes that fit what the client allows.
//! The codec is hickory-proto's; this module only decides what to accept and how big to answer.

use hickory_proto::op::{
    Edns, Header, Message, MessageType, Metadata, OpCode, ResponseCode, emit_message_parts,
};
use hickory_proto::rr::Record;
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, BinEncoder};

/// A DNS header is 12 bytes; anything shorter cannot even be answered.
pub(crate) const HEADER_LEN: usize = 12;
/// What a client without EDNS may receive over UDP (RFC 1035 §4.2.1).
pub(crate) const CLASSIC_UDP: usize = 512;
/// The most we answer over UDP whatever the client advertises; loopback never fragments, but
/// a client asking for 64 KiB gets no more than this before falling back to TCP.
pub(crate) const MAX_UDP: usize = 4096;
/// The payload size we advertise in our own OPT records (the DNS flag day 2020 value).
pub(crate) const OUR_PAYLOAD: u16 = 1232;
/// A TCP message's length prefix is 16 bits.
pub(crate) const MAX_TCP: usize = u16::MAX as usize;

/// A query worth answering.
#[derive(Debug)]
pub(crate) struct Query {
    pub(crate) msg: Message,
    /// The biggest UDP answer the client accepts.
    pub(crate) udp_limit: usize,
}

/// Why a message is not a query we answer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Reject {
    /// Say nothing: too short to carry an id, or a response (answering responses loops).
    Drop,
    /// Answer with this error message (FORMERR, NOTIMP, BADVERS), already encoded and never
    /// bigger than a classic UDP answer.
    Respond(Vec<u8>),
}

/// Checks and decodes a query.
pub(crate) fn parse_query(bytes: &[u8]) -> Result<Query, Reject> {
    if bytes.len() < HEADER_LEN {
        return Err(Reject::Drop);
    }
    let header = Header::read(&mut BinDecoder::new(bytes)).map_err(|_| Reject::Drop)?;
    if header.metadata.message_type != MessageType::Query {
        return Err(Reject::Drop);
    }
    let id = header.metadata.id;
    let op = header.metadata.op_code;
    let msg = Message::from_vec(bytes).map_err(|_| {
        // The header is fine, the rest is not: FORMERR, with no question (we could not read one).
        Reject::Respond(error_bytes(
            id,
            op,
            ResponseCode::FormErr,
            header.metadata.recursion_desired,
        ))
    })?;
    if op != OpCode::Query {
        return Err(Reject::Respond(encode(
            &error_response(&msg, ResponseCode::NotImp),
            CLASSIC_UDP,
        )));
    }
    if msg.queries.len() != 1 || !msg.answers.is_empty() || !msg.authorities.is_empty() {
        return Err(Reject::Respond(encode(
            &error_response(&msg, ResponseCode::FormErr),
            CLASSIC_UDP,
        )));
    }
    if let Some(edns) = &msg.edns
        && edns.version() > 0
    {
        // RFC 6891 §6.1.3: an unknown EDNS version gets BADVERS.
        return Err(Reject::Respond(encode(
            &error_response(&msg, ResponseCode::BADVERS),
            CLASSIC_UDP,
        )));
    }
    let udp_limit = match &msg.edns {
        Some(e) => usize::from(e.max_payload()).clamp(CLASSIC_UDP, MAX_UDP),
        None => CLASSIC_UDP,
    };
    Ok(Query { msg, udp_limit })
}

/// A response to `query` with its id, opcode, question and RD/CD bits, RA set, and our OPT
/// record if the query had one (RFC 6891 §7: only then).
pub(crate) fn response_to(query: &Message, code: ResponseCode) -> Message {
    let mut resp = Message::response(query.id, query.op_code);
    resp.metadata = response_metadata(query, code, false);
    resp.queries = query.queries.clone();
    resp.edns = response_edns(query);
    resp
}

/// The header of a response to `query`.
fn response_metadata(query: &Message, code: ResponseCode, authoritative: bool) -> Metadata {
    let mut meta = Metadata::new(query.id, MessageType::Response, query.op_code);
    meta.recursion_desired = query.recursion_desired;
    meta.checking_disabled = query.checking_disabled;
    meta.recursion_available = true;
    meta.authoritative = authoritative;
    meta.response_code = code;
    meta
}

/// Our OPT record, when the query had one.
fn response_edns(query: &Message) -> Option<Edns> {
    query.edns.as_ref().map(|q| {
        let mut edns = Edns::new();
        edns.set_max_payload(OUR_PAYLOAD);
        edns.set_dnssec_ok(q.flags().dnssec_ok);
        edns
    })
}

/// A local answer as decided from the records; the rest of the response (id, question, flags,
/// OPT record) comes from the query, so nothing of the query is copied to build it.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) code: ResponseCode,
    pub(crate) authoritative: bool,
    pub(crate) answers: Vec<Record>,
}

impl Reply {
    /// An answer with this code and nothing else.
    pub(crate) fn code(code: ResponseCode) -> Self {
        Self {
            code,
            authoritative: false,
            answers: Vec::new(),
        }
    }

    /// The whole response message (for the rare paths and for tests).
    pub(crate) fn into_message(self, query: &Message) -> Message {
        let mut msg = response_to(query, self.code);
        msg.metadata.authoritative = self.authoritative;
        msg.answers = self.answers;
        msg
    }
}

/// Encodes the response to `query` carrying `reply` into `out` (replacing what it held), in at
/// most `limit` bytes. The common case is one pass of hickory's encoder over borrowed parts into
/// the caller's reused buffer; an answer too big for `limit` goes through [`encode`]'s cut.
pub(crate) fn write_reply(query: &Message, reply: Reply, limit: usize, out: &mut Vec<u8>) {
    out.clear();
    let meta = response_metadata(query, reply.code, reply.authoritative);
    let edns = response_edns(query);
    let written = emit_message_parts(
        &meta,
        &mut query.queries.iter(),
        &mut reply.answers.iter(),
        &mut std::iter::empty::<&Record>(),
        &mut std::iter::empty::<&Record>(),
        edns.as_ref(),
        None,
        &mut BinEncoder::new(out),
    );
    if written.is_ok() && out.len() <= limit {
        return;
    }
    *out = encode(&reply.into_message(query), limit);
}

fn error_response(query: &Message, code: ResponseCode) -> Message {
    let mut resp = response_to(query, code);
    if code == ResponseCode::BADVERS {
        resp.queries.clear();
    }
    resp
}

/// A bare error header, for a query we could not decode past its header.
fn error_bytes(id: u16, op: OpCode, code: ResponseCode, rd: bool) -> Vec<u8> {
    let mut resp = Message::error_msg(id, op, code);
    resp.metadata.recursion_desired = rd;
    resp.metadata.recursion_available = true;
    encode(&resp, CLASSIC_UDP)
}

/// Encodes `msg` in at most `limit` bytes. What does not fit is cut at a whole record: the
/// answer keeps as many answer records as fit (old musl resolvers use them), the authority and
/// additional sections go, the OPT record stays, and TC is set so the client retries over TCP.
pub(crate) fn encode(msg: &Message, limit: usize) -> Vec<u8> {
    match msg.to_vec() {
        Ok(bytes) if bytes.len() <= limit => return bytes,
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(error = %e, "cannot encode a response; answering SERVFAIL");
            let mut failed = Message::error_msg(msg.id, msg.op_code, ResponseCode::ServFail);
            failed.metadata.recursion_desired = msg.recursion_desired;
            failed.metadata.recursion_available = true;
            return failed.to_vec().unwrap_or_default();
        }
    }
    let mut cut = msg.clone();
    cut.metadata.truncation = true;
    cut.authorities.clear();
    cut.additionals.clear();
    let all = std::mem::take(&mut cut.answers);
    // The largest prefix of answers that fits: log2(n) encodings, only on this rare path.
    let (mut lo, mut hi) = (0usize, all.len());
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        cut.answers = all[..mid].to_vec();
        if cut.to_vec().is_ok_and(|b| b.len() <= limit) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    cut.answers = all[..lo].to_vec();
    match cut.to_vec() {
        Ok(bytes) if bytes.len() <= limit => bytes,
        _ => minimal(&cut),
    }
}

/// The header alone with TC set: 12 bytes always fit.
fn minimal(msg: &Message) -> Vec<u8> {
    let mut bare = Message::response(msg.id, msg.op_code);
    bare.metadata = msg.metadata;
    bare.metadata.truncation = true;
    bare.to_vec().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query as Question;
    use hickory_proto::rr::rdata::A;
    use hickory_proto::rr::{Name, RData, Record, RecordType};

    fn query(name: &str, edns: Option<u16>) -> Message {
        let mut m = Message::query();
        m.metadata.recursion_desired = true;
        m.add_query(Question::query(
            Name::from_ascii(name).unwrap(),
            RecordType::A,
        ));
        if let Some(size) = edns {
            let mut e = Edns::new();
            e.set_max_payload(size);
            m.set_edns(e);
        }
        m
    }

    #[test]
    fn accepts_a_query_and_reads_its_size() {
        let q = parse_query(&query("web.", None).to_vec().unwrap()).unwrap();
        assert_eq!(q.udp_limit, 512);
        let q = parse_query(&query("web.", Some(1232)).to_vec().unwrap()).unwrap();
        assert_eq!(q.udp_limit, 1232);
        let q = parse_query(&query("web.", Some(100)).to_vec().unwrap()).unwrap();
        assert_eq!(q.udp_limit, 512, "below 512 means 512 (RFC 6891 §6.2.5)");
        let q = parse_query(&query("web.", Some(65000)).to_vec().unwrap()).unwrap();
        assert_eq!(q.udp_limit, MAX_UDP);
    }

    #[test]
    fn rejects_what_is_not_a_query() {
        assert_eq!(parse_query(&[0; 11]).unwrap_err(), Reject::Drop);
        let mut resp = query("web.", None);
        resp.metadata.message_type = MessageType::Response;
        assert_eq!(
            parse_query(&resp.to_vec().unwrap()).unwrap_err(),
            Reject::Drop
        );

        let mut bytes = query("web.", None).to_vec().unwrap();
        bytes.truncate(bytes.len() - 3);
        let Reject::Respond(formerr) = parse_query(&bytes).unwrap_err() else {
            panic!("a cut query gets FORMERR")
        };
        let m = Message::from_vec(&formerr).unwrap();
        assert_eq!(m.response_code, ResponseCode::FormErr);
        assert_eq!(m.id, u16::from_be_bytes([bytes[0], bytes[1]]));

        let mut two = query("a.", None);
        two.add_query(Question::query(
            Name::from_ascii("b.").unwrap(),
            RecordType::A,
        ));
        let Reject::Respond(b) = parse_query(&two.to_vec().unwrap()).unwrap_err() else {
            panic!()
        };
        assert_eq!(
            Message::from_vec(&b).unwrap().response_code,
            ResponseCode::FormErr
        );

        let mut notify = query("a.", None);
        notify.metadata.op_code = OpCode::Notify;
        let Reject::Respond(b) = parse_query(&notify.to_vec().unwrap()).unwrap_err() else {
            panic!()
        };
        assert_eq!(
            Message::from_vec(&b).unwrap().response_code,
            ResponseCode::NotImp
        );

        let mut v1 = query("a.", Some(1232));
        v1.edns.as_mut().unwrap().set_version(1);
        let Reject::Respond(b) = parse_query(&v1.to_vec().unwrap()).unwrap_err() else {
            panic!()
        };
        // BADVERS and BADSIG share the value 16; hickory decodes it as BADSIG.
        assert_eq!(u16::from(Message::from_vec(&b).unwrap().response_code), 16);
    }

    #[test]
    fn big_answers_are_cut_to_the_limit_with_tc() {
        let q = query("many.", Some(1232));
        let mut resp = response_to(&q, ResponseCode::NoError);
        for i in 0..200u32 {
            resp.add_answer(Record::from_rdata(
                Name::from_ascii("many.").unwrap(),
                0,
                RData::A(A::from(std::net::Ipv4Addr::from(0x0a00_0000 + i))),
            ));
        }
        let full = encode(&resp, MAX_TCP);
        assert!(full.len() > 3000);
        assert!(!Message::from_vec(&full).unwrap().truncation);
        for limit in [512, 1232] {
            let cut = encode(&resp, limit);
            assert!(cut.len() <= limit, "{} > {limit}", cut.len());
            let m = Message::from_vec(&cut).unwrap();
            assert!(m.truncation);
            assert!(m.edns.is_some(), "the OPT record stays");
            assert!(!m.answers.is_empty() && m.answers.len() < 200);
            assert_eq!(m.queries, q.queries);
        }
    }
}
