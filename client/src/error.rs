//! What a caller of the client library can be told went wrong.

use shardkv_transport::wire::LimitKind;
use shardkv_transport::LayoutMismatch;
use std::time::Duration;

/// Why an operation failed. Retryable conditions (elections, lost connections) are retried
/// inside the client until the deadline; what reaches the caller is final.
#[derive(thiserror::Error, Debug, Clone)]
pub enum ClientError {
    /// The key or value is over its limit; nothing was sent.
    #[error("{what} of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        what: LimitKind,
        len: usize,
        limit: usize,
    },
    /// The request is malformed (e.g. empty key).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// A host refused our certificate (or role); retrying will not help.
    #[error("{0}; check that the client certificate was issued by this cluster's CA (`shardkv certs client NAME`)")]
    Refused(String),
    /// No answer within the deadline. For a write the outcome is unknown: it may or may not
    /// have been applied (a retry with the same client is still applied at most once).
    #[error("no answer within {deadline:?}; last problem: {last}")]
    Timeout { deadline: Duration, last: String },
    /// Client setup failed (TLS files, endpoint).
    #[error("client setup: {0}")]
    Setup(String),
    /// The configuration declares another layout than the cluster was bootstrapped with; the
    /// client refuses to route (keys would go to shards that do not hold them).
    #[error("{0}")]
    LayoutMismatch(#[from] LayoutMismatch),
    /// The host reported an internal fault.
    #[error("host error: {0}")]
    Internal(String),
}
