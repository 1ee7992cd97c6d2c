//! [`Admission`]: what one client identity may hold on a host at once.
//!
//! QUIC flow control bounds one connection; nothing in it stops a certificate from opening
//! many connections, or a connection from announcing many large frames. A host therefore
//! counts, per client identity, its connections, its requests in flight and the request bytes
//! it has buffered, and refuses what goes over — so one flooding client gets errors while
//! others keep being served, and the memory a client can pin is bounded by these constants.
//! Host identities are not counted: they are the cluster's own hosts, whose traffic Raft
//! bounds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::identity::PeerIdentity;
use crate::wire::request_frame_bytes_max;

/// Connections one client identity may hold open to a host. A client process opens one per
/// host, and many processes may share a certificate (`shardkv bench` runs up to 64 clients on
/// one); this leaves room for that while bounding the QUIC state one certificate can make a
/// host keep. What a connection can make the host buffer is bounded by its receive window.
pub const CONNECTIONS_PER_IDENTITY_MAX: usize = 256;
/// Requests one client identity may have in flight on a host, across its connections: far
/// more than a client needs to saturate a host, few enough that their tasks and replies stay
/// small.
pub const REQUESTS_PER_IDENTITY_MAX: usize = 1024;
/// Largest requests one client identity may have buffered on a host at once: two, so a client
/// writing values at the limit is never refused for lack of room while one is being read.
pub const LARGEST_REQUESTS_PER_IDENTITY: usize = 2;
/// Request bytes one client identity may always have buffered on a host, whatever the value
/// limit: dozens of ordinary requests at once, a small fraction of a host's memory.
pub const REQUEST_BYTES_PER_IDENTITY_MIN: usize = 32 << 20;

/// Request bytes one client identity may have buffered on a host at once, across its
/// connections, when values are capped at `value_bytes_max`: the bound on what a flood from
/// one certificate can pin.
pub const fn request_bytes_per_identity_max(value_bytes_max: usize) -> usize {
    let largest = LARGEST_REQUESTS_PER_IDENTITY * request_frame_bytes_max(value_bytes_max);
    if largest > REQUEST_BYTES_PER_IDENTITY_MIN {
        largest
    } else {
        REQUEST_BYTES_PER_IDENTITY_MIN
    }
}

/// Why a client's connection or request was not admitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("too many connections from this certificate (at most {limit}); close some")]
    Connections { limit: usize },
    #[error("too many requests in flight from this certificate (at most {limit}); retry later")]
    Requests { limit: usize },
    #[error(
        "too many request bytes in flight from this certificate (at most {limit}); retry later"
    )]
    Bytes { limit: usize },
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Usage {
    connections: usize,
    requests: usize,
    bytes: usize,
}

impl Usage {
    fn is_idle(&self) -> bool {
        *self == Usage::default()
    }
}

/// Per-identity usage of one host; see the module docs. Shared by its connections (`Arc`).
#[derive(Debug)]
pub struct Admission {
    /// Request bytes one identity may have buffered.
    request_bytes_max: usize,
    usage: Mutex<HashMap<PeerIdentity, Usage>>,
}

/// A connection admitted for an identity; released when dropped.
#[derive(Debug)]
pub struct ConnectionSlot {
    admission: Arc<Admission>,
    peer: Option<PeerIdentity>,
}

/// A request admitted for an identity, with the bytes it holds; released when dropped.
#[derive(Debug)]
pub struct RequestSlot {
    admission: Arc<Admission>,
    peer: Option<PeerIdentity>,
    bytes: usize,
}

impl Admission {
    /// Limits for a host whose values are capped at `value_bytes_max`.
    pub fn new(value_bytes_max: usize) -> Self {
        Admission {
            request_bytes_max: request_bytes_per_identity_max(value_bytes_max),
            usage: Mutex::new(HashMap::new()),
        }
    }

    /// Admits a connection from `peer`; hosts are always admitted.
    pub fn connection(self: &Arc<Self>, peer: &PeerIdentity) -> Result<ConnectionSlot, Refusal> {
        let peer = self.counted(peer, |u| {
            if u.connections >= CONNECTIONS_PER_IDENTITY_MAX {
                return Err(Refusal::Connections {
                    limit: CONNECTIONS_PER_IDENTITY_MAX,
                });
            }
            u.connections += 1;
            Ok(())
        })?;
        Ok(ConnectionSlot {
            admission: Arc::clone(self),
            peer,
        })
    }

    /// Admits one request from `peer` (its bytes come later, see [`RequestSlot::reserve`]).
    pub fn request(self: &Arc<Self>, peer: &PeerIdentity) -> Result<RequestSlot, Refusal> {
        let peer = self.counted(peer, |u| {
            if u.requests >= REQUESTS_PER_IDENTITY_MAX {
                return Err(Refusal::Requests {
                    limit: REQUESTS_PER_IDENTITY_MAX,
                });
            }
            u.requests += 1;
            Ok(())
        })?;
        Ok(RequestSlot {
            admission: Arc::clone(self),
            peer,
            bytes: 0,
        })
    }

    /// Applies `change` to `peer`'s usage if `peer` is a client; returns the identity to
    /// release later (`None`: not counted).
    fn counted(
        &self,
        peer: &PeerIdentity,
        change: impl FnOnce(&mut Usage) -> Result<(), Refusal>,
    ) -> Result<Option<PeerIdentity>, Refusal> {
        if matches!(peer, PeerIdentity::Host(_)) {
            return Ok(None);
        }
        let mut usage = self.lock();
        change(usage.entry(peer.clone()).or_default())?;
        Ok(Some(peer.clone()))
    }

    fn release(&self, peer: &PeerIdentity, change: impl FnOnce(&mut Usage)) {
        let mut usage = self.lock();
        if let Some(u) = usage.get_mut(peer) {
            change(u);
            if u.is_idle() {
                usage.remove(peer);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PeerIdentity, Usage>> {
        // A panic while holding the lock leaves only counters behind; they stay usable.
        self.usage.lock().unwrap_or_else(|p| p.into_inner())
    }

    #[cfg(test)]
    fn usage_of(&self, peer: &PeerIdentity) -> Usage {
        self.lock().get(peer).copied().unwrap_or_default()
    }
}

impl RequestSlot {
    /// Reserves `bytes` more for this request (before they are read), or refuses.
    pub fn reserve(&mut self, bytes: usize) -> Result<(), Refusal> {
        let Some(peer) = &self.peer else {
            return Ok(());
        };
        let mut usage = self.admission.lock();
        let u = usage.entry(peer.clone()).or_default();
        let limit = self.admission.request_bytes_max;
        if u.bytes + bytes > limit {
            return Err(Refusal::Bytes { limit });
        }
        u.bytes += bytes;
        self.bytes += bytes;
        Ok(())
    }
}

impl Drop for RequestSlot {
    fn drop(&mut self) {
        if let Some(peer) = &self.peer {
            let bytes = self.bytes;
            self.admission.release(peer, |u| {
                u.requests = u.requests.saturating_sub(1);
                u.bytes = u.bytes.saturating_sub(bytes);
            });
        }
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        if let Some(peer) = &self.peer {
            self.admission.release(peer, |u| {
                u.connections = u.connections.saturating_sub(1);
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::wire::VALUE_BYTES_MAX_CEILING;

    const VALUE_BYTES_MAX: usize = 1 << 20;
    const BUDGET: usize = request_bytes_per_identity_max(VALUE_BYTES_MAX);

    fn client(name: &str) -> PeerIdentity {
        PeerIdentity::Client(name.into())
    }

    fn admission() -> Arc<Admission> {
        Arc::new(Admission::new(VALUE_BYTES_MAX))
    }

    #[test]
    fn the_byte_budget_holds_two_of_the_largest_requests_and_has_a_floor() {
        assert_eq!(BUDGET, REQUEST_BYTES_PER_IDENTITY_MIN);
        assert_eq!(
            request_bytes_per_identity_max(VALUE_BYTES_MAX_CEILING),
            2 * request_frame_bytes_max(VALUE_BYTES_MAX_CEILING)
        );
    }

    #[test]
    fn a_flooding_identity_is_refused_while_another_is_admitted() {
        let admission = admission();
        let slots: Vec<_> = (0..REQUESTS_PER_IDENTITY_MAX)
            .map(|_| {
                admission
                    .request(&client("flood"))
                    .expect("under the limit")
            })
            .collect();
        assert_eq!(
            admission.request(&client("flood")).unwrap_err(),
            Refusal::Requests {
                limit: REQUESTS_PER_IDENTITY_MAX
            }
        );
        assert!(admission.request(&client("other")).is_ok());
        drop(slots);
        assert!(admission.request(&client("flood")).is_ok());
    }

    #[test]
    fn request_bytes_are_bounded_per_identity_and_released_with_the_request() {
        let admission = admission();
        let mut a = admission.request(&client("c")).unwrap();
        a.reserve(BUDGET - 10).unwrap();
        let mut b = admission.request(&client("c")).unwrap();
        assert!(matches!(b.reserve(11), Err(Refusal::Bytes { .. })));
        b.reserve(10).unwrap();
        drop(a);
        let mut c = admission.request(&client("c")).unwrap();
        c.reserve(BUDGET - 10).unwrap();
        drop((b, c));
        assert_eq!(admission.usage_of(&client("c")), Usage::default());
        assert!(admission.lock().is_empty(), "idle identities are forgotten");
    }

    #[test]
    fn connections_are_bounded_per_identity_but_hosts_are_not_counted() {
        let admission = admission();
        let held: Vec<_> = (0..CONNECTIONS_PER_IDENTITY_MAX)
            .map(|_| admission.connection(&client("c")).unwrap())
            .collect();
        assert!(matches!(
            admission.connection(&client("c")),
            Err(Refusal::Connections { .. })
        ));
        for _ in 0..CONNECTIONS_PER_IDENTITY_MAX * 2 {
            let mut slot = admission.request(&PeerIdentity::Host(1)).unwrap();
            slot.reserve(BUDGET).unwrap();
            std::mem::forget(admission.connection(&PeerIdentity::Host(1)).unwrap());
        }
        drop(held);
        assert!(admission.lock().is_empty());
    }
}
