//! MAC addresses for a virtio-net device: parsed from the command line, shown in the log, or
//! made from the TAP's name.

use std::fmt::Write as _;

/// Why a MAC address was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MacError {
    /// Not six hex bytes separated by colons.
    #[error(
        "invalid MAC address {0:?}: write six two-digit hex bytes separated by ':', \
         e.g. 52:54:00:12:34:56"
    )]
    Format(String),
    /// The multicast bit (bit 0 of the first byte) is set.
    #[error(
        "MAC address {0} is a multicast address (the lowest bit of its first byte is set); \
         a network card needs a unicast one, e.g. 52:54:00:12:34:56"
    )]
    Multicast(String),
    /// All zero.
    #[error("MAC address 00:00:00:00:00:00 is not a valid address; choose another one")]
    Zero,
}

/// `aa:bb:cc:dd:ee:ff`, lower case.
pub fn format_mac(mac: &[u8; 6]) -> String {
    let mut s = String::with_capacity(17);
    for (i, byte) in mac.iter().enumerate() {
        if i > 0 {
            s.push(':');
        }
        let _ = write!(s, "{byte:02x}");
    }
    s
}

/// Parses `aa:bb:cc:dd:ee:ff` (hex, either case); refuses multicast and all-zero addresses,
/// which no network card may have.
pub fn parse_mac(s: &str) -> Result<[u8; 6], MacError> {
    let format = || MacError::Format(s.to_owned());
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for byte in &mut mac {
        let part = parts.next().ok_or_else(format)?;
        if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format());
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| format())?;
    }
    if parts.next().is_some() {
        return Err(format());
    }
    if mac[0] & 1 != 0 {
        return Err(MacError::Multicast(format_mac(&mac)));
    }
    if mac == [0; 6] {
        return Err(MacError::Zero);
    }
    Ok(mac)
}

/// A MAC address made from `seed` (e.g. the TAP's name): `02:` (locally administered,
/// unicast) and five bytes of the seed's 64-bit FNV-1a hash, so the same seed gives the same
/// address on every host and every build.
pub fn generated_mac(seed: &str) -> [u8; 6] {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let hash = seed.bytes().fold(FNV_OFFSET, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(FNV_PRIME)
    });
    let [h0, h1, h2, h3, h4, ..] = hash.to_be_bytes();
    [0x02, h0, h1, h2, h3, h4]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_mac_takes_unicast_addresses_only() {
        assert_eq!(
            parse_mac("52:54:00:12:34:56"),
            Ok([0x52, 0x54, 0, 0x12, 0x34, 0x56])
        );
        assert_eq!(
            parse_mac("02:AB:cd:EF:00:ff"),
            Ok([2, 0xab, 0xcd, 0xef, 0, 0xff])
        );
        for bad in [
            "",
            "52:54:00:12:34",
            "52:54:00:12:34:56:78",
            "52:54:00:12:34:5",
            "52:54:00:12:34:567",
            "52-54-00-12-34-56",
            "52:54:00:12:34:5g",
            "52:54:00:12:34:+5",
            "52:54:00:12:34:56:",
            " 52:54:00:12:34:56",
            "525400123456",
        ] {
            assert_eq!(parse_mac(bad), Err(MacError::Format(bad.into())), "{bad:?}");
        }
        assert_eq!(
            parse_mac("01:00:5e:00:00:01"),
            Err(MacError::Multicast("01:00:5e:00:00:01".into()))
        );
        assert!(matches!(
            parse_mac("ff:ff:ff:ff:ff:ff"),
            Err(MacError::Multicast(_))
        ));
        assert_eq!(parse_mac("00:00:00:00:00:00"), Err(MacError::Zero));
        let msg = MacError::Format("x".into()).to_string();
        assert!(msg.contains("52:54:00:12:34:56"), "{msg}");
        assert_eq!(
            format_mac(&[0x52, 0x54, 0, 0xa, 0xbc, 0xff]),
            "52:54:00:0a:bc:ff"
        );
    }

    #[test]
    fn generated_macs_are_stable_local_unicast_addresses() {
        let a = generated_mac("tap0");
        assert_eq!(a, generated_mac("tap0"));
        // The same on every host and build: a change here changes every guest's address.
        assert_eq!(format_mac(&a), "02:d9:63:fc:ef:07");
        let mut seen = std::collections::HashSet::new();
        for seed in ["tap0", "tap1", "tap2", "", "vmm-net-0", "vmm-net-1"] {
            let mac = generated_mac(seed);
            assert_eq!(mac[0] & 0b11, 0b10, "{seed:?}: local, unicast");
            assert_eq!(parse_mac(&format_mac(&mac)), Ok(mac));
            assert!(seen.insert(mac), "{seed:?} collides");
        }
    }
}
