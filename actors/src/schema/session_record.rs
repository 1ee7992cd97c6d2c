//! The value of a `sessions` row: what a client's last applied write was, when (in log time)
//! and what it was answered, so a retry of it is answered the same without applying it again,
//! and an idle session can be forgotten on every replica at the same log index.
//!
//! Layout: seq (u64 BE), log time of that write in ms (u64 BE), then the reply (postcard).
//! Every field is fixed by the entry being applied, so every replica stores the same bytes.

use shardkv_transport::wire::Response;

use crate::error::ActorError;
use crate::schema::decode_u64;

/// Bytes of a session record before its reply: a shorter record is corrupt.
pub const SESSION_RECORD_BYTES_MIN: usize = 16;

/// A decoded `sessions` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// The sequence number of the client's last applied write.
    pub seq: u64,
    /// The log time (ms) of that write, which session expiry is judged by.
    pub last_ms: u64,
    /// The reply that write got; `None` if the stored reply does not decode (then a retry of
    /// that write cannot be answered as the first one was).
    pub reply: Option<Response>,
}

/// The stored bytes of a session whose last applied write was `seq` at log time `last_ms`,
/// answered `reply`.
pub fn encode_session(seq: u64, last_ms: u64, reply: &Response) -> Result<Vec<u8>, ActorError> {
    let mut record = seq.to_be_bytes().to_vec();
    record.extend_from_slice(&last_ms.to_be_bytes());
    let reply = postcard::to_allocvec(reply).map_err(|err| ActorError::Corrupt {
        what: "session reply".into(),
        detail: err.to_string(),
    })?;
    record.extend_from_slice(&reply);
    Ok(record)
}

/// The stored bytes of `record` (a copy of a session: a reply that did not decode stays so).
pub fn encode_record(record: &SessionRecord) -> Result<Vec<u8>, ActorError> {
    match &record.reply {
        Some(reply) => encode_session(record.seq, record.last_ms, reply),
        None => {
            let mut v = record.seq.to_be_bytes().to_vec();
            v.extend_from_slice(&record.last_ms.to_be_bytes());
            Ok(v)
        }
    }
}

/// Decodes the stored bytes of a session.
pub fn decode_session(v: &[u8]) -> Result<SessionRecord, ActorError> {
    if v.len() < SESSION_RECORD_BYTES_MIN {
        return Err(ActorError::Corrupt {
            what: "client session".into(),
            detail: format!("{} bytes", v.len()),
        });
    }
    Ok(SessionRecord {
        seq: decode_u64("session seq", &v[..8])?,
        last_ms: decode_u64("session time", &v[8..16])?,
        reply: postcard::from_bytes(&v[16..]).ok(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_record_round_trips_with_its_reply() {
        let bytes = encode_session(7, 1_234, &Response::CasOk).unwrap();
        assert_eq!(
            decode_session(&bytes).unwrap(),
            SessionRecord {
                seq: 7,
                last_ms: 1_234,
                reply: Some(Response::CasOk)
            }
        );
    }

    #[test]
    fn seq_and_time_are_big_endian_in_front() {
        let bytes = encode_session(1, 2, &Response::CasOk).unwrap();
        assert_eq!(&bytes[..8], &1u64.to_be_bytes());
        assert_eq!(&bytes[8..16], &2u64.to_be_bytes());
    }

    #[test]
    fn a_record_without_a_readable_reply_keeps_seq_and_time() {
        let mut bytes = 5u64.to_be_bytes().to_vec();
        bytes.extend_from_slice(&9u64.to_be_bytes());
        let got = decode_session(&bytes).unwrap();
        assert_eq!((got.seq, got.last_ms, got.reply), (5, 9, None));
    }

    #[test]
    fn a_short_record_is_corrupt() {
        let err = decode_session(&[0; SESSION_RECORD_BYTES_MIN - 1]).unwrap_err();
        assert!(matches!(err, ActorError::Corrupt { .. }), "{err}");
    }
}
