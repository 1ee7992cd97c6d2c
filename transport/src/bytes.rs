//! Serde adapters that write a byte vector as one byte string instead of a sequence of `u8`s.
//!
//! postcard encodes both the same way (a varint length, then the bytes), so neither the wire
//! nor the Raft log changes; what goes is one serializer call per byte. For a value of tens of
//! MiB that is the difference between a copy and seconds of work on a host's event loop, long
//! enough to miss heartbeats and keep-alives. Use with `#[serde(with = "...")]` on every field
//! that may hold a value.

use serde::de::{Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// For a `Vec<u8>` field: `#[serde(with = "shardkv_transport::bytes::vec")]`.
pub mod vec {
    use super::*;

    /// Writes `v` as one byte string.
    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    /// Reads a byte string (or, from formats that have none, a sequence of `u8`s).
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        d.deserialize_byte_buf(ByteBufVisitor)
    }
}

/// For an `Option<Vec<u8>>` field: `#[serde(with = "shardkv_transport::bytes::option")]`.
pub mod option {
    use super::*;

    /// Writes `v` as an option of one byte string.
    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(bytes) => s.serialize_some(&ByteStr(bytes)),
            None => s.serialize_none(),
        }
    }

    /// Reads an option of a byte string.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        Ok(Option::<ByteBuf>::deserialize(d)?.map(|b| b.0))
    }
}

/// Borrowed bytes that serialize as one byte string.
struct ByteStr<'a>(&'a [u8]);

impl Serialize for ByteStr<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

/// Owned bytes that deserialize from one byte string.
struct ByteBuf(Vec<u8>);

impl<'de> Deserialize<'de> for ByteBuf {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_byte_buf(ByteBufVisitor).map(ByteBuf)
    }
}

struct ByteBufVisitor;

impl<'de> Visitor<'de> for ByteBufVisitor {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a byte string")
    }

    fn visit_bytes<E>(self, v: &[u8]) -> Result<Vec<u8>, E> {
        Ok(v.to_vec())
    }

    fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
        Ok(v)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(b) = seq.next_element::<u8>()? {
            out.push(b);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Plain {
        a: Vec<u8>,
        b: Option<Vec<u8>>,
        c: Option<Vec<u8>>,
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Adapted {
        #[serde(with = "super::vec")]
        a: Vec<u8>,
        #[serde(with = "super::option")]
        b: Option<Vec<u8>>,
        #[serde(with = "super::option")]
        c: Option<Vec<u8>>,
    }

    #[test]
    fn adapted_fields_encode_exactly_as_plain_ones_in_postcard() {
        let a: Vec<u8> = (0..=255).cycle().take(1000).collect();
        let plain = Plain {
            a: a.clone(),
            b: Some(vec![1, 2, 3]),
            c: None,
        };
        let adapted = Adapted {
            a,
            b: Some(vec![1, 2, 3]),
            c: None,
        };
        let plain_bytes = postcard::to_allocvec(&plain).unwrap();
        let adapted_bytes = postcard::to_allocvec(&adapted).unwrap();
        assert_eq!(plain_bytes, adapted_bytes);
        let back: Adapted = postcard::from_bytes(&plain_bytes).unwrap();
        assert_eq!(back, adapted);
        let back: Plain = postcard::from_bytes(&adapted_bytes).unwrap();
        assert_eq!(back, plain);
    }
}
