//! Snapshots between hosts, on a unidirectional stream of their own: a
//! [`StreamHeader::Snapshot`] announcing the size, then [`SnapshotFrame`] chunks, so neither
//! side ever holds a whole snapshot in one frame.

use std::path::Path;

use quinn::Connection;

use crate::endpoint::explain;
use crate::error::TransportError;
use crate::frame::{read_frame, write_frame};
use crate::wire::{ShardId, SnapshotFrame, StreamHeader, SNAPSHOT_CHUNK_BYTES};

/// Streams the snapshot file at `path` for `MsgSnapshot` `message` of `shard` on a stream of
/// its own, in chunks, so neither side ever holds it in one frame.
pub async fn send(
    conn: &Connection,
    shard: ShardId,
    incarnation: u64,
    message: Vec<u8>,
    path: &Path,
) -> Result<u64, TransportError> {
    use tokio::io::AsyncReadExt;
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(|e| TransportError::Io(format!("{}: {e}", path.display())))?;
    let bytes = file.metadata().await.map_err(TransportError::io)?.len();
    let mut stream = conn.open_uni().await.map_err(|e| explain(conn, e))?;
    write_frame(
        &mut stream,
        &StreamHeader::Snapshot {
            shard,
            incarnation,
            message,
            bytes,
        },
    )
    .await?;
    let mut buf = vec![0u8; SNAPSHOT_CHUNK_BYTES];
    loop {
        let n = file.read(&mut buf).await.map_err(TransportError::io)?;
        if n == 0 {
            break;
        }
        write_frame(&mut stream, &SnapshotFrame::Chunk(buf[..n].to_vec())).await?;
    }
    write_frame(&mut stream, &SnapshotFrame::End).await?;
    stream.finish().map_err(TransportError::io)?;
    // Wait until the peer has acknowledged everything (or the stream failed) before reporting.
    let _ = stream.stopped().await;
    Ok(bytes)
}

/// Receives the snapshot announced as `bytes` long into a new file at `path`, synced before
/// it is reported whole.
pub(crate) async fn receive(
    recv: &mut quinn::RecvStream,
    path: &Path,
    bytes: u64,
) -> Result<(), TransportError> {
    use tokio::io::AsyncWriteExt;
    let mut file = tokio::fs::File::create(path)
        .await
        .map_err(|e| TransportError::Io(format!("{}: {e}", path.display())))?;
    let mut got = 0u64;
    loop {
        match read_frame::<_, SnapshotFrame>(recv, SNAPSHOT_CHUNK_BYTES + 64).await? {
            Some(SnapshotFrame::Chunk(data)) => {
                got += data.len() as u64;
                if got > bytes {
                    return Err(TransportError::Decode(format!(
                        "snapshot larger than announced ({bytes} bytes)"
                    )));
                }
                file.write_all(&data).await.map_err(TransportError::io)?;
            }
            Some(SnapshotFrame::End) => break,
            None => return Err(TransportError::Truncated),
        }
    }
    if got != bytes {
        return Err(TransportError::Decode(format!(
            "snapshot has {got} bytes, {bytes} announced"
        )));
    }
    file.sync_all().await.map_err(TransportError::io)?;
    Ok(())
}
