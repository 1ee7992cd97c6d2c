//! The key -> slot function shared by clients and hosts.
//!
//! slot(key) = CRC16-XMODEM(key) mod 16384, hashing only the part inside the first non-empty
//! `{...}` when there is one. This is Redis Cluster's rule, kept exactly so that hash tags put
//! related keys in one shard and a Redis front end can later answer `CLUSTER SLOTS` truthfully.

use crc::{Crc, CRC_16_XMODEM};

/// Number of hash slots; shards own contiguous ranges of them.
pub const SLOT_COUNT: u16 = 16384;

/// A hash slot in `0..SLOT_COUNT`.
pub type Slot = u16;

const XMODEM: Crc<u16> = Crc::<u16>::new(&CRC_16_XMODEM);

/// The part of `key` that is hashed: the content of the first `{...}` if it is non-empty,
/// otherwise the whole key.
pub fn hash_tag(key: &[u8]) -> &[u8] {
    if let Some(open) = key.iter().position(|&b| b == b'{') {
        if let Some(len) = key[open + 1..].iter().position(|&b| b == b'}') {
            if len > 0 {
                return &key[open + 1..open + 1 + len];
            }
        }
    }
    key
}

/// The slot of a key.
pub fn slot(key: &[u8]) -> Slot {
    XMODEM.checksum(hash_tag(key)) % SLOT_COUNT
}

/// The shard (1-based) that owns `slot` when the slots are split into `shards` contiguous,
/// near-equal ranges. The first `SLOT_COUNT % shards` shards get one extra slot.
pub fn shard_of_slot(slot: Slot, shards: u32) -> u32 {
    assert!(
        shards >= 1 && shards <= u32::from(SLOT_COUNT),
        "shards out of range"
    );
    let total = u32::from(SLOT_COUNT);
    let base = total / shards;
    let extra = total % shards;
    let slot = u32::from(slot);
    // The first `extra` shards hold base + 1 slots each.
    let big = extra * (base + 1);
    if slot < big {
        slot / (base + 1) + 1
    } else {
        extra + (slot - big) / base + 1
    }
}

/// The slot range `[first, last]` (inclusive) owned by `shard` (1-based) out of `shards`.
pub fn slot_range(shard: u32, shards: u32) -> (Slot, Slot) {
    let total = u32::from(SLOT_COUNT);
    let base = total / shards;
    let extra = total % shards;
    let i = shard - 1;
    let first = i * base + i.min(extra);
    let len = base + u32::from(i < extra);
    // Both fit in u16: they are below SLOT_COUNT.
    (first as Slot, (first + len - 1) as Slot)
}

/// The shard (1-based) that owns `key`.
pub fn shard_of_key(key: &[u8], shards: u32) -> u32 {
    shard_of_slot(slot(key), shards)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_cluster_vectors() {
        // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"bar"), 5061);
        assert_eq!(slot(b"123456789"), 0x31C3 % SLOT_COUNT);
        assert_eq!(slot(b"{user1000}.following"), slot(b"{user1000}.followers"));
        assert_eq!(slot(b"{user1000}.following"), slot(b"user1000"));
    }

    #[test]
    fn hash_tag_rules() {
        assert_eq!(hash_tag(b"foo{}{bar}"), b"foo{}{bar}");
        assert_eq!(hash_tag(b"foo{{bar}}zap"), b"{bar");
        assert_eq!(hash_tag(b"foo{bar}{zap}"), b"bar");
        assert_eq!(hash_tag(b"{"), b"{");
        assert_eq!(hash_tag(b"no-tag"), b"no-tag");
    }

    #[test]
    fn shards_cover_all_slots_contiguously() {
        for shards in [1u32, 2, 3, 5, 7, 16384] {
            let mut expected_first = 0u32;
            for s in 1..=shards {
                let (first, last) = slot_range(s, shards);
                assert_eq!(u32::from(first), expected_first);
                assert_eq!(shard_of_slot(first, shards), s);
                assert_eq!(shard_of_slot(last, shards), s);
                expected_first = u32::from(last) + 1;
            }
            assert_eq!(expected_first, u32::from(SLOT_COUNT));
        }
    }
}
