//! Byte strings in serde as byte strings: `#[serde(with = "crate::bytes")]`
//! on a `Vec<u8>` field (or `serialize_with = "crate::bytes::serialize"` on a
//! `&[u8]` one).
//!
//! serde hands a plain `Vec<u8>` or `&[u8]` to the format one element at a
//! time, which for Raft entries and values of a kilobyte was a visible share
//! of a loaded node's time, on the way out and again on the way in. As a
//! byte string, postcard writes the same bytes (a varint length, then each
//! byte as is) in one copy, so stored logs and records and peers' messages
//! read the same either way.

use serde::de::{Error, SeqAccess, Visitor};
use serde::{Deserializer, Serializer};

/// Serialises `bytes` as one byte string.
pub(crate) fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_bytes(bytes)
}

/// Deserialises a byte string (or, from a format that wrote a sequence, the
/// sequence's bytes).
pub(crate) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
    deserializer.deserialize_byte_buf(BytesVisitor)
}

struct BytesVisitor;

impl<'de> Visitor<'de> for BytesVisitor {
    type Value = Vec<u8>;

    fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("a byte string")
    }

    fn visit_bytes<E: Error>(self, bytes: &[u8]) -> Result<Vec<u8>, E> {
        Ok(bytes.to_vec())
    }

    fn visit_byte_buf<E: Error>(self, bytes: Vec<u8>) -> Result<Vec<u8>, E> {
        Ok(bytes)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
        // The hint comes from the input: bounded so a lying one cannot
        // reserve more than the bytes that follow could fill.
        let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(byte) = seq.next_element()? {
            bytes.push(byte);
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct AsSequence {
        data: Vec<u8>,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct AsBytes {
        #[serde(with = "crate::bytes")]
        data: Vec<u8>,
    }

    #[test]
    fn byte_strings_encode_exactly_as_sequences_did_and_read_back_both_ways() {
        for data in [Vec::new(), vec![0, 1, 255], vec![7; 1000]] {
            let old = calm_types::codec::encode(&AsSequence { data: data.clone() });
            let new = calm_types::codec::encode(&AsBytes { data: data.clone() });
            assert_eq!(old, new, "the stored and wire format is unchanged");
            let read: AsBytes = calm_types::codec::decode(&old).expect("decodes");
            assert_eq!(read.data, data);
            let back: AsSequence = calm_types::codec::decode(&new).expect("decodes");
            assert_eq!(back.data, data);
        }
    }

    #[test]
    fn a_truncated_byte_string_is_an_error_not_a_panic() {
        let mut encoded = calm_types::codec::encode(&AsBytes { data: vec![1; 300] });
        encoded.truncate(encoded.len() - 1);
        assert!(calm_types::codec::decode::<AsBytes>(&encoded).is_err());
    }
}
