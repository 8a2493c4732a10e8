//! The versioned wire codec: a format version byte, then postcard.
//!
//! Every value calm puts on the wire or on disk outside the coordinated
//! keyspace goes through [`encode`] and [`decode`], so a node can refuse bytes
//! written by an incompatible version instead of misreading them.

use serde::{Serialize, de::DeserializeOwned};

/// The current format version, written as the first byte of every encoding.
pub const FORMAT_VERSION: u8 = 1;

/// Why bytes could not be decoded. Decoding never changes any state, so every
/// variant leaves the caller exactly as it was.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input was empty: not even a version byte.
    #[error("empty input: expected a format version byte")]
    Empty,
    /// The version byte names a format this build does not read.
    #[error("unsupported format version {found} (this build reads version {supported})")]
    UnsupportedVersion {
        /// The version byte found in the input.
        found: u8,
        /// The version this build reads.
        supported: u8,
    },
    /// The body is not a valid postcard encoding of the expected type.
    #[error("malformed body: {0}")]
    Malformed(String),
    /// The body decoded, but bytes were left over after it.
    #[error("{0} trailing bytes after the encoded value")]
    TrailingBytes(usize),
    /// The body decoded, but the value breaks an invariant of its type.
    #[error("invalid value: {0}")]
    Invalid(String),
}

/// Encodes `value` as the format version byte followed by its postcard body.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let mut out = vec![FORMAT_VERSION];
    // Serialising into a growable Vec fails only for types whose Serialize
    // impl reports an error; calm's wire types are plain data and never do.
    let body = postcard::to_allocvec(value).expect("calm wire types always serialise");
    out.extend_from_slice(&body);
    out
}

/// Decodes bytes written by [`encode`]. Never panics, whatever the input.
///
/// Types whose invariants serde cannot express should validate after
/// decoding and report [`DecodeError::Invalid`].
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    let (&version, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
    if version != FORMAT_VERSION {
        return Err(DecodeError::UnsupportedVersion {
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    let (value, rest) =
        postcard::take_from_bytes(body).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes(rest.len()));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_what_it_cannot_read() {
        let value = (42u64, String::from("calm"), vec![1u8, 2, 3]);
        let bytes = encode(&value);
        assert_eq!(decode::<(u64, String, Vec<u8>)>(&bytes), Ok(value));

        assert_eq!(decode::<u64>(&[]), Err(DecodeError::Empty));
        assert_eq!(
            decode::<u64>(&[9, 1]),
            Err(DecodeError::UnsupportedVersion {
                found: 9,
                supported: FORMAT_VERSION
            })
        );
        assert!(matches!(
            decode::<u64>(&[FORMAT_VERSION]),
            Err(DecodeError::Malformed(_))
        ));
        assert_eq!(
            decode::<u8>(&[FORMAT_VERSION, 1, 2]),
            Err(DecodeError::TrailingBytes(1))
        );
    }

    #[test]
    fn a_huge_length_prefix_is_an_error_not_an_allocation() {
        // A Vec whose varint length claims u64::MAX elements but has no body.
        let mut bytes = vec![FORMAT_VERSION];
        bytes.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
        assert!(decode::<Vec<u64>>(&bytes).is_err());
    }
}
