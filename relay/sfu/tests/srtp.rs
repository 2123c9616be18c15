//! SRTP/SRTCP against published test vectors (RFC 3711 appendix B via
//! libsrtp's validation vectors, RFC 7714 §16–17), cross-checked both ways
//! against the webrtc-rs `srtp` crate, and fuzz-style: garbage, tampering,
//! replays and wrong keys are refused with a clear error, never a panic.

use proptest::prelude::*;
use srtp_ref::context::Context as RefContext;
use srtp_ref::protection_profile::ProtectionProfile as RefProfile;
use tern_sfu::srtp::{SessionKeys, SrtpContext, SrtpError, SrtpProfile};

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn protect_rtp(c: &mut SrtpContext, plain: &[u8]) -> Result<Vec<u8>, SrtpError> {
    let mut buf = plain.to_vec();
    buf.resize(plain.len() + c.profile().rtp_overhead(), 0);
    let n = c.protect_rtp(&mut buf, plain.len())?;
    buf.truncate(n);
    Ok(buf)
}

fn unprotect_rtp(c: &mut SrtpContext, srtp: &[u8]) -> Result<Vec<u8>, SrtpError> {
    let mut buf = srtp.to_vec();
    let n = c.unprotect_rtp(&mut buf)?;
    buf.truncate(n);
    Ok(buf)
}

fn protect_rtcp(c: &mut SrtpContext, plain: &[u8]) -> Result<Vec<u8>, SrtpError> {
    let mut buf = plain.to_vec();
    buf.resize(plain.len() + c.profile().rtcp_overhead(), 0);
    let n = c.protect_rtcp(&mut buf, plain.len())?;
    buf.truncate(n);
    Ok(buf)
}

fn unprotect_rtcp(c: &mut SrtpContext, srtcp: &[u8]) -> Result<Vec<u8>, SrtpError> {
    let mut buf = srtcp.to_vec();
    let n = c.unprotect_rtcp(&mut buf)?;
    buf.truncate(n);
    Ok(buf)
}

const RTP_PLAIN: &str = "800f1234decafbadcafebabeabababababababababababababababab";
const RTCP_PLAIN: &str = "81c8000bcafebabeabababababababababababababababab";

/// libsrtp's srtp_validate vectors (RFC 3711 appendix B.3 master key).
#[test]
fn aes_cm_128_hmac_sha1_80_vectors() {
    let key = hex("e1f97a0d3e018be0d64fa32c06de4139");
    let salt = hex("0ec675ad498afeebb6960b3aabe6");
    let srtp = hex("800f1234decafbadcafebabe4e55dc4ce79978d88ca4d215949d2402b78d6acc99ea179b8dbb");
    let srtcp = hex("81c8000bcafebabe7128035be487b9bdbef89041f977a5a880000001993e08cd54d6c1230798");
    let p = SrtpProfile::Aes128CmHmacSha1_80;
    let mut tx = SrtpContext::new(p, &key, &salt).unwrap();
    let mut rx = SrtpContext::new(p, &key, &salt).unwrap();
    assert_eq!(protect_rtp(&mut tx, &hex(RTP_PLAIN)).unwrap(), srtp);
    assert_eq!(unprotect_rtp(&mut rx, &srtp).unwrap(), hex(RTP_PLAIN));
    assert_eq!(protect_rtcp(&mut tx, &hex(RTCP_PLAIN)).unwrap(), srtcp);
    assert_eq!(unprotect_rtcp(&mut rx, &srtcp).unwrap(), hex(RTCP_PLAIN));
    // Replays are refused, and counted.
    assert_eq!(unprotect_rtp(&mut rx, &srtp), Err(SrtpError::Replayed));
    assert_eq!(unprotect_rtcp(&mut rx, &srtcp), Err(SrtpError::Replayed));
    assert_eq!(rx.stats().replayed, 2);
    assert_eq!(rx.stats().unprotected, 2);
}

/// libsrtp's srtp_validate_gcm vector: the KDF with a 96-bit salt.
#[test]
fn aead_aes_128_gcm_master_key_vector() {
    let key = hex("000102030405060708090a0b0c0d0e0f");
    let salt = hex("a0a1a2a3a4a5a6a7a8a9aaab");
    let srtp = hex(concat!(
        "800f1234decafbadcafebabec5002ede04cfdd2eb91159e0880aa06e",
        "d2976826f796b201df3131a127e8a392"
    ));
    let p = SrtpProfile::AeadAes128Gcm;
    let mut tx = SrtpContext::new(p, &key, &salt).unwrap();
    let mut rx = SrtpContext::new(p, &key, &salt).unwrap();
    assert_eq!(protect_rtp(&mut tx, &hex(RTP_PLAIN)).unwrap(), srtp);
    assert_eq!(unprotect_rtp(&mut rx, &srtp).unwrap(), hex(RTP_PLAIN));
}

fn rfc7714_context() -> SrtpContext {
    let mut k = SessionKeys {
        key: [0; 16],
        salt: [0; 14],
        auth: [0; 20],
    };
    k.key
        .copy_from_slice(&hex("000102030405060708090a0b0c0d0e0f"));
    k.salt[..12].copy_from_slice(&hex("517569642070726f2071756f"));
    SrtpContext::from_session_keys(SrtpProfile::AeadAes128Gcm, &k, &k)
}

/// RFC 7714 §16.1.1 and §17.1, §17.3 (session keys given directly).
#[test]
fn rfc7714_vectors() {
    let rtp = hex(concat!(
        "8040f17b8041f8d35501a0b247616c6c696120657374206f6d6e697320646976",
        "69736120696e207061727465732074726573"
    ));
    let srtp = hex(concat!(
        "8040f17b8041f8d35501a0b2f24de3a3fb34de6cacba861c9d7e4bcabe633bd5",
        "0d294e6f42a5f47a51c7d19b36de3adf8833899d7f27beb16a9152cf765ee4390cce"
    ));
    assert_eq!(protect_rtp(&mut rfc7714_context(), &rtp).unwrap(), srtp);
    assert_eq!(unprotect_rtp(&mut rfc7714_context(), &srtp).unwrap(), rtp);

    let rtcp = hex(concat!(
        "81c8000d4d6172734e5450314e545032525450200000042a0000e9304c756e61",
        "deadbeefdeadbeefdeadbeefdeadbeefdeadbeef"
    ));
    let srtcp = hex(concat!(
        "81c8000d4d61727363e94885dcdab67ca727d7662f6b7e997ff5c0f76c06f32d",
        "c676a5f1730d6fda4ce09b4686303ded0bb9275bc84aa45896cf4d2fc5abf872",
        "45d9eade800005d4"
    ));
    let tag_only = hex(concat!(
        "81c8000d4d6172734e5450314e545032525450200000042a0000e9304c756e61",
        "deadbeefdeadbeefdeadbeefdeadbeefdeadbeef841dd9683dd78ec92ae58790",
        "125f62b3000005d4"
    ));
    assert_eq!(
        unprotect_rtcp(&mut rfc7714_context(), &srtcp).unwrap(),
        rtcp
    );
    assert_eq!(
        unprotect_rtcp(&mut rfc7714_context(), &tag_only).unwrap(),
        rtcp
    );
    // Our sender counts from index 1: wind it to the vector's 0x5d4.
    let mut tx = rfc7714_context();
    for _ in 1..0x5d4 {
        protect_rtcp(&mut tx, &rtcp).unwrap();
    }
    assert_eq!(protect_rtcp(&mut tx, &rtcp).unwrap(), srtcp);
}

#[test]
fn wrong_keys_tampering_and_short_input_are_refused() {
    for p in [SrtpProfile::Aes128CmHmacSha1_80, SrtpProfile::AeadAes128Gcm] {
        let salt = vec![7u8; p.master_salt_len()];
        let mut tx = SrtpContext::new(p, &[1; 16], &salt).unwrap();
        let mut wrong = SrtpContext::new(p, &[2; 16], &salt).unwrap();
        let mut rx = SrtpContext::new(p, &[1; 16], &salt).unwrap();
        let srtp = protect_rtp(&mut tx, &hex(RTP_PLAIN)).unwrap();
        assert_eq!(unprotect_rtp(&mut wrong, &srtp), Err(SrtpError::AuthFailed));
        assert_eq!(wrong.stats().auth_failed, 1);
        for i in 0..srtp.len() {
            let mut t = srtp.clone();
            t[i] ^= 0x01;
            assert!(unprotect_rtp(&mut rx, &t).is_err(), "{p:?} flip at {i}");
        }
        // A failed packet does not burn its index: the genuine one still passes.
        assert_eq!(unprotect_rtp(&mut rx, &srtp).unwrap(), hex(RTP_PLAIN));
        let srtcp = protect_rtcp(&mut tx, &hex(RTCP_PLAIN)).unwrap();
        assert_eq!(
            unprotect_rtcp(&mut wrong, &srtcp),
            Err(SrtpError::AuthFailed)
        );
        assert_eq!(unprotect_rtp(&mut rx, &srtp[..5]), Err(SrtpError::TooShort));
        assert_eq!(
            unprotect_rtcp(&mut rx, &srtcp[..10]),
            Err(SrtpError::TooShort)
        );
        let mut small = hex(RTP_PLAIN);
        let n = small.len();
        assert_eq!(tx.protect_rtp(&mut small, n), Err(SrtpError::NoRoom));
        assert!(matches!(
            SrtpContext::new(p, &[0; 15], &salt),
            Err(SrtpError::KeyLength { want: 16, got: 15 })
        ));
    }
}

fn ref_profile(p: SrtpProfile) -> RefProfile {
    match p {
        SrtpProfile::Aes128CmHmacSha1_80 => RefProfile::Aes128CmHmacSha1_80,
        _ => RefProfile::AeadAes128Gcm,
    }
}

fn profile() -> impl Strategy<Value = SrtpProfile> {
    prop_oneof![
        Just(SrtpProfile::Aes128CmHmacSha1_80),
        Just(SrtpProfile::AeadAes128Gcm)
    ]
}

fn rtp_packet(seq: u16, ssrc: u32, ext: bool, payload: &[u8]) -> Vec<u8> {
    let mut b = vec![0x80, 96];
    b.extend_from_slice(&seq.to_be_bytes());
    b.extend_from_slice(&(u32::from(seq) * 3000).to_be_bytes());
    b.extend_from_slice(&ssrc.to_be_bytes());
    if ext {
        b[0] |= 0x10;
        b.extend_from_slice(&[0xBE, 0xDE, 0, 1, 0x10, 0xAA, 0, 0]);
    }
    b.extend_from_slice(payload);
    b
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn interoperates_with_webrtc_rs_both_ways(
        p in profile(),
        key in prop::array::uniform16(any::<u8>()),
        salt in prop::collection::vec(any::<u8>(), 14),
        ssrc in any::<u32>(),
        start in 65_000u16..=65_535,
        ext in any::<bool>(),
        payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..200), 1..40),
    ) {
        let salt = &salt[..p.master_salt_len()];
        let mut ours_tx = SrtpContext::new(p, &key, salt).unwrap();
        let mut ours_rx = SrtpContext::new(p, &key, salt).unwrap();
        let mut theirs_rx = RefContext::new(&key, salt, ref_profile(p), None, None).unwrap();
        let mut theirs_tx = RefContext::new(&key, salt, ref_profile(p), None, None).unwrap();
        // Sequence numbers cross the 16-bit wrap, so the ROC must agree too.
        for (i, payload) in payloads.iter().enumerate() {
            let seq = start.wrapping_add(i as u16 * 50);
            let plain = rtp_packet(seq, ssrc, ext, payload);
            let srtp = protect_rtp(&mut ours_tx, &plain).unwrap();
            prop_assert_eq!(&theirs_rx.decrypt_rtp(&srtp).unwrap()[..], &plain[..]);
            let theirs = theirs_tx.encrypt_rtp(&plain).unwrap();
            prop_assert_eq!(&theirs[..], &srtp[..], "same keys, same packet, same bytes");
            prop_assert_eq!(unprotect_rtp(&mut ours_rx, &theirs).unwrap(), plain);

            let mut rtcp = vec![0x81, 201, 0, 7];
            rtcp.extend_from_slice(&ssrc.to_be_bytes());
            rtcp.extend_from_slice(&[i as u8; 24]);
            let srtcp = protect_rtcp(&mut ours_tx, &rtcp).unwrap();
            prop_assert_eq!(&theirs_rx.decrypt_rtcp(&srtcp).unwrap()[..], &rtcp[..]);
            let theirs = theirs_tx.encrypt_rtcp(&rtcp).unwrap();
            prop_assert_eq!(unprotect_rtcp(&mut ours_rx, &theirs).unwrap(), rtcp);
        }
    }

    #[test]
    fn garbage_never_panics(p in profile(), data in prop::collection::vec(any::<u8>(), 0..120)) {
        let salt = vec![3u8; p.master_salt_len()];
        let mut c = SrtpContext::new(p, &[9; 16], &salt).unwrap();
        let mut a = data.clone();
        prop_assert!(c.unprotect_rtp(&mut a).is_err());
        let mut b = data.clone();
        prop_assert!(c.unprotect_rtcp(&mut b).is_err());
        let mut d = data.clone();
        d.resize(data.len() + 20, 0);
        let _ = c.protect_rtp(&mut d, data.len());
        let _ = c.protect_rtcp(&mut d, data.len());
    }
}
