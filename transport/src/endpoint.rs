//! QUIC endpoints and the two kinds of streams shardkv opens on them.
//!
//! - Client -> host: one bidirectional stream per request (a [`RequestFrame`], then a reply
//!   frame). Admin requests are answered here; fault hooks only for host certificates.
//! - Host -> host: one long-lived unidirectional stream per direction carrying [`RaftBatch`]
//!   frames. It is accepted only from a host certificate, and every message in it must come from
//!   the host id that certificate names (checked by the [`Handler`]). Snapshots take a
//!   unidirectional stream each ([`crate::snapshot_stream`]).
//!
//! What a peer can make a host buffer is bounded: QUIC flow control per stream and per
//! connection ([`STREAM_RECEIVE_WINDOW_BYTES`], [`CONNECTION_RECEIVE_WINDOW_BYTES`]), open
//! requests per connection ([`STREAMS_PER_CONNECTION_MAX`]), a request frame no longer than a
//! request can be under the host's value limit, and per client identity the limits of
//! [`crate::admission`].

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, Endpoint, TransportConfig, VarInt};
use tracing::{debug, info, warn};

use crate::admission::{Admission, RequestSlot};
use crate::error::TransportError;
use crate::frame::{encode, read_frame, read_frame_len, read_payload, write_frame};
use crate::identity::{host_server_name, PeerIdentity};
use crate::snapshot_stream;
use crate::stream_end::{end_after_frame, end_while};
use crate::tls::{self, TlsFiles};
use crate::wire::{
    request_frame_bytes_max, AdminRequest, HostId, LimitKind, RaftBatch, Request, RequestFrame,
    Response, ShardId, StreamHeader, RAFT_FRAME_BYTES_MAX, RESPONSE_FRAME_BYTES_MAX,
};

/// QUIC application close code: the peer's role may not do what it tried.
pub const CLOSE_FORBIDDEN: u32 = 1;
/// QUIC application close code: the peer sent something malformed.
pub const CLOSE_PROTOCOL: u32 = 2;
/// QUIC application close code: the peer's certificate holds too many connections already.
pub const CLOSE_BUSY: u32 = 3;
/// Concurrent requests (bidirectional streams) one connection may have open. A client that
/// wants more waits for a stream to close, not for an error; a client needs far fewer than
/// this to keep a host busy, and each open stream costs the host a task and a receive window.
pub const STREAMS_PER_CONNECTION_MAX: u32 = 256;
/// Bytes a peer may send on one stream ahead of what the host has read (QUIC flow control).
/// At 4 MiB a single stream still fills a 1 Gbit/s link at 30 ms round trip.
pub const STREAM_RECEIVE_WINDOW_BYTES: u32 = 4 << 20;
/// Bytes a peer may send on one connection, over all its streams, ahead of what the host has
/// read: what one connection can make the host buffer, whatever its number of streams
/// (quinn's default is unbounded).
pub const CONNECTION_RECEIVE_WINDOW_BYTES: u32 = 16 << 20;
/// How long a request stream may take to deliver its frame, or a reply to be taken by the
/// client, before the stream is dropped: a client that stalls mid-request (or stops reading
/// its replies) must not hold its request slot, and the bytes behind it, forever. Grows with
/// the frame at [`TRANSFER_BYTES_PER_SEC_MIN`].
pub const STREAM_TIMEOUT_MIN: Duration = Duration::from_secs(10);
/// The slowest transfer rate a client is given time for.
pub const TRANSFER_BYTES_PER_SEC_MIN: u64 = 1 << 20;

/// The time a transfer of `bytes` is given (see [`STREAM_TIMEOUT_MIN`]).
fn transfer_timeout(bytes: usize) -> Duration {
    let bytes = u64::try_from(bytes).unwrap_or(u64::MAX);
    STREAM_TIMEOUT_MIN + Duration::from_secs(bytes / TRANSFER_BYTES_PER_SEC_MIN)
}

/// What a host does with what arrives on its endpoint. The transport knows nothing of actors;
/// the daemon implements this over its router.
pub trait Handler: Send + Sync + 'static {
    /// A batch of Raft messages from host `from` (already proven by its certificate).
    fn raft(&self, from: HostId, batch: RaftBatch);
    /// One client (or host) data request; the future resolves to the reply.
    fn request(&self, peer: PeerIdentity, req: Request) -> impl Future<Output = Response> + Send;
    /// The reply to [`AdminRequest::Status`]: [`Response::Status`], or why there is none.
    fn status(&self) -> impl Future<Output = Response> + Send;
    /// The reply to [`AdminRequest::Map`].
    fn map(&self, req: crate::wire::MapRequest) -> impl Future<Output = Response> + Send;
    /// The reply to [`AdminRequest::ChangeReplicas`].
    fn change_replicas(
        &self,
        shard: ShardId,
        changes: Vec<crate::wire::ReplicaChange>,
    ) -> impl Future<Output = Response> + Send;
    /// The reply to [`AdminRequest::TransferLeader`].
    fn transfer_leader(&self, shard: ShardId, to: HostId) -> impl Future<Output = Response> + Send;
    /// The reply to [`AdminRequest::SplitShard`].
    fn split_shard(
        &self,
        shard: ShardId,
        split: crate::wire::SplitSpec,
    ) -> impl Future<Output = Response> + Send;
    /// Where an arriving snapshot may be written (a fresh path in the host's data dir).
    fn snapshot_path(&self, from: HostId, shard: ShardId) -> PathBuf;
    /// A whole snapshot from host `from` has arrived in `path`, for the `MsgSnapshot` in
    /// `message`.
    fn snapshot(
        &self,
        from: HostId,
        incarnation: u64,
        shard: ShardId,
        message: Vec<u8>,
        path: PathBuf,
    );
}

fn transport_config() -> Arc<TransportConfig> {
    let mut t = TransportConfig::default();
    // Detect a vanished peer in seconds, and keep idle-but-healthy connections open.
    t.keep_alive_interval(Some(Duration::from_secs(1)));
    t.max_idle_timeout(Some(VarInt::from_u32(5_000).into()));
    t.max_concurrent_bidi_streams(VarInt::from_u32(STREAMS_PER_CONNECTION_MAX));
    t.stream_receive_window(VarInt::from_u32(STREAM_RECEIVE_WINDOW_BYTES));
    t.receive_window(VarInt::from_u32(CONNECTION_RECEIVE_WINDOW_BYTES));
    t.max_concurrent_uni_streams(VarInt::from_u32(16));
    Arc::new(t)
}

fn quic_client_config(files: &TlsFiles) -> Result<quinn::ClientConfig, TransportError> {
    let crypto = QuicClientConfig::try_from(tls::client_config(files)?)
        .map_err(|e| TransportError::Tls(e.to_string()))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    cfg.transport_config(transport_config());
    Ok(cfg)
}

/// A host's endpoint: listens on `addr` and dials other hosts from the same socket.
pub fn host_endpoint(addr: SocketAddr, files: &TlsFiles) -> Result<Endpoint, TransportError> {
    let crypto = QuicServerConfig::try_from(tls::server_config(files)?)
        .map_err(|e| TransportError::Tls(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(transport_config());
    let mut endpoint = Endpoint::server(server, addr).map_err(|e| TransportError::Endpoint {
        addr: addr.to_string(),
        reason: e.to_string(),
    })?;
    endpoint.set_default_client_config(quic_client_config(files)?);
    Ok(endpoint)
}

/// A client's endpoint: dials only.
pub fn client_endpoint(files: &TlsFiles) -> Result<Endpoint, TransportError> {
    let bind: SocketAddr = ([0, 0, 0, 0], 0).into();
    let mut endpoint = Endpoint::client(bind).map_err(|e| TransportError::Endpoint {
        addr: bind.to_string(),
        reason: e.to_string(),
    })?;
    endpoint.set_default_client_config(quic_client_config(files)?);
    Ok(endpoint)
}

/// Dials host `id` at `addr`, checking that its certificate is that host's.
pub async fn connect(
    endpoint: &Endpoint,
    addr: SocketAddr,
    id: HostId,
) -> Result<Connection, TransportError> {
    let err = |reason: String| TransportError::Connect {
        addr: addr.to_string(),
        reason,
    };
    let connecting = endpoint
        .connect(addr, &host_server_name(id))
        .map_err(|e| err(e.to_string()))?;
    let conn = connecting.await.map_err(|e| classify(addr, &e))?;
    match tls::peer_identity(&conn)? {
        PeerIdentity::Host(got) if got == id => Ok(conn),
        other => {
            conn.close(
                VarInt::from_u32(CLOSE_FORBIDDEN),
                b"unexpected host identity",
            );
            Err(err(format!("expected host {id}, certificate says {other}")))
        }
    }
}

/// Whether a connection error means "the peer will not talk to us" (a TLS alert such as an
/// unknown CA, or our role being forbidden) rather than a passing network fault.
pub fn is_refusal(e: &quinn::ConnectionError) -> bool {
    match e {
        // TLS alerts travel as QUIC crypto errors, codes 0x100..=0x1ff.
        quinn::ConnectionError::ConnectionClosed(c) => {
            (0x100..=0x1ff).contains(&u64::from(c.error_code))
        }
        quinn::ConnectionError::TransportError(t) => (0x100..=0x1ff).contains(&u64::from(t.code)),
        quinn::ConnectionError::ApplicationClosed(a) => {
            a.error_code == VarInt::from_u32(CLOSE_FORBIDDEN)
        }
        _ => false,
    }
}

fn classify(addr: SocketAddr, e: &quinn::ConnectionError) -> TransportError {
    let reason = match e {
        quinn::ConnectionError::ApplicationClosed(a) if is_refusal(e) => {
            String::from_utf8_lossy(&a.reason).into_owned()
        }
        _ => e.to_string(),
    };
    if is_refusal(e) {
        TransportError::Refused {
            addr: addr.to_string(),
            reason,
        }
    } else {
        TransportError::Connect {
            addr: addr.to_string(),
            reason,
        }
    }
}

/// Explains a failed stream: quinn reports a refused client certificate only as a lost
/// connection, and only `close_reason()` says why.
pub fn explain(conn: &Connection, e: impl std::fmt::Display) -> TransportError {
    match conn.close_reason() {
        Some(reason) => classify(conn.remote_address(), &reason),
        None => TransportError::io(e),
    }
}

/// Sends one request on its own bidirectional stream and waits for the reply.
pub async fn call(conn: &Connection, req: &RequestFrame) -> Result<Response, TransportError> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| explain(conn, e))?;
    write_frame(&mut send, req)
        .await
        .map_err(|e| explain(conn, e))?;
    send.finish().map_err(|e| explain(conn, e))?;
    match read_frame::<_, Response>(&mut recv, RESPONSE_FRAME_BYTES_MAX).await {
        Ok(Some(resp)) => {
            end_after_frame(recv);
            Ok(resp)
        }
        Ok(None) => Err(explain(conn, "stream closed before a reply")),
        Err(TransportError::Io(e)) => Err(explain(conn, e)),
        Err(e) => Err(e),
    }
}

/// Opens the long-lived stream for Raft batches towards a host.
pub async fn open_raft_stream(conn: &Connection) -> Result<quinn::SendStream, TransportError> {
    let mut stream = conn.open_uni().await.map_err(|e| explain(conn, e))?;
    write_frame(&mut stream, &StreamHeader::Raft).await?;
    Ok(stream)
}

/// Writes one batch on a Raft stream.
pub async fn send_raft_batch(
    stream: &mut quinn::SendStream,
    batch: &RaftBatch,
) -> Result<(), TransportError> {
    write_frame(stream, batch).await
}

/// Accepts connections until the endpoint closes, serving each with `handler`. Request frames
/// longer than a request can be with values of at most `value_bytes_max` are refused from
/// their length alone, and each client identity is held to the [`crate::admission`] limits.
pub async fn serve<H: Handler>(endpoint: Endpoint, handler: Arc<H>, value_bytes_max: usize) {
    let limits = Arc::new(RequestLimits {
        frame_bytes_max: request_frame_bytes_max(value_bytes_max),
        admission: Arc::new(Admission::new(value_bytes_max)),
    });
    while let Some(incoming) = endpoint.accept().await {
        let handler = handler.clone();
        let limits = limits.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            match incoming.await {
                Ok(conn) => serve_connection(conn, handler, limits).await,
                Err(e) => debug!(%remote, error = %e, "handshake failed"),
            }
        });
    }
}

/// What a host enforces on every request it reads.
struct RequestLimits {
    /// Longest request frame read.
    frame_bytes_max: usize,
    /// Per-identity bounds shared by all connections.
    admission: Arc<Admission>,
}

async fn serve_connection<H: Handler>(
    conn: Connection,
    handler: Arc<H>,
    limits: Arc<RequestLimits>,
) {
    let peer = match tls::peer_identity(&conn) {
        Ok(p) => p,
        Err(e) => {
            warn!(remote = %conn.remote_address(), error = %e, "refusing connection");
            conn.close(VarInt::from_u32(CLOSE_FORBIDDEN), e.to_string().as_bytes());
            return;
        }
    };
    let _slot = match limits.admission.connection(&peer) {
        Ok(slot) => slot,
        Err(e) => {
            debug!(%peer, error = %e, "refusing connection");
            conn.close(VarInt::from_u32(CLOSE_BUSY), e.to_string().as_bytes());
            return;
        }
    };
    debug!(remote = %conn.remote_address(), %peer, "connection accepted");
    loop {
        tokio::select! {
            bi = conn.accept_bi() => match bi {
                Ok((send, recv)) => {
                    let handler = handler.clone();
                    let peer = peer.clone();
                    tokio::spawn(serve_request(send, recv, peer, handler, limits.clone()));
                }
                Err(e) => { debug!(%peer, error = %e, "connection ended"); return; }
            },
            uni = conn.accept_uni() => match uni {
                Ok(recv) => {
                    let PeerIdentity::Host(from) = peer else {
                        warn!(%peer, "refused Raft stream from a non-host certificate");
                        conn.close(
                            VarInt::from_u32(CLOSE_FORBIDDEN),
                            b"raft traffic requires a host certificate",
                        );
                        return;
                    };
                    tokio::spawn(serve_raft_stream(conn.clone(), recv, from, handler.clone()));
                }
                Err(e) => { debug!(%peer, error = %e, "connection ended"); return; }
            },
        }
    }
}

/// Reads one request within `limits`: its identity's request slot first, then its length,
/// then (once its bytes are reserved) its payload. What cannot be admitted is answered at once
/// and the rest of the stream is refused, so it is never buffered.
async fn read_request(
    recv: &mut quinn::RecvStream,
    peer: &PeerIdentity,
    limits: &RequestLimits,
) -> Result<Option<(RequestFrame, RequestSlot)>, Response> {
    let mut slot = limits
        .admission
        .request(peer)
        .map_err(|e| Response::Unavailable(e.to_string()))?;
    let len = match tokio::time::timeout(STREAM_TIMEOUT_MIN, read_frame_len(recv)).await {
        Ok(Ok(Some(len))) => len,
        Ok(Ok(None)) => return Ok(None),
        Ok(Err(e)) => return Err(Response::Invalid(format!("bad request frame: {e}"))),
        Err(_) => return Err(Response::Invalid("request frame not sent in time".into())),
    };
    let limit = limits.frame_bytes_max;
    if len > limit {
        // Final and said as such: a client whose value limit is ahead of this host's (during
        // a rollout of a new `max_value_bytes`) learns the host's limit instead of retrying.
        return Err(Response::TooLarge {
            what: LimitKind::Request,
            len,
            limit,
        });
    }
    slot.reserve(len)
        .map_err(|e| Response::Unavailable(e.to_string()))?;
    let frame = match tokio::time::timeout(transfer_timeout(len), read_payload(recv, len)).await {
        Ok(Ok(frame)) => frame,
        Ok(Err(e)) => return Err(Response::Invalid(format!("bad request frame: {e}"))),
        Err(_) => return Err(Response::Invalid("request frame not sent in time".into())),
    };
    Ok(Some((frame, slot)))
}

async fn serve_request<H: Handler>(
    send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    peer: PeerIdentity,
    handler: Arc<H>,
    limits: Arc<RequestLimits>,
) {
    match read_request(&mut recv, &peer, &limits).await {
        Ok(Some((frame, _slot))) => {
            // The slot is held until the reply is written and the stream ended: the request's
            // bytes live until then. One frame per stream: anything sent after it would sit in
            // quinn's buffers.
            end_while(recv, async move {
                let (resp, write) = match frame {
                    RequestFrame::Data(req) => {
                        let write = req.op.is_write();
                        (handler.request(peer, req).await, write)
                    }
                    RequestFrame::Admin(req) => (serve_admin(req, &peer, &*handler).await, false),
                };
                send_reply(send, &resp, write).await;
            })
            .await;
        }
        Ok(None) => {}
        Err(refusal) => {
            // Whatever else the client sends on this stream is discarded, not buffered.
            let _ = recv.stop(VarInt::from_u32(0));
            send_reply(send, &refusal, false).await;
        }
    }
}

/// Writes the reply `resp` (to a write when `write`) on `send` and finishes the stream.
async fn send_reply(mut send: quinn::SendStream, resp: &Response, write: bool) {
    if write && crate::fault::take_reply_drop() {
        // Test fault: the write was applied, its acknowledgement is lost.
        let _ = send.reset(VarInt::from_u32(0));
        return;
    }
    let frame = match encode(resp) {
        Ok(frame) => frame,
        Err(e) => return debug!(error = %e, "could not encode reply"),
    };
    match tokio::time::timeout(transfer_timeout(frame.len()), send.write_all(&frame)).await {
        Ok(Ok(())) => {
            let _ = send.finish();
        }
        Ok(Err(e)) => debug!(error = %e, "could not send reply"),
        Err(_) => {
            debug!("client did not take its reply in time; stream dropped");
            let _ = send.reset(VarInt::from_u32(0));
        }
    }
}

/// Answers a request addressed to this host. Replica changes, map changes, leadership
/// transfers and fault hooks change the cluster itself, so only a host's certificate may ask
/// for them (the operator's tools and
/// the test harness use one).
async fn serve_admin<H: Handler>(req: AdminRequest, peer: &PeerIdentity, handler: &H) -> Response {
    match req {
        AdminRequest::Status => handler.status().await,
        AdminRequest::ChangeReplicas { shard, changes } => match peer {
            PeerIdentity::Host(_) => handler.change_replicas(shard, changes).await,
            PeerIdentity::Client(_) => {
                warn!(%peer, shard, "refused a replica change from a client certificate");
                Response::Invalid("replica changes require a host certificate".into())
            }
        },
        // Reading the map (from the meta group, or the copy the host routes by) is for
        // every certificate: clients route by it.
        AdminRequest::Map(
            req @ (crate::wire::MapRequest::Read | crate::wire::MapRequest::Current),
        ) => handler.map(req).await,
        AdminRequest::Map(req) => match peer {
            PeerIdentity::Host(_) => handler.map(req).await,
            PeerIdentity::Client(_) => {
                warn!(%peer, "refused a cluster map change from a client certificate");
                Response::Invalid("cluster map changes require a host certificate".into())
            }
        },
        AdminRequest::TransferLeader { shard, to } => match peer {
            PeerIdentity::Host(_) => handler.transfer_leader(shard, to).await,
            PeerIdentity::Client(_) => {
                warn!(%peer, shard, "refused a leadership transfer from a client certificate");
                Response::Invalid("leadership transfers require a host certificate".into())
            }
        },
        AdminRequest::SplitShard { shard, split } => match peer {
            PeerIdentity::Host(_) => handler.split_shard(shard, split).await,
            PeerIdentity::Client(_) => {
                warn!(%peer, shard, "refused a shard split from a client certificate");
                Response::Invalid("shard splits require a host certificate".into())
            }
        },
        #[cfg(all(feature = "fault-injection", debug_assertions))]
        AdminRequest::Fault(spec) => match peer {
            PeerIdentity::Host(_) => {
                crate::fault::apply(&spec);
                Response::Ok
            }
            PeerIdentity::Client(_) => {
                warn!(%peer, "refused a fault hook from a client certificate");
                Response::Invalid("fault hooks require a host certificate".into())
            }
        },
    }
}

async fn serve_raft_stream<H: Handler>(
    conn: Connection,
    mut recv: quinn::RecvStream,
    from: HostId,
    handler: Arc<H>,
) {
    match read_frame::<_, StreamHeader>(&mut recv, RAFT_FRAME_BYTES_MAX).await {
        Ok(Some(StreamHeader::Raft)) => {}
        Ok(Some(StreamHeader::Snapshot {
            shard,
            incarnation,
            message,
            bytes,
        })) => {
            let path = handler.snapshot_path(from, shard);
            match snapshot_stream::receive(&mut recv, &path, bytes).await {
                Ok(()) if crate::fault::partitioned(from) => {
                    let _ = tokio::fs::remove_file(&path).await;
                }
                Ok(()) => {
                    info!(peer = from, shard, bytes, "snapshot received");
                    handler.snapshot(from, incarnation, shard, message, path);
                }
                Err(e) => {
                    warn!(peer = from, shard, error = %e, "snapshot transfer failed");
                    let _ = tokio::fs::remove_file(&path).await;
                }
            }
            return;
        }
        Ok(None) => return,
        Err(e) => {
            warn!(peer = from, error = %e, "bad stream header; closing connection");
            conn.close(VarInt::from_u32(CLOSE_PROTOCOL), e.to_string().as_bytes());
            return;
        }
    }
    info!(peer = from, "raft stream open");
    loop {
        match read_frame::<_, RaftBatch>(&mut recv, RAFT_FRAME_BYTES_MAX).await {
            Ok(Some(_)) if crate::fault::partitioned(from) => {}
            Ok(Some(batch)) => handler.raft(from, batch),
            Ok(None) => break,
            Err(TransportError::Io(e)) => {
                debug!(peer = from, error = %e, "raft stream ended");
                break;
            }
            Err(e) => {
                warn!(peer = from, error = %e, "malformed raft stream; closing connection");
                conn.close(VarInt::from_u32(CLOSE_PROTOCOL), e.to_string().as_bytes());
                break;
            }
        }
    }
    info!(peer = from, "raft stream closed");
}
