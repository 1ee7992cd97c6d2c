//! The size limits of a request, checked before it costs anything: by the client to save a
//! round trip, and once by the host's router before anything reaches a shard. An update is
//! bounded as a whole like a CAS (a key and two values), so whatever a CAS fits (a request
//! frame, a Raft message, a log entry) an update fits too.

use super::{Change, KeyUpdate, LimitKind, Op, Response, KEY_BYTES_MAX};

/// Most keys one [`Op::Update`] may change (an MSET or a DEL of that many keys).
pub const UPDATE_KEYS_MAX: usize = 1024;
/// Most keys one [`Op::GetMany`] may read (an MGET of that many keys).
pub const GET_MANY_KEYS_MAX: usize = 1024;
/// Bytes the encoding of a multi-key request spends per key beyond its key and value
/// (lengths, enum tags, flags), counted against the request limit.
const UPDATE_BYTES_PER_KEY: usize = 16;

/// Checks key and value sizes against `value_bytes_max`, and that an update's keys share one
/// slot. The client runs it to save a round trip; the host runs it once, in its router,
/// before anything reaches a shard.
pub fn check_limits(op: &Op, value_bytes_max: usize) -> Result<(), Response> {
    if let Op::Update(updates) = op {
        return check_update(updates, value_bytes_max);
    }
    if let Op::GetMany { keys, .. } = op {
        return check_get_many(keys, value_bytes_max);
    }
    check_key(op.key())?;
    let values: [Option<&Vec<u8>>; 2] = match op {
        Op::Put { value, .. } => [Some(value), None],
        Op::Cas { expected, new, .. } => [expected.as_ref(), new.as_ref()],
        _ => [None, None],
    };
    for value in values.into_iter().flatten() {
        check_value(value, value_bytes_max)?;
    }
    Ok(())
}

/// The keys of an update: 1..=[`UPDATE_KEYS_MAX`] of them, one slot, each within the
/// limits, and all together within a CAS's bound. At most one asks for its previous value,
/// so the reply, like a get's, carries at most one value.
fn check_update(updates: &[KeyUpdate], value_bytes_max: usize) -> Result<(), Response> {
    if updates.iter().filter(|u| u.return_previous).count() > 1 {
        return Err(Response::Invalid(
            "at most one key of an update may ask for its previous value".into(),
        ));
    }
    let mut keys = Vec::with_capacity(updates.len());
    for u in updates {
        let value = match &u.change {
            Change::Set(v) | Change::Append(v) => {
                check_value(v, value_bytes_max)?;
                v.len()
            }
            Change::Delete | Change::IncrBy(_) => 0,
        };
        keys.push((&u.key[..], value));
    }
    check_keys_of_one_slot("an update", &keys, UPDATE_KEYS_MAX, value_bytes_max)
}

/// The keys of a multi-key read: as an update's, with no values.
fn check_get_many(keys: &[Vec<u8>], value_bytes_max: usize) -> Result<(), Response> {
    let keys: Vec<(&[u8], usize)> = keys.iter().map(|k| (&k[..], 0)).collect();
    check_keys_of_one_slot(
        "a multi-key read",
        &keys,
        GET_MANY_KEYS_MAX,
        value_bytes_max,
    )
}

/// Checks the `(key, value length)` pairs of a multi-key request (`what`, for messages):
/// 1..=`most` keys, each valid, all of one slot, and keys, values and their encoding
/// together within a CAS's bound (a key and two values), so the request fits every frame
/// and log entry a CAS fits.
fn check_keys_of_one_slot(
    what: &str,
    keys: &[(&[u8], usize)],
    most: usize,
    value_bytes_max: usize,
) -> Result<(), Response> {
    let Some(&(first, _)) = keys.first() else {
        return Err(Response::Invalid(format!("{what} needs at least one key")));
    };
    if keys.len() > most {
        return Err(Response::Invalid(format!(
            "{what} has at most {most} keys, not {}",
            keys.len()
        )));
    }
    let slot = crate::slot::slot(first);
    let mut total = 0usize;
    for &(key, value) in keys {
        check_key(key)?;
        if crate::slot::slot(key) != slot {
            return Err(Response::Invalid(format!(
                "{what}'s keys must all hash to one slot"
            )));
        }
        total += key.len() + value + UPDATE_BYTES_PER_KEY;
    }
    let limit = 2 * value_bytes_max + KEY_BYTES_MAX;
    if total > limit {
        return Err(Response::TooLarge {
            what: LimitKind::Request,
            len: total,
            limit,
        });
    }
    Ok(())
}

fn check_key(key: &[u8]) -> Result<(), Response> {
    if key.is_empty() {
        return Err(Response::Invalid(
            "empty key: keys are 1..=480 bytes".into(),
        ));
    }
    if key.len() > KEY_BYTES_MAX {
        return Err(Response::TooLarge {
            what: LimitKind::Key,
            len: key.len(),
            limit: KEY_BYTES_MAX,
        });
    }
    Ok(())
}

fn check_value(value: &[u8], value_bytes_max: usize) -> Result<(), Response> {
    if value.len() > value_bytes_max {
        return Err(Response::TooLarge {
            what: LimitKind::Value,
            len: value.len(),
            limit: value_bytes_max,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{
        request_frame_bytes_max, Condition, ReadConsistency, Request, RequestFrame,
        VALUE_BYTES_MAX_CEILING,
    };

    #[test]
    fn limits() {
        let ok = Op::Put {
            key: b"k".to_vec(),
            value: vec![0; 10],
        };
        assert!(check_limits(&ok, 10).is_ok());
        let big = Op::Put {
            key: b"k".to_vec(),
            value: vec![0; 11],
        };
        assert!(matches!(
            check_limits(&big, 10),
            Err(Response::TooLarge {
                what: LimitKind::Value,
                len: 11,
                limit: 10
            })
        ));
        let long_key = Op::Delete {
            key: vec![b'a'; KEY_BYTES_MAX + 1],
        };
        assert!(matches!(
            check_limits(&long_key, 10),
            Err(Response::TooLarge {
                what: LimitKind::Key,
                ..
            })
        ));
        let empty = Op::Get {
            key: vec![],
            consistency: ReadConsistency::Linearizable,
        };
        assert!(matches!(
            check_limits(&empty, 10),
            Err(Response::Invalid(_))
        ));
    }

    fn set(key: &[u8], value: Vec<u8>) -> KeyUpdate {
        KeyUpdate {
            key: key.to_vec(),
            change: Change::Set(value),
            condition: Condition::Always,
            return_previous: false,
        }
    }

    #[test]
    fn an_update_needs_one_to_the_maximum_of_keys_of_one_slot() {
        assert!(matches!(
            check_limits(&Op::Update(vec![]), 10),
            Err(Response::Invalid(_))
        ));
        let same_slot: Vec<_> = (0..3)
            .map(|i| set(format!("{{tag}}{i}").as_bytes(), vec![1]))
            .collect();
        assert!(check_limits(&Op::Update(same_slot), 10).is_ok());
        let two_slots = vec![set(b"a", vec![1]), set(b"b", vec![1])];
        assert!(matches!(
            check_limits(&Op::Update(two_slots), 10),
            Err(Response::Invalid(why)) if why.contains("one slot")
        ));
        let too_many: Vec<_> = (0..=UPDATE_KEYS_MAX)
            .map(|i| set(format!("{{t}}{i}").as_bytes(), vec![]))
            .collect();
        assert!(matches!(
            check_limits(&Op::Update(too_many), 1 << 20),
            Err(Response::Invalid(why)) if why.contains("at most 1024 keys")
        ));
        let mut two_previous = vec![set(b"{t}1", vec![]), set(b"{t}2", vec![])];
        for u in &mut two_previous {
            u.return_previous = true;
        }
        assert!(matches!(
            check_limits(&Op::Update(two_previous), 10),
            Err(Response::Invalid(why)) if why.contains("previous value")
        ));
    }

    #[test]
    fn an_update_is_refused_for_one_large_value_and_for_its_total() {
        let big = vec![set(b"k", vec![0; 11])];
        assert!(matches!(
            check_limits(&Op::Update(big), 10),
            Err(Response::TooLarge {
                what: LimitKind::Value,
                ..
            })
        ));
        // Each value fits; together they pass what a CAS may carry.
        let many: Vec<_> = (0..200)
            .map(|i| set(format!("{{t}}{i}").as_bytes(), vec![0; 10]))
            .collect();
        assert!(matches!(
            check_limits(&Op::Update(many), 10),
            Err(Response::TooLarge {
                what: LimitKind::Request,
                ..
            })
        ));
    }

    #[test]
    fn the_largest_update_fits_its_request_frame() {
        // The most keys, each at the key limit, with values that fill the bound exactly.
        let bound = 2 * VALUE_BYTES_MAX_CEILING + KEY_BYTES_MAX;
        let value = bound / UPDATE_KEYS_MAX - KEY_BYTES_MAX - UPDATE_BYTES_PER_KEY;
        let updates: Vec<_> = (0..UPDATE_KEYS_MAX)
            .map(|i| {
                let mut key = format!("{{t}}{i}").into_bytes();
                key.resize(KEY_BYTES_MAX, b'k');
                set(&key, vec![7; value])
            })
            .collect();
        let op = Op::Update(updates);
        assert!(check_limits(&op, VALUE_BYTES_MAX_CEILING).is_ok());
        let req = RequestFrame::Data(Request {
            client_id: u64::MAX,
            seq: u64::MAX,
            op,
        });
        let frame = crate::frame::encode(&req).expect("the largest update encodes");
        assert!(frame.len() - 4 <= request_frame_bytes_max(VALUE_BYTES_MAX_CEILING));
    }

    #[test]
    fn a_multi_key_read_needs_one_to_the_maximum_of_keys_of_one_slot() {
        let read = |keys: Vec<Vec<u8>>| Op::GetMany {
            keys,
            consistency: ReadConsistency::Linearizable,
        };
        assert!(check_limits(&read(vec![b"{t}a".to_vec(), b"{t}b".to_vec()]), 10).is_ok());
        assert!(matches!(
            check_limits(&read(vec![]), 10),
            Err(Response::Invalid(_))
        ));
        assert!(matches!(
            check_limits(&read(vec![b"a".to_vec(), b"b".to_vec()]), 10),
            Err(Response::Invalid(why)) if why.contains("one slot")
        ));
        let too_many = (0..=GET_MANY_KEYS_MAX).map(|i| format!("{{t}}{i}").into_bytes());
        assert!(matches!(
            check_limits(&read(too_many.collect()), 1 << 20),
            Err(Response::Invalid(why)) if why.contains("at most 1024 keys")
        ));
        // Within the key count, but more key bytes than a request of this value limit holds.
        let long_keys = (0..100).map(|i| format!("{{t}}{i}-{}", "k".repeat(400)).into_bytes());
        assert!(matches!(
            check_limits(&read(long_keys.collect()), 4096),
            Err(Response::TooLarge {
                what: LimitKind::Request,
                ..
            })
        ));
    }
}
