//! Attribute type codes of every STUN attribute tern may see: RFC 8489
//! (STUN), RFC 8656 (TURN), RFC 6062 (TURN over TCP), RFC 8445 (ICE),
//! RFC 7635 (third-party authorization), RFC 8016 (mobility) and RFC 5780
//! (NAT behaviour discovery), with their IANA names for logs. Owns codes and
//! names only; value formats live in `crate::attributes`.

macro_rules! codes {
    ($($(#[$doc:meta])* $name:ident = $code:literal, $text:literal;)*) => {
        $($(#[$doc])* pub const $name: u16 = $code;)*

        /// The IANA name of an attribute type, for logs; `None` if unknown here.
        pub fn name(t: u16) -> Option<&'static str> {
            match t {
                $($code => Some($text),)*
                _ => None,
            }
        }

        #[cfg(test)]
        pub(crate) const ALL: &[u16] = &[$($code),*];
    };
}

codes! {
    /// MAPPED-ADDRESS (RFC 8489 §14.1).
    MAPPED_ADDRESS = 0x0001, "MAPPED-ADDRESS";
    /// CHANGE-REQUEST (RFC 5780 §7.2).
    CHANGE_REQUEST = 0x0003, "CHANGE-REQUEST";
    /// USERNAME (RFC 8489 §14.3).
    USERNAME = 0x0006, "USERNAME";
    /// MESSAGE-INTEGRITY (RFC 8489 §14.5).
    MESSAGE_INTEGRITY = 0x0008, "MESSAGE-INTEGRITY";
    /// ERROR-CODE (RFC 8489 §14.8).
    ERROR_CODE = 0x0009, "ERROR-CODE";
    /// UNKNOWN-ATTRIBUTES (RFC 8489 §14.13).
    UNKNOWN_ATTRIBUTES = 0x000A, "UNKNOWN-ATTRIBUTES";
    /// CHANNEL-NUMBER (RFC 8656 §18.1).
    CHANNEL_NUMBER = 0x000C, "CHANNEL-NUMBER";
    /// LIFETIME (RFC 8656 §18.2).
    LIFETIME = 0x000D, "LIFETIME";
    /// XOR-PEER-ADDRESS (RFC 8656 §18.3).
    XOR_PEER_ADDRESS = 0x0012, "XOR-PEER-ADDRESS";
    /// DATA (RFC 8656 §18.4).
    DATA = 0x0013, "DATA";
    /// REALM (RFC 8489 §14.9).
    REALM = 0x0014, "REALM";
    /// NONCE (RFC 8489 §14.10).
    NONCE = 0x0015, "NONCE";
    /// XOR-RELAYED-ADDRESS (RFC 8656 §18.5).
    XOR_RELAYED_ADDRESS = 0x0016, "XOR-RELAYED-ADDRESS";
    /// REQUESTED-ADDRESS-FAMILY (RFC 8656 §18.6).
    REQUESTED_ADDRESS_FAMILY = 0x0017, "REQUESTED-ADDRESS-FAMILY";
    /// EVEN-PORT (RFC 8656 §18.7).
    EVEN_PORT = 0x0018, "EVEN-PORT";
    /// REQUESTED-TRANSPORT (RFC 8656 §18.8).
    REQUESTED_TRANSPORT = 0x0019, "REQUESTED-TRANSPORT";
    /// DONT-FRAGMENT (RFC 8656 §18.9).
    DONT_FRAGMENT = 0x001A, "DONT-FRAGMENT";
    /// ACCESS-TOKEN (RFC 7635 §6.2).
    ACCESS_TOKEN = 0x001B, "ACCESS-TOKEN";
    /// MESSAGE-INTEGRITY-SHA256 (RFC 8489 §14.6).
    MESSAGE_INTEGRITY_SHA256 = 0x001C, "MESSAGE-INTEGRITY-SHA256";
    /// PASSWORD-ALGORITHM (RFC 8489 §14.12).
    PASSWORD_ALGORITHM = 0x001D, "PASSWORD-ALGORITHM";
    /// USERHASH (RFC 8489 §14.4).
    USERHASH = 0x001E, "USERHASH";
    /// XOR-MAPPED-ADDRESS (RFC 8489 §14.2).
    XOR_MAPPED_ADDRESS = 0x0020, "XOR-MAPPED-ADDRESS";
    /// RESERVATION-TOKEN (RFC 8656 §18.10).
    RESERVATION_TOKEN = 0x0022, "RESERVATION-TOKEN";
    /// PRIORITY (RFC 8445 §16.1).
    PRIORITY = 0x0024, "PRIORITY";
    /// USE-CANDIDATE (RFC 8445 §16.1).
    USE_CANDIDATE = 0x0025, "USE-CANDIDATE";
    /// PADDING (RFC 5780 §7.6).
    PADDING = 0x0026, "PADDING";
    /// RESPONSE-PORT (RFC 5780 §7.5).
    RESPONSE_PORT = 0x0027, "RESPONSE-PORT";
    /// CONNECTION-ID (RFC 6062).
    CONNECTION_ID = 0x002A, "CONNECTION-ID";
    /// ADDITIONAL-ADDRESS-FAMILY (RFC 8656 §18.11).
    ADDITIONAL_ADDRESS_FAMILY = 0x8000, "ADDITIONAL-ADDRESS-FAMILY";
    /// ADDRESS-ERROR-CODE (RFC 8656 §18.12).
    ADDRESS_ERROR_CODE = 0x8001, "ADDRESS-ERROR-CODE";
    /// PASSWORD-ALGORITHMS (RFC 8489 §14.11).
    PASSWORD_ALGORITHMS = 0x8002, "PASSWORD-ALGORITHMS";
    /// ALTERNATE-DOMAIN (RFC 8489 §14.16).
    ALTERNATE_DOMAIN = 0x8003, "ALTERNATE-DOMAIN";
    /// ICMP (RFC 8656 §18.13).
    ICMP = 0x8004, "ICMP";
    /// SOFTWARE (RFC 8489 §14.14).
    SOFTWARE = 0x8022, "SOFTWARE";
    /// ALTERNATE-SERVER (RFC 8489 §14.15).
    ALTERNATE_SERVER = 0x8023, "ALTERNATE-SERVER";
    /// FINGERPRINT (RFC 8489 §14.7).
    FINGERPRINT = 0x8028, "FINGERPRINT";
    /// ICE-CONTROLLED (RFC 8445 §16.1).
    ICE_CONTROLLED = 0x8029, "ICE-CONTROLLED";
    /// ICE-CONTROLLING (RFC 8445 §16.1).
    ICE_CONTROLLING = 0x802A, "ICE-CONTROLLING";
    /// RESPONSE-ORIGIN (RFC 5780 §7.3).
    RESPONSE_ORIGIN = 0x802B, "RESPONSE-ORIGIN";
    /// OTHER-ADDRESS (RFC 5780 §7.4).
    OTHER_ADDRESS = 0x802C, "OTHER-ADDRESS";
    /// THIRD-PARTY-AUTHORIZATION (RFC 7635 §6.1).
    THIRD_PARTY_AUTHORIZATION = 0x802E, "THIRD-PARTY-AUTHORIZATION";
    /// MOBILITY-TICKET (RFC 8016).
    MOBILITY_TICKET = 0x8030, "MOBILITY-TICKET";
}

/// Whether an agent that does not understand attribute type `t` must reject
/// the message (RFC 8489 §14: 0x0000..=0x7FFF are comprehension-required).
pub fn is_comprehension_required(t: u16) -> bool {
    t < 0x8000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_a_unique_name() {
        for (i, &a) in ALL.iter().enumerate() {
            let n = name(a);
            assert!(n.is_some(), "{a:#06x}");
            for &b in ALL.iter().skip(i + 1) {
                assert_ne!(a, b);
                assert_ne!(n, name(b));
            }
        }
        assert_eq!(name(0x7777), None);
        assert_eq!(name(XOR_MAPPED_ADDRESS), Some("XOR-MAPPED-ADDRESS"));
    }

    #[test]
    fn comprehension_ranges() {
        assert!(is_comprehension_required(USERNAME));
        assert!(is_comprehension_required(0x7FFF));
        assert!(!is_comprehension_required(ADDITIONAL_ADDRESS_FAMILY));
        assert!(!is_comprehension_required(FINGERPRINT));
    }

    #[test]
    fn codes_from_the_rfcs() {
        assert_eq!(MESSAGE_INTEGRITY_SHA256, 0x001C);
        assert_eq!(PASSWORD_ALGORITHMS, 0x8002);
        assert_eq!(ADDRESS_ERROR_CODE, 0x8001);
        assert_eq!(ICMP, 0x8004);
        assert_eq!(ACCESS_TOKEN, 0x001B);
        assert_eq!(THIRD_PARTY_AUTHORIZATION, 0x802E);
        assert_eq!(MOBILITY_TICKET, 0x8030);
        assert_eq!(CONNECTION_ID, 0x002A);
        assert_eq!(ICE_CONTROLLING, 0x802A);
    }
}
