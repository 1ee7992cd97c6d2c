//! [`RequestCodec`]: reads commands off a RESP connection, within bounds.
//!
//! A command is an array of bulk strings (what every Redis client sends). The
//! `redis-protocol` crate decodes the frame; before it sees a byte, this codec checks the
//! frame's headers as they arrive: the first byte is `*`, the declared element count and each
//! declared bulk length are within [`Limits`], every element is a bulk string (so nothing
//! nests: the crate's parser recurses on nested arrays, and a deep nesting would exhaust the
//! stack), and the whole command fits the byte budget. A huge declared length is refused
//! from its header, before any memory is set aside for it, and the buffer never holds more
//! than one command's budget plus what the peer sent past it. The check resumes where it
//! stopped, so a large command arriving in pieces is scanned once.
//!
//! Anything else is a [`RequestError::Protocol`]: the connection answers it with
//! `-ERR Protocol error: ...` and closes, as Redis does.

use bytes::{Buf, Bytes, BytesMut};
use redis_protocol::resp3::types::BytesFrame;
use tokio_util::codec::Decoder;

/// Bounds on one command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most elements (command name and arguments).
    pub args_max: usize,
    /// Longest bulk string.
    pub bulk_bytes_max: usize,
    /// Most bytes of the whole encoded command.
    pub command_bytes_max: usize,
}

/// Most elements of one command: far above any command's real need (an MSET is refused past
/// the update key limit anyway), low enough to bound the bookkeeping.
pub const ARGS_MAX: usize = 1024 * 1024;
/// What a command may carry beyond its values (names, keys, options and the framing).
pub const COMMAND_SLACK_BYTES: usize = 64 * 1024;
/// Longest count or length line (`*1048576\r\n` is 10 bytes).
const HEADER_BYTES_MAX: usize = 32;

impl Limits {
    /// The limits for a cluster whose values are at most `value_bytes_max` bytes: a bulk
    /// string of a value and some slack, a command of two values (`SET` with a key at the
    /// limit, a few values of an `MSET`) and some slack.
    pub fn for_values(value_bytes_max: usize) -> Limits {
        Limits {
            args_max: ARGS_MAX,
            bulk_bytes_max: value_bytes_max + COMMAND_SLACK_BYTES,
            command_bytes_max: 2 * value_bytes_max + COMMAND_SLACK_BYTES,
        }
    }
}

/// Why a command could not be read.
#[derive(thiserror::Error, Debug)]
pub enum RequestError {
    /// The bytes are not a command within the limits; the text follows `Protocol error: `.
    #[error("Protocol error: {0}")]
    Protocol(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// How far the headers of the command at the front of the buffer have been checked.
#[derive(Debug, Default, Clone, Copy)]
struct Scan {
    /// Bytes checked so far (the start of the next header to check).
    pos: usize,
    /// Elements still to check; `None` before the count line is read.
    left: Option<usize>,
}

/// What the front of the buffer holds, once checked.
#[derive(Debug, Clone, Copy)]
enum Checked {
    /// A whole command of this many bytes.
    Command(usize),
    /// An empty array of this many bytes, to skip.
    Empty(usize),
}

/// A tokio decoder of commands: each item is the command's elements (the name first).
#[derive(Debug)]
pub struct RequestCodec {
    limits: Limits,
    scan: Scan,
}

impl RequestCodec {
    /// A codec enforcing `limits`.
    pub fn new(limits: Limits) -> Self {
        RequestCodec {
            limits,
            scan: Scan::default(),
        }
    }

    /// Checks the headers in `buf` from where the last call stopped: `Ok(None)` if more
    /// bytes are needed.
    fn check(&mut self, buf: &[u8]) -> Result<Option<Checked>, RequestError> {
        loop {
            let Some(left) = self.scan.left else {
                let Some((count, next)) = header(buf, self.scan.pos, b'*')? else {
                    return Ok(None);
                };
                if count > self.limits.args_max as i64 {
                    return Err(protocol(format!(
                        "invalid multibulk length {count} (at most {})",
                        self.limits.args_max
                    )));
                }
                if count <= 0 {
                    // `*0` and `*-1` are no command; Redis skips them.
                    return Ok(Some(Checked::Empty(next)));
                }
                self.scan.left = Some(usize::try_from(count).unwrap_or(0));
                self.scan.pos = next;
                continue;
            };
            if left == 0 {
                return Ok(Some(Checked::Command(self.scan.pos)));
            }
            let Some((len, next)) = header(buf, self.scan.pos, b'$')? else {
                return Ok(None);
            };
            let len = usize::try_from(len)
                .ok()
                .filter(|&l| l <= self.limits.bulk_bytes_max)
                .ok_or_else(|| {
                    protocol(format!(
                        "invalid bulk length {len} (at most {})",
                        self.limits.bulk_bytes_max
                    ))
                })?;
            let end = next + len + 2;
            if end > self.limits.command_bytes_max {
                return Err(protocol(format!(
                    "a command of more than {} bytes",
                    self.limits.command_bytes_max
                )));
            }
            if buf.len() < end {
                return Ok(None);
            }
            if &buf[end - 2..end] != b"\r\n" {
                return Err(protocol("a bulk string not ended by CRLF"));
            }
            self.scan.pos = end;
            self.scan.left = Some(left - 1);
        }
    }
}

impl Decoder for RequestCodec {
    type Item = Vec<Bytes>;
    type Error = RequestError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Vec<Bytes>>, RequestError> {
        loop {
            if src.is_empty() {
                return Ok(None);
            }
            let checked = self.check(src)?;
            let len = match checked {
                None => return Ok(None),
                Some(Checked::Empty(len)) => {
                    self.scan = Scan::default();
                    src.advance(len);
                    continue;
                }
                Some(Checked::Command(len)) => len,
            };
            self.scan = Scan::default();
            let mut frame = src.split_to(len);
            let args = match redis_protocol::resp3::decode::complete::decode_bytes_mut(&mut frame) {
                Ok(Some((frame, _, _))) => frame,
                Ok(None) => return Err(protocol("an incomplete command")),
                Err(e) => return Err(protocol(e.details().to_string())),
            };
            match args {
                BytesFrame::Array { data, .. } => {
                    return data
                        .into_iter()
                        .map(|arg| match arg {
                            BytesFrame::BlobString { data, .. } => Ok(data),
                            _ => Err(protocol("expected a bulk string")),
                        })
                        .collect::<Result<Vec<_>, _>>()
                        .map(Some)
                }
                _ => return Err(protocol("expected an array of bulk strings")),
            }
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Vec<Bytes>>, RequestError> {
        match self.decode(src)? {
            Some(args) => Ok(Some(args)),
            None if src.is_empty() => Ok(None),
            // A peer that closes mid-command sent nothing to answer.
            None => {
                src.advance(src.len());
                Ok(None)
            }
        }
    }
}

fn protocol(text: impl Into<String>) -> RequestError {
    RequestError::Protocol(text.into())
}

/// Reads the header at `buf[pos..]`: the `kind` byte, a decimal, CRLF. `Ok(Some((n, next)))`
/// with the position after it, `Ok(None)` if it is not all there yet.
fn header(buf: &[u8], pos: usize, kind: u8) -> Result<Option<(i64, usize)>, RequestError> {
    let Some(&first) = buf.get(pos) else {
        return Ok(None);
    };
    if first != kind {
        return Err(protocol(if pos == 0 {
            format!(
                "expected '*', got '{}' (send commands as arrays of bulk strings)",
                char::from(first).escape_default()
            )
        } else {
            format!("expected '$', got '{}'", char::from(first).escape_default())
        }));
    }
    let rest = &buf[pos + 1..];
    // The digits and their CR LF must fit in HEADER_BYTES_MAX: once that many bytes are there
    // without a whole line, it is too long (waiting for more would let the buffer grow).
    let window = &rest[..rest.len().min(HEADER_BYTES_MAX)];
    let line_end = window
        .iter()
        .position(|&b| b == b'\r')
        .and_then(|cr| window.get(cr + 1).map(|&lf| (cr, lf)));
    let Some((cr, lf)) = line_end else {
        if window.len() == HEADER_BYTES_MAX {
            return Err(protocol("a length line too long"));
        }
        return Ok(None);
    };
    let number = std::str::from_utf8(&window[..cr])
        .ok()
        .filter(|_| lf == b'\n')
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or_else(|| {
            protocol(if kind == b'*' {
                "invalid multibulk length"
            } else {
                "invalid bulk length"
            })
        })?;
    Ok(Some((number, pos + 1 + cr + 2)))
}

#[cfg(test)]
mod tests;
