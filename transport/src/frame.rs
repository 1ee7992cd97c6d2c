//! Length-prefixed frames: a u32 big-endian length, then a postcard payload.
//!
//! The length is checked against a limit before any buffer is allocated, so a peer cannot make
//! us reserve memory by announcing a huge frame.

use serde::{de::DeserializeOwned, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::TransportError;

/// Upper bound on any frame anyone builds: a Raft batch holding one maximal message, the
/// largest frame of all (see [`crate::wire`] for how each kind of frame is sized). Every
/// reader passes the tighter limit of the frame it expects.
pub const FRAME_BYTES_MAX: usize = crate::wire::RAFT_FRAME_BYTES_MAX;

/// Serializes `msg` into a frame (length prefix included).
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, TransportError> {
    let mut buf = postcard::to_extend(msg, vec![0u8; 4])
        .map_err(|e| TransportError::Encode(e.to_string()))?;
    let len = buf.len() - 4;
    if len > FRAME_BYTES_MAX {
        return Err(TransportError::FrameTooLarge {
            len,
            limit: FRAME_BYTES_MAX,
        });
    }
    buf[..4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(buf)
}

/// Writes one frame.
pub async fn write_frame<W, T>(w: &mut W, msg: &T) -> Result<(), TransportError>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    let buf = encode(msg)?;
    w.write_all(&buf).await.map_err(TransportError::io)?;
    Ok(())
}

/// Reads one frame of at most `limit` bytes. Returns `Ok(None)` on a clean end of stream
/// before the first byte of a frame.
pub async fn read_frame<R, T>(r: &mut R, limit: usize) -> Result<Option<T>, TransportError>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    let Some(len) = read_frame_len(r).await? else {
        return Ok(None);
    };
    if len > limit {
        return Err(TransportError::FrameTooLarge { len, limit });
    }
    read_payload(r, len).await.map(Some)
}

/// Reads a frame's length prefix only, so a caller can decide whether to take `len` bytes
/// (and account for them) before any is buffered. `Ok(None)` on a clean end of stream.
pub async fn read_frame_len<R: AsyncRead + Unpin>(
    r: &mut R,
) -> Result<Option<usize>, TransportError> {
    let mut len_buf = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = r
            .read(&mut len_buf[got..])
            .await
            .map_err(TransportError::io)?;
        if n == 0 {
            if got == 0 {
                return Ok(None);
            }
            return Err(TransportError::Truncated);
        }
        got += n;
    }
    Ok(Some(u32::from_be_bytes(len_buf) as usize))
}

/// Reads and decodes the `len`-byte payload that follows a length prefix. The caller has
/// checked `len` against its limit.
pub async fn read_payload<R, T>(r: &mut R, len: usize) -> Result<T, TransportError>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            TransportError::Truncated
        } else {
            TransportError::io(e)
        }
    })?;
    decode(&payload)
}

/// Decodes a frame payload (without its length prefix).
pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, TransportError> {
    postcard::from_bytes(payload).map_err(|e| TransportError::Decode(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn round_trip() {
        let msg = (42u64, String::from("hello"), vec![1u8, 2, 3]);
        let buf = encode(&msg).unwrap();
        let mut r = &buf[..];
        let back: Option<(u64, String, Vec<u8>)> = read_frame(&mut r, 1024).await.unwrap();
        assert_eq!(back, Some(msg));
        let end: Option<(u64, String, Vec<u8>)> = read_frame(&mut r, 1024).await.unwrap();
        assert_eq!(end, None);
    }

    #[tokio::test]
    async fn oversize_frame_is_refused_before_allocation() {
        // Announce 4 GiB - 1; only the header is present. The reader must refuse on the length
        // alone (if it allocated first, this test would abort for lack of memory or hang).
        let buf = u32::MAX.to_be_bytes();
        let mut r = &buf[..];
        let err = read_frame::<_, Vec<u8>>(&mut r, 1024).await.unwrap_err();
        assert!(
            matches!(err, TransportError::FrameTooLarge { len, limit: 1024 } if len == u32::MAX as usize)
        );
    }

    #[tokio::test]
    async fn truncated_frame_is_an_error() {
        let mut buf = encode(&vec![7u8; 100]).unwrap();
        buf.truncate(50);
        let mut r = &buf[..];
        let err = read_frame::<_, Vec<u8>>(&mut r, 1024).await.unwrap_err();
        assert!(matches!(err, TransportError::Truncated));
        let mut r = &buf[..2];
        let err = read_frame::<_, Vec<u8>>(&mut r, 1024).await.unwrap_err();
        assert!(matches!(err, TransportError::Truncated));
    }

    #[tokio::test]
    async fn garbage_payload_is_a_decode_error() {
        let mut buf = 3u32.to_be_bytes().to_vec();
        buf.extend_from_slice(&[0xff, 0xff, 0xff]);
        let mut r = &buf[..];
        let err = read_frame::<_, (u64, String)>(&mut r, 1024)
            .await
            .unwrap_err();
        assert!(matches!(err, TransportError::Decode(_)));
    }
}
