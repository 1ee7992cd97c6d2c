//! The RESP listener: accepts TCP connections, completes the TLS handshake when `[resp]
//! tls` is on, and serves each connection in its own task, at most [`CONNECTIONS_MAX`] at a
//! time.
//!
//! TLS is the cluster's own (see [`tls_acceptor`]): the host's certificate, TLS 1.3, and a
//! client certificate signed by the cluster CA required and verified. A client without one,
//! or with one from another CA, fails the handshake and is never read from.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use shardkv_actors::metrics::metrics;
use shardkv_transport::{TlsFiles, TransportError};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

use super::codec::Limits;
use super::connection;
use super::exec::Shared;

/// Most connections served at once; more are closed as they arrive.
pub const CONNECTIONS_MAX: usize = 10_000;
/// How long a client may take to complete its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most TLS handshakes under way at once; more connections are closed as they arrive. Far
/// below [`CONNECTIONS_MAX`], so peers without a certificate that open connections and stall
/// their handshakes cannot take the slots of clients that have one.
const HANDSHAKES_MAX: usize = 256;

/// The TLS acceptor of the RESP listener: the QUIC endpoint's server configuration (same CA,
/// same host certificate, client certificates required and verified), without ALPN, which
/// Redis clients do not send.
pub fn tls_acceptor(files: &TlsFiles) -> Result<TlsAcceptor, TransportError> {
    let mut config = shardkv_transport::tls::server_config(files)?;
    config.alpn_protocols.clear();
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Accepts connections on `listener` until the task is aborted.
pub async fn accept(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
    limits: Limits,
) {
    let ids = AtomicU64::new(1);
    let handshakes = Arc::new(tokio::sync::Semaphore::new(HANDSHAKES_MAX));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: pause rather than spin.
                warn!(error = %e, "RESP listener cannot accept; retrying shortly");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if shared.connections.load(Ordering::Relaxed) >= CONNECTIONS_MAX {
            warn!(%peer, limit = CONNECTIONS_MAX, "RESP connection refused: too many open");
            continue;
        }
        let handshaking = match tls {
            None => None,
            Some(_) => match handshakes.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    warn!(%peer, limit = HANDSHAKES_MAX, "RESP connection refused: too many TLS handshakes under way");
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let id = ids.fetch_add(1, Ordering::Relaxed);
        debug!(%peer, client = id, "RESP connection accepted");
        let guard = ConnectionCount::new(shared.clone());
        let tls = tls.clone();
        tokio::spawn(async move {
            let shared = guard.shared.clone();
            match tls {
                None => connection::serve(stream, shared, id, limits).await,
                Some(acceptor) => {
                    let stream = handshake(&acceptor, stream, peer).await;
                    drop(handshaking);
                    if let Some(stream) = stream {
                        connection::serve(stream, shared, id, limits).await;
                    }
                }
            }
            drop(guard);
        });
    }
}

async fn handshake(
    acceptor: &TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(e)) => {
            warn!(%peer, error = %e, "RESP TLS handshake refused");
            None
        }
        Err(_) => {
            debug!(%peer, "RESP TLS handshake timed out");
            None
        }
    }
}

/// Counts a connection as open for as long as it lives.
struct ConnectionCount {
    shared: Arc<Shared>,
}

impl ConnectionCount {
    fn new(shared: Arc<Shared>) -> Self {
        shared.connections.fetch_add(1, Ordering::Relaxed);
        metrics().resp_connections.inc();
        ConnectionCount { shared }
    }
}

impl Drop for ConnectionCount {
    fn drop(&mut self) {
        self.shared.connections.fetch_sub(1, Ordering::Relaxed);
        metrics().resp_connections.dec();
    }
}
