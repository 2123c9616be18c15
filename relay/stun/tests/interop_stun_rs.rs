//! Cross-checks against an implementation nobody on this team wrote: the
//! webrtc-rs `stun` crate (as `stun-rs-ref`). Messages we write must parse in
//! theirs with integrity and fingerprint verifying, and messages they write
//! must parse in ours with integrity and fingerprint verifying.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use proptest::prelude::*;
use stun_rs_ref::addr::MappedAddress;
use stun_rs_ref::agent::TransactionId as RefTid;
use stun_rs_ref::attributes::{
    AttrType, ATTR_ERROR_CODE, ATTR_REALM, ATTR_SOFTWARE, ATTR_USERNAME, ATTR_XOR_PEER_ADDRESS,
    ATTR_XOR_RELAYED_ADDRESS,
};
use stun_rs_ref::error_code::{ErrorCode, ErrorCodeAttribute};
use stun_rs_ref::fingerprint::FINGERPRINT;
use stun_rs_ref::integrity::MessageIntegrity;
use stun_rs_ref::message::{
    Getter, Message as RefMessage, MessageType, Setter, BINDING_REQUEST, BINDING_SUCCESS,
    CLASS_ERROR_RESPONSE, CLASS_SUCCESS_RESPONSE, METHOD_ALLOCATE,
};
use stun_rs_ref::textattrs::TextAttribute;
use stun_rs_ref::uattrs::UnknownAttributes;
use stun_rs_ref::xoraddr::XorMappedAddress;
use tern_stun::{
    attr, decode_address, decode_error_code, decode_utf8, decode_xor_address, long_term_key_md5,
    Class, IntegrityError, Message, MessageWriter, Method, TransactionId, TEXT_MAX_LEN,
    USERNAME_MAX_LEN,
};

fn ref_parse(bytes: &[u8]) -> RefMessage {
    let mut m = RefMessage::new();
    m.unmarshal_binary(bytes)
        .expect("stun crate parses our message");
    m
}

fn ref_xor(m: &RefMessage, t: AttrType) -> SocketAddr {
    let mut a = XorMappedAddress::default();
    a.get_from_as(m, t).unwrap();
    SocketAddr::new(a.ip, a.port)
}

/// Ours → theirs: a Binding success response with the attributes a TURN
/// server sends, MESSAGE-INTEGRITY and FINGERPRINT.
fn ours_to_theirs(tid: [u8; 12], mapped: SocketAddr, peer: SocketAddr, software: &str, key: &[u8]) {
    let mut buf = [0u8; 1024];
    let mut w = MessageWriter::new(
        &mut buf,
        Method::BINDING,
        Class::Success,
        TransactionId(tid),
    )
    .unwrap();
    w.add_xor_address(attr::XOR_MAPPED_ADDRESS, mapped).unwrap();
    w.add_xor_address(attr::XOR_PEER_ADDRESS, peer).unwrap();
    w.add_address(attr::MAPPED_ADDRESS, mapped).unwrap();
    w.add_text(attr::SOFTWARE, software).unwrap();
    w.add_message_integrity(key).unwrap();
    w.add_fingerprint().unwrap();
    let n = w.finish();

    let m = ref_parse(&buf[..n]);
    assert_eq!(m.typ, BINDING_SUCCESS);
    assert_eq!(m.transaction_id, RefTid(tid));
    assert_eq!(
        ref_xor(&m, stun_rs_ref::attributes::ATTR_XORMAPPED_ADDRESS),
        mapped
    );
    assert_eq!(ref_xor(&m, ATTR_XOR_PEER_ADDRESS), peer);
    let mut ma = MappedAddress::default();
    ma.get_from(&m).unwrap();
    assert_eq!(SocketAddr::new(ma.ip, ma.port), mapped);
    let sw = TextAttribute::get_from_as(&m, ATTR_SOFTWARE).unwrap();
    assert_eq!(sw.text, software);
    let mut m = m;
    MessageIntegrity(key.to_vec())
        .check(&mut m)
        .expect("their MI check");
    FINGERPRINT.check(&m).expect("their FINGERPRINT check");
}

/// Theirs → ours: a Binding request with USERNAME, XOR-MAPPED-ADDRESS,
/// MESSAGE-INTEGRITY and FINGERPRINT built by the stun crate.
fn theirs_to_ours(tid: [u8; 12], addr: SocketAddr, username: &str, key: &[u8]) {
    let mut m = RefMessage::new();
    m.build(&[
        Box::new(BINDING_REQUEST),
        Box::new(RefTid(tid)),
        Box::new(TextAttribute::new(ATTR_USERNAME, username.to_owned())),
        Box::new(XorMappedAddress {
            ip: addr.ip(),
            port: addr.port(),
        }),
        Box::new(MessageIntegrity(key.to_vec())),
        Box::new(FINGERPRINT),
    ])
    .unwrap();
    let bytes = m.marshal_binary().unwrap();

    let ours = Message::parse(&bytes).expect("we parse their message");
    assert_eq!(ours.method(), Method::BINDING);
    assert_eq!(ours.class(), Class::Request);
    assert_eq!(ours.transaction_id(), TransactionId(tid));
    assert!(ours.has_fingerprint());
    ours.verify_integrity(key)
        .expect("their MI verifies in ours");
    let u = ours.get(attr::USERNAME).unwrap();
    assert_eq!(decode_utf8(u.value, USERNAME_MAX_LEN).unwrap(), username);
    let a = ours.get(attr::XOR_MAPPED_ADDRESS).unwrap();
    assert_eq!(
        decode_xor_address(a.value, &ours.transaction_id()).unwrap(),
        addr
    );
    // Not `key + [0]`: HMAC zero-pads keys, so that would be the same key.
    let mut wrong = key.to_vec();
    wrong.push(1);
    assert_eq!(ours.verify_integrity(&wrong), Err(IntegrityError::Mismatch));
}

#[test]
fn binding_both_ways_v4_and_v6() {
    let v4: SocketAddr = "203.0.113.9:49152".parse().unwrap();
    let v6: SocketAddr = "[2001:db8::dead:beef]:3478".parse().unwrap();
    ours_to_theirs([1; 12], v4, v6, "tern", b"short-term-password");
    ours_to_theirs([2; 12], v6, v4, "tern", b"");
    theirs_to_ours([3; 12], v4, "alice:bob", b"pw");
    theirs_to_ours([4; 12], v6, "\u{30DE}\u{30C8}\u{30EA}", b"pw");
}

#[test]
fn long_term_allocate_error_both_ways() {
    let key = long_term_key_md5("user", "example.org", "pass");
    assert_eq!(
        key.to_vec(),
        MessageIntegrity::new_long_term_integrity(
            "user".into(),
            "example.org".into(),
            "pass".into()
        )
        .0
    );

    // Ours → theirs: 401 with REALM, UNKNOWN-ATTRIBUTES, MI, FINGERPRINT.
    let tid = [7u8; 12];
    let mut buf = [0u8; 512];
    let mut w =
        MessageWriter::new(&mut buf, Method::ALLOCATE, Class::Error, TransactionId(tid)).unwrap();
    w.add_error_code(420, "Unknown Attribute").unwrap();
    w.add_unknown_attributes(&[0x7001, 0x0031, 0x7fff]).unwrap();
    w.add_text(attr::REALM, "example.org").unwrap();
    w.add_message_integrity(&key).unwrap();
    w.add_fingerprint().unwrap();
    let n = w.finish();
    let mut m = ref_parse(&buf[..n]);
    assert_eq!(
        m.typ,
        MessageType {
            method: METHOD_ALLOCATE,
            class: CLASS_ERROR_RESPONSE
        }
    );
    let mut ec = ErrorCodeAttribute::default();
    ec.get_from(&m).unwrap();
    assert!(ec.code == ErrorCode(420));
    assert_eq!(ec.reason, b"Unknown Attribute");
    let mut ua = UnknownAttributes(Vec::new());
    ua.get_from(&m).unwrap();
    assert_eq!(
        ua.0,
        vec![AttrType(0x7001), AttrType(0x0031), AttrType(0x7fff)]
    );
    assert_eq!(
        TextAttribute::get_from_as(&m, ATTR_REALM).unwrap().text,
        "example.org"
    );
    MessageIntegrity(key.to_vec()).check(&mut m).unwrap();
    FINGERPRINT.check(&m).unwrap();

    // Theirs → ours: Allocate success with XOR-RELAYED-ADDRESS and ERROR-CODE.
    let relayed: SocketAddr = "198.51.100.1:50000".parse().unwrap();
    let mut m = RefMessage::new();
    m.build(&[
        Box::new(MessageType {
            method: METHOD_ALLOCATE,
            class: CLASS_SUCCESS_RESPONSE,
        }),
        Box::new(RefTid(tid)),
        Box::new(ErrorCodeAttribute {
            code: ErrorCode(438),
            reason: b"Stale Nonce".to_vec(),
        }),
        Box::new(TextAttribute::new(ATTR_SOFTWARE, "ref".into())),
    ])
    .unwrap();
    XorMappedAddress {
        ip: relayed.ip(),
        port: relayed.port(),
    }
    .add_to_as(&mut m, ATTR_XOR_RELAYED_ADDRESS)
    .unwrap();
    MessageIntegrity(key.to_vec()).add_to(&mut m).unwrap();
    FINGERPRINT.add_to(&mut m).unwrap();
    let bytes = m.marshal_binary().unwrap();
    let ours = Message::parse(&bytes).unwrap();
    assert_eq!(
        (ours.method(), ours.class()),
        (Method::ALLOCATE, Class::Success)
    );
    ours.verify_integrity(&key).unwrap();
    let (code, reason) = decode_error_code(ours.get(attr::ERROR_CODE).unwrap().value).unwrap();
    assert_eq!((code, reason), (438, "Stale Nonce"));
    let a = ours.get(attr::XOR_RELAYED_ADDRESS).unwrap();
    assert_eq!(
        decode_xor_address(a.value, &TransactionId(tid)).unwrap(),
        relayed
    );
    let sw = ours.get(attr::SOFTWARE).unwrap();
    assert_eq!(decode_utf8(sw.value, TEXT_MAX_LEN).unwrap(), "ref");
    assert_eq!(ATTR_ERROR_CODE, AttrType(attr::ERROR_CODE));
}

#[test]
fn their_mapped_address_decodes_in_ours() {
    let addr: SocketAddr = "[fe80::1]:9".parse().unwrap();
    let mut m = RefMessage::new();
    m.build(&[
        Box::new(BINDING_SUCCESS),
        Box::new(RefTid([5; 12])),
        Box::new(MappedAddress {
            ip: addr.ip(),
            port: addr.port(),
        }),
    ])
    .unwrap();
    let bytes = m.marshal_binary().unwrap();
    let ours = Message::parse(&bytes).unwrap();
    assert_eq!(
        decode_address(ours.get(attr::MAPPED_ADDRESS).unwrap().value).unwrap(),
        addr
    );
    assert!(!ours.has_fingerprint());
}

fn arb_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>())
            .prop_map(|(ip, p)| SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), p)),
        (any::<[u8; 16]>(), any::<u16>())
            .prop_map(|(ip, p)| SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), p)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 128,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn ours_parse_in_theirs(
        tid in any::<[u8; 12]>(),
        mapped in arb_addr(),
        peer in arb_addr(),
        software in "\\PC{0,40}",
        key in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        ours_to_theirs(tid, mapped, peer, &software, &key);
    }

    #[test]
    fn theirs_parse_in_ours(
        tid in any::<[u8; 12]>(),
        addr in arb_addr(),
        username in "\\PC{0,60}",
        key in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        theirs_to_ours(tid, addr, &username, &key);
    }
}
