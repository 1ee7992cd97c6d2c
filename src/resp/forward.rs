//! [`Forwarder`]: with `[resp] forward = true`, a host runs a command for a shard it does
//! not lead through a shardkv client (with the host's certificate) instead of answering
//! `-MOVED`, for clients that do not follow Redis Cluster redirections.
//!
//! The client finds the shard's leader and retries like any shardkv client, in an
//! exactly-once session: a forwarded `INCR` that the client retries after a lost reply is
//! applied once. A forwarded read is linearizable (stricter than READONLY asks).

use shardkv_client::{Client, ClientError};
use shardkv_transport::wire::{Op, ReadValue, Response};

/// Runs operations on whichever host leads their shard.
pub struct Forwarder {
    client: Client,
}

impl Forwarder {
    /// A forwarder over `client` (the host's certificate).
    pub fn new(client: Client) -> Forwarder {
        Forwarder { client }
    }

    /// The answer of the shard's leader to `op`.
    pub async fn forward(&self, op: Op) -> Response {
        let result = match op {
            Op::Get { key, .. } => self.client.get(&key).await.map(Response::Value),
            Op::Put { key, value } => self.client.put(&key, &value).await.map(|()| Response::Ok),
            Op::Delete { key } => self.client.delete(&key).await.map(|()| Response::Ok),
            Op::Cas { key, expected, new } => self
                .client
                .cas(&key, expected.as_deref(), new.as_deref())
                .await
                .map(|r| match r {
                    Ok(()) => Response::CasOk,
                    Err(current) => Response::CasFailed { current },
                }),
            Op::Update(updates) => self.client.update(updates).await.map(Response::Updated),
            Op::GetMany { keys, .. } => self
                .client
                .get_many(keys)
                .await
                .map(|values| Response::Values(values.into_iter().map(ReadValue).collect())),
        };
        result.unwrap_or_else(|e| match e {
            ClientError::TooLarge { what, len, limit } => Response::TooLarge { what, len, limit },
            ClientError::Invalid(m) => Response::Invalid(m),
            ClientError::Timeout { .. } => Response::Unavailable(e.to_string()),
            other => Response::Internal(other.to_string()),
        })
    }
}
