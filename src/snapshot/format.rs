//! The state file's framing: a magic, a format version, the payload's length and its CRC-32,
//! then the payload (the [`super::state::VmState`], encoded with postcard: serde's compact
//! binary format, fields in order, integers as varints).
//!
//! ```text
//! offset  size  field
//!      0     8  magic "VMMSNAP\0"
//!      8     4  format version, little-endian (FORMAT_VERSION)
//!     12     8  payload length in bytes, little-endian
//!     20     4  CRC-32 (IEEE) of the payload, little-endian
//!     24     n  payload
//! ```
//!
//! Everything is checked before the payload is decoded, so a file from another format version,
//! a truncated file and a flipped bit are each reported as such, never decoded into a state.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The first eight bytes of every state file.
pub const MAGIC: [u8; 8] = *b"VMMSNAP\0";
/// Bumped whenever the state's layout changes: a snapshot is read only by the format version
/// that wrote it.
pub const FORMAT_VERSION: u32 = 3;
/// Bytes before the payload.
pub const HEADER_LEN: usize = 24;
/// The largest payload read (the state is a few tens of KiB per vCPU; this bounds what a
/// corrupt length can make the reader allocate).
pub const MAX_PAYLOAD_LEN: u64 = 64 << 20;

/// Why a state file could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    #[error("it is not a vmm snapshot state file (no VMMSNAP magic)")]
    Magic,
    #[error(
        "it was written in snapshot format version {found}; this vmm reads version \
         {FORMAT_VERSION} only (restore it with the vmm that wrote it)"
    )]
    Version { found: u32 },
    #[error("it is truncated: {len} bytes, {expected} expected")]
    Truncated { len: u64, expected: u64 },
    #[error("it is longer than its header says: {len} bytes, {expected} expected")]
    TrailingBytes { len: u64, expected: u64 },
    #[error("its payload length {0} is implausible (more than {MAX_PAYLOAD_LEN} bytes)")]
    TooLong(u64),
    #[error("its checksum does not match (CRC-32 {stored:#010x} stored, {computed:#010x} computed): the file is corrupt")]
    Checksum { stored: u32, computed: u32 },
    #[error("its contents cannot be decoded: {0}")]
    Decode(String),
    #[error("the state cannot be encoded: {0}")]
    Encode(String),
}

/// Frames `state` as a state file.
pub fn encode<T: Serialize>(state: &T) -> Result<Vec<u8>, FormatError> {
    let payload = postcard::to_stdvec(state).map_err(|e| FormatError::Encode(e.to_string()))?;
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Checks the framing of `bytes` and decodes the payload.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, FormatError> {
    let len = bytes.len() as u64;
    let field = |range: std::ops::Range<usize>| bytes.get(range);
    if field(0..8).is_none_or(|m| m != MAGIC) {
        return Err(if len < MAGIC.len() as u64 && MAGIC.starts_with(bytes) {
            FormatError::Truncated {
                len,
                expected: HEADER_LEN as u64,
            }
        } else {
            FormatError::Magic
        });
    }
    let (Some(version), Some(payload_len), Some(crc)) =
        (field(8..12), field(12..20), field(20..24))
    else {
        return Err(FormatError::Truncated {
            len,
            expected: HEADER_LEN as u64,
        });
    };
    let version = u32::from_le_bytes(version.try_into().expect("4 bytes"));
    if version != FORMAT_VERSION {
        return Err(FormatError::Version { found: version });
    }
    let payload_len = u64::from_le_bytes(payload_len.try_into().expect("8 bytes"));
    if payload_len > MAX_PAYLOAD_LEN {
        return Err(FormatError::TooLong(payload_len));
    }
    let expected = HEADER_LEN as u64 + payload_len;
    if len < expected {
        return Err(FormatError::Truncated { len, expected });
    }
    if len > expected {
        return Err(FormatError::TrailingBytes { len, expected });
    }
    let payload = &bytes[HEADER_LEN..];
    let stored = u32::from_le_bytes(crc.try_into().expect("4 bytes"));
    let computed = crc32fast::hash(payload);
    if stored != computed {
        return Err(FormatError::Checksum { stored, computed });
    }
    postcard::from_bytes(payload).map_err(|e| FormatError::Decode(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Sample {
        name: String,
        values: Vec<u64>,
    }

    fn sample() -> Sample {
        Sample {
            name: "vm".into(),
            values: (0..100).map(|i| i * 0x1234_5678).collect(),
        }
    }

    #[test]
    fn round_trip() {
        let bytes = encode(&sample()).unwrap();
        assert_eq!(&bytes[..8], b"VMMSNAP\0");
        assert_eq!(decode::<Sample>(&bytes).unwrap(), sample());
    }

    #[test]
    fn every_truncation_is_reported_as_such() {
        let bytes = encode(&sample()).unwrap();
        for cut in 0..bytes.len() {
            let err = decode::<Sample>(&bytes[..cut]).unwrap_err();
            assert!(
                matches!(err, FormatError::Truncated { len, .. } if len == cut as u64),
                "cut at {cut}: {err}"
            );
        }
    }

    #[test]
    fn every_flipped_bit_is_caught() {
        let bytes = encode(&sample()).unwrap();
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut bad = bytes.clone();
                bad[i] ^= 1 << bit;
                let err = decode::<Sample>(&bad).unwrap_err();
                let expected = match i {
                    0..8 => matches!(err, FormatError::Magic),
                    8..12 => matches!(err, FormatError::Version { .. }),
                    12..20 => matches!(
                        err,
                        FormatError::Truncated { .. }
                            | FormatError::TrailingBytes { .. }
                            | FormatError::TooLong(_)
                    ),
                    _ => matches!(err, FormatError::Checksum { .. }),
                };
                assert!(expected, "byte {i} bit {bit}: {err}");
            }
        }
    }

    #[test]
    fn other_versions_and_files_are_named() {
        let mut bytes = encode(&sample()).unwrap();
        bytes[8..12].copy_from_slice(&7u32.to_le_bytes());
        let err = decode::<Sample>(&bytes).unwrap_err();
        assert_eq!(err, FormatError::Version { found: 7 });
        assert!(err.to_string().contains("version 7"), "{err}");
        assert_eq!(
            decode::<Sample>(b"#!/bin/sh\necho hello\n").unwrap_err(),
            FormatError::Magic
        );
        let mut long = encode(&sample()).unwrap();
        long.push(0);
        assert!(matches!(
            decode::<Sample>(&long).unwrap_err(),
            FormatError::TrailingBytes { .. }
        ));
    }

    #[test]
    fn a_valid_frame_around_a_wrong_payload_is_a_decode_error() {
        let payload = [0xffu8; 3];
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&MAGIC);
        bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        bytes.extend_from_slice(&payload);
        assert!(matches!(
            decode::<Sample>(&bytes).unwrap_err(),
            FormatError::Decode(_)
        ));
    }
}
