//! One RESP connection: reads commands as they arrive, runs those of a pipeline
//! concurrently where that keeps the connection's order, and writes the replies in command
//! order, flushed once per batch of ready replies.
//!
//! Ordering rule: consecutive reads run together; consecutive writes to one shard run
//! together (each is in the shard's mailbox in command order, so its log keeps that order),
//! except with `[resp] forward = true`, where a write may be forwarded to the leader over a
//! connection of its own and so runs alone; a read after a write, a write after a read or to
//! another shard, and `WAIT` and `DBSIZE` (which run alone, in order) are held until
//! everything before them has answered, and no further command is read meanwhile. Local
//! commands (`PING`, `HELLO`, `CLUSTER ..`) are answered at once, in order, since they read
//! or change only the connection's state. At most [`IN_FLIGHT_MAX`] commands run at once.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::stream::FuturesOrdered;
use futures::{FutureExt, StreamExt};
use shardkv_actors::metrics::{metrics, RespLabels};
use shardkv_transport::slot::Slot;
use shardkv_transport::ShardId;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_util::codec::FramedRead;
use tracing::debug;

use super::codec::{Limits, RequestCodec, RequestError};
use super::command::{Class, Command};
use super::exec::{self, Outcome, Session, Shared};
use super::reply::{Protocol, Reply};

/// Most commands of one connection running at once; reading pauses past it.
pub const IN_FLIGHT_MAX: usize = 256;
/// Replies buffered before they are written even if more are ready.
const OUT_BYTES_MAX: usize = 1 << 20;
/// How long a client may leave its replies unread before the connection is closed: one
/// that never reads would otherwise hold its slot and its replies for good.
const WRITE_STALL_MAX: std::time::Duration = std::time::Duration::from_secs(60);
/// Replies are written in pieces of this size, each within [`WRITE_STALL_MAX`].
const WRITE_CHUNK_BYTES: usize = 64 << 10;

/// What the data commands in flight are, to decide whether the next may join them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Group {
    Reads,
    /// Writes to this shard (`None`: the map has no shard for the slot; joins nothing).
    Writes(Option<ShardId>),
    /// A command that runs alone (`WAIT`, `DBSIZE`).
    Barrier,
}

type Pending = Pin<Box<dyn Future<Output = (Outcome, Protocol)> + Send>>;

/// Serves one connection until the peer leaves, sends `QUIT` or breaks the protocol.
pub async fn serve<S>(stream: S, shared: Arc<Shared>, id: u64, limits: Limits)
where
    S: AsyncRead + AsyncWrite + Send,
{
    let (read_half, mut write_half) = tokio::io::split(stream);
    let mut reader = FramedRead::new(read_half, RequestCodec::new(limits));
    let mut conn = Connection {
        shared,
        session: Session::new(id),
        inflight: FuturesOrdered::new(),
        group: None,
        held: None,
        closing: false,
        out: BytesMut::new(),
    };
    loop {
        // Take every command already read and every reply already there, then write.
        loop {
            let mut progress = false;
            while conn.can_read() {
                match reader.next().now_or_never() {
                    Some(frame) => {
                        conn.on_frame(frame);
                        progress = true;
                    }
                    None => break,
                }
            }
            while let Some(Some((outcome, protocol))) = conn.inflight.next().now_or_never() {
                conn.on_outcome(outcome, protocol);
                progress = true;
                if conn.out.len() >= OUT_BYTES_MAX {
                    break;
                }
            }
            progress |= conn.release_held();
            if !progress || conn.out.len() >= OUT_BYTES_MAX {
                break;
            }
        }
        if !conn.out.is_empty() {
            // Bounded by progress, not by size: a client reading a large reply slowly is
            // served; one that stops reading is closed.
            for chunk in conn.out.chunks(WRITE_CHUNK_BYTES) {
                let written = async {
                    write_half.write_all(chunk).await?;
                    write_half.flush().await
                };
                match tokio::time::timeout(WRITE_STALL_MAX, written).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        debug!(client = id, error = %e, "RESP connection lost while writing");
                        return;
                    }
                    Err(_) => {
                        debug!(
                            client = id,
                            "RESP client read nothing for {WRITE_STALL_MAX:?}; closed"
                        );
                        return;
                    }
                }
            }
            conn.out.clear();
        }
        if conn.closing && conn.inflight.is_empty() && conn.held.is_none() {
            let _ = write_half.shutdown().await;
            return;
        }
        let can_read = conn.can_read();
        tokio::select! {
            Some((outcome, protocol)) = conn.inflight.next(), if !conn.inflight.is_empty() => {
                conn.on_outcome(outcome, protocol);
            }
            frame = reader.next(), if can_read => conn.on_frame(frame),
            // Unreachable: with nothing in flight, a held command was started above.
            else => return,
        }
    }
}

/// Whether a command of `class` may start while `group` is in flight (see the module docs);
/// `shard_of` maps a slot to its shard; `forwarding`: writes may be forwarded.
fn joins(
    class: Class,
    group: Option<Group>,
    forwarding: bool,
    shard_of: impl Fn(Slot) -> Option<ShardId>,
) -> bool {
    match (class, group) {
        (Class::Local, _) | (_, None) => true,
        (Class::Read(_), Some(Group::Reads)) => true,
        (Class::Write(slot), Some(Group::Writes(Some(shard)))) => {
            !forwarding && shard_of(slot) == Some(shard)
        }
        _ => false,
    }
}

/// Counts a reply to a command named `command` in the host's metrics.
fn count(command: &'static str, reply: &Reply) {
    let labels = RespLabels {
        command,
        result: reply.kind(),
    };
    metrics().resp_commands.get_or_create(&labels).inc();
}

struct Connection {
    shared: Arc<Shared>,
    session: Session,
    inflight: FuturesOrdered<Pending>,
    /// The data commands in flight, while any are.
    group: Option<Group>,
    /// A command waiting for everything in flight to answer.
    held: Option<Command>,
    /// No more commands are read; the connection closes once the replies are out.
    closing: bool,
    out: BytesMut,
}

impl Connection {
    fn can_read(&self) -> bool {
        !self.closing && self.held.is_none() && self.inflight.len() < IN_FLIGHT_MAX
    }

    /// One item of the reader: a command, the end of the stream, or a protocol error (the
    /// error is the last reply).
    fn on_frame(&mut self, frame: Option<Result<Vec<Bytes>, RequestError>>) {
        match frame {
            Some(Ok(args)) => match Command::parse(&args) {
                Ok(cmd) => self.admit(cmd),
                Err(reply) => {
                    count("unparsed", &reply);
                    self.push_ready(reply);
                }
            },
            Some(Err(RequestError::Protocol(text))) => {
                debug!(client = self.session.id, %text, "RESP protocol error; closing");
                self.push_ready(Reply::err(format!("Protocol error: {text}")));
                self.closing = true;
            }
            Some(Err(RequestError::Io(e))) => {
                debug!(client = self.session.id, error = %e, "RESP connection lost");
                self.closing = true;
            }
            None => self.closing = true,
        }
    }

    /// Starts `cmd`, or holds it until what is in flight has answered (see the module docs).
    fn admit(&mut self, cmd: Command) {
        let picture = self.shared.topology.picture();
        let forwarding = self.shared.forward.is_some();
        if joins(cmd.class(), self.group, forwarding, |slot| {
            picture.map.shard_of_slot(slot)
        }) {
            self.start(cmd);
        } else {
            self.held = Some(cmd);
        }
    }

    fn shard_of(&self, slot: Slot) -> Option<ShardId> {
        self.shared.topology.picture().map.shard_of_slot(slot)
    }

    fn start(&mut self, cmd: Command) {
        match cmd.class() {
            Class::Read(_) => self.group = Some(Group::Reads),
            Class::Write(slot) => self.group = Some(Group::Writes(self.shard_of(slot))),
            Class::Barrier => self.group = Some(Group::Barrier),
            Class::Local => {}
        }
        let quit = cmd == Command::Quit;
        let name = cmd.name();
        let running = exec::start(cmd, &mut self.session, &self.shared);
        let protocol = self.session.protocol;
        self.inflight.push_back(Box::pin(running.map(move |o| {
            count(name, &o.reply);
            (o, protocol)
        })));
        if quit {
            self.closing = true;
        }
    }

    fn push_ready(&mut self, reply: Reply) {
        let protocol = self.session.protocol;
        let outcome = Outcome { reply, wrote: None };
        self.inflight
            .push_back(Box::pin(std::future::ready((outcome, protocol))));
    }

    fn on_outcome(&mut self, outcome: Outcome, protocol: Protocol) {
        if let Some(shard) = outcome.wrote {
            self.session.last_write = Some(shard);
        }
        outcome.reply.encode(protocol, &mut self.out);
        if self.inflight.is_empty() {
            self.group = None;
        }
    }

    /// Starts the held command once nothing is in flight; whether it did.
    fn release_held(&mut self) -> bool {
        if !self.inflight.is_empty() {
            return false;
        }
        self.group = None;
        match self.held.take() {
            Some(cmd) => {
                self.start(cmd);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests;
