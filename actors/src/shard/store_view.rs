//! The running shard's read view: the overlay of batches on their way to disk over LMDB.
//!
//! Reads of clients and the apply core both go through it, so a reply never waits for the
//! apply's fsync and a batch never misses what an earlier, uncommitted one did.

use shardkv_transport::ShardId;

use super::overlay::Overlay;
use super::sessions::SessionActivity;
use super::view::AppliedView;
use crate::error::ActorError;
use crate::schema::session_record::decode_session;
use crate::schema::session_record::SessionRecord;
use crate::schema::{kv_key, session_key, Schema};

/// The applied state of `shard`: `overlay` first, then the rows in `schema`.
pub struct StoreView<'a> {
    pub schema: &'a Schema,
    pub shard: ShardId,
    pub overlay: &'a Overlay,
}

impl AppliedView for StoreView<'_> {
    fn value(&self, key: &[u8]) -> Result<Option<Vec<u8>>, ActorError> {
        if let Some(v) = self.overlay.value(key) {
            return Ok(v.clone());
        }
        let rtxn = self.schema.env.read_txn()?;
        Ok(self
            .schema
            .kv
            .get(&rtxn, &kv_key(self.shard, key))?
            .map(|v| v.to_vec()))
    }

    fn session(&self, client: u64) -> Result<Option<SessionRecord>, ActorError> {
        if let Some(s) = self.overlay.session(client) {
            return Ok(s.clone());
        }
        let rtxn = self.schema.env.read_txn()?;
        self.schema
            .sessions
            .get(&rtxn, &session_key(self.shard, client))?
            .map(decode_session)
            .transpose()
    }

    fn session_activity(
        &self,
        shadowed: &dyn Fn(u64) -> bool,
    ) -> Result<Vec<SessionActivity>, ActorError> {
        let mut found = Vec::new();
        let rtxn = self.schema.env.read_txn()?;
        for item in self
            .schema
            .sessions
            .prefix_iter(&rtxn, &self.shard.to_be_bytes())?
        {
            let (k, v) = item?;
            let Some(client) = k.get(4..12).and_then(|b| <[u8; 8]>::try_from(b).ok()) else {
                continue;
            };
            let client = u64::from_be_bytes(client);
            if !shadowed(client) && self.overlay.session(client).is_none() {
                // Only on disk: its record decides (and is decoded only here).
                let last_ms = decode_session(v)?.last_ms;
                found.push(SessionActivity { client, last_ms });
            }
        }
        drop(rtxn);
        // Sessions with a newer record in flight: that record decides.
        found.extend(
            self.overlay
                .sessions()
                .filter(|(client, _)| !shadowed(*client))
                .filter_map(|(client, s)| {
                    s.map(|s| SessionActivity {
                        client,
                        last_ms: s.last_ms,
                    })
                }),
        );
        Ok(found)
    }

    fn shard_has_state(&self, shard: ShardId) -> Result<bool, ActorError> {
        crate::schema::raft_records::has_state(self.schema, shard)
    }

    fn sessions_except(
        &self,
        shadowed: &dyn Fn(u64) -> bool,
    ) -> Result<Vec<(u64, SessionRecord)>, ActorError> {
        let mut found = Vec::new();
        let rtxn = self.schema.env.read_txn()?;
        for item in self
            .schema
            .sessions
            .prefix_iter(&rtxn, &self.shard.to_be_bytes())?
        {
            let (k, v) = item?;
            let Some(client) = k.get(4..12).and_then(|b| <[u8; 8]>::try_from(b).ok()) else {
                continue;
            };
            let client = u64::from_be_bytes(client);
            if !shadowed(client) && self.overlay.session(client).is_none() {
                found.push((client, decode_session(v)?));
            }
        }
        drop(rtxn);
        found.extend(
            self.overlay
                .sessions()
                .filter(|(client, _)| !shadowed(*client))
                .filter_map(|(client, s)| s.map(|s| (client, s.clone()))),
        );
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::messages::{WriteBatch, WriteOp};
    use crate::schema::session_record::encode_session;
    use crate::schema::TableId;
    use crate::shard::sessions::session;
    use crate::storage::commit;
    use crate::test_fixtures::temp_schema;
    use shardkv_transport::wire::Response;

    #[test]
    fn the_overlay_decides_over_lmdb_and_its_tombstones_hide_rows() {
        let (_dir, schema) = temp_schema();
        let record = |last_ms| encode_session(1, last_ms, &Response::Ok).unwrap();
        let ops = vec![
            WriteOp::Put(TableId::Kv, kv_key(1, b"a"), b"disk".to_vec()),
            WriteOp::Put(TableId::Kv, kv_key(1, b"b"), b"disk".to_vec()),
            WriteOp::Put(TableId::Sessions, session_key(1, 5).to_vec(), record(50)),
            WriteOp::Put(TableId::Sessions, session_key(1, 6).to_vec(), record(60)),
            WriteOp::Put(TableId::Sessions, session_key(1, 7).to_vec(), record(70)),
            WriteOp::Put(TableId::Sessions, session_key(2, 5).to_vec(), record(1)),
        ];
        commit(&schema, vec![WriteBatch { ops }]).unwrap();
        let mut overlay = Overlay::default();
        let newer = session(2, 66, None);
        overlay.add(
            1,
            HashMap::from([(b"b".to_vec(), None)]),
            HashMap::from([(6, Some(newer.clone())), (7, None)]),
        );
        let view = StoreView {
            schema: &schema,
            shard: 1,
            overlay: &overlay,
        };
        assert_eq!(view.value(b"a").unwrap(), Some(b"disk".to_vec()));
        assert_eq!(view.value(b"b").unwrap(), None);
        assert_eq!(view.session(6).unwrap(), Some(newer));
        assert_eq!(view.session(7).unwrap(), None);
        assert_eq!(view.session(5).unwrap().map(|s| s.last_ms), Some(50));

        let mut activity = view.session_activity(&|_| false).unwrap();
        activity.sort_unstable_by_key(|a| a.client);
        let pairs: Vec<_> = activity.iter().map(|a| (a.client, a.last_ms)).collect();
        assert_eq!(
            pairs,
            vec![(5, 50), (6, 66)],
            "only this shard's live sessions"
        );
        let shadowed = view.session_activity(&|client| client == 5).unwrap();
        assert_eq!(shadowed.len(), 1);
    }
}
