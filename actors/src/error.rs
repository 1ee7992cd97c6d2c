//! Errors of the host's actors and storage.

/// What can fail inside a host.
#[derive(thiserror::Error, Debug, Clone)]
pub enum ActorError {
    /// LMDB refused an operation; the text is LMDB's.
    #[error("storage: {0}")]
    Storage(String),
    /// A stored record did not decode: the file is corrupt or from an incompatible version.
    #[error("corrupt data in {what}: {detail}")]
    Corrupt { what: String, detail: String },
    /// The data directory belongs to another cluster or host.
    #[error("data directory {dir} belongs to {found}, not {expected}; point data_dir elsewhere or remove it deliberately")]
    ForeignData {
        dir: String,
        found: String,
        expected: String,
    },
    /// The storage actor stopped; the host cannot persist anything more.
    #[error("storage actor is gone")]
    StorageGone,
    /// An earlier commit failed, so this host's writer takes no more work: nothing after a
    /// failed batch may be reported durable. The host stops; a restart recovers from disk.
    #[error(
        "an earlier LMDB commit failed ({0}); this host persists nothing more until restarted"
    )]
    StorageFailed(String),
    /// raft-rs refused to start a replica.
    #[error("raft: {0}")]
    Raft(String),
}

impl From<heed::Error> for ActorError {
    fn from(e: heed::Error) -> Self {
        ActorError::Storage(e.to_string())
    }
}

/// The one way a failure inside the host's storage reaches raft-rs (from the `raft::Storage`
/// impl and the snapshot builder): as its storage error `Other`, carrying ours, so the cause
/// shows in raft-rs's report. Conditions raft-rs acts on (compacted, unavailable, snapshot
/// not ready) are never errors of ours and are built as raft-rs's own variants.
impl From<ActorError> for raft::Error {
    fn from(e: ActorError) -> Self {
        raft::Error::Store(raft::StorageError::Other(Box::new(e)))
    }
}
