//! [`Reply`]: what a command answers, independent of the protocol version, and its encoding
//! as RESP2 or RESP3 (through the `redis-protocol` crate's encoders).
//!
//! Commands build replies once; the connection encodes each in the protocol the connection
//! spoke when the command was read (`HELLO 3` switches it, and its own reply is already
//! RESP3). RESP2 has no maps or nulls of its own: a map goes out as a flat array of keys and
//! values, a null as the null bulk string, as Redis does.

use bytes::{Bytes, BytesMut};
use redis_protocol::resp2::types::BytesFrame as Frame2;
use redis_protocol::resp3::types::{BytesFrame as Frame3, FrameMap};

/// The protocol a connection speaks; `HELLO 2|3` chooses it, RESP2 until then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Resp2,
    Resp3,
}

impl Protocol {
    /// The number `HELLO` names and reports.
    pub fn version(self) -> i64 {
        match self {
            Protocol::Resp2 => 2,
            Protocol::Resp3 => 3,
        }
    }
}

/// One reply, as a command produced it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`-style status.
    Status(String),
    /// An error line: its first word is the code (`ERR`, `MOVED`, `CROSSSLOT`, ...).
    Error(String),
    Integer(i64),
    Bulk(Bytes),
    /// No value (a missing key).
    Null,
    Array(Vec<Reply>),
    /// Keys and values in order; a flat array in RESP2.
    Map(Vec<(Reply, Reply)>),
}

impl Reply {
    /// `+OK`.
    pub fn ok() -> Reply {
        Reply::Status("OK".into())
    }

    /// `-ERR <message>`.
    pub fn err(message: impl std::fmt::Display) -> Reply {
        Reply::Error(format!("ERR {message}"))
    }

    /// A bulk string of text.
    pub fn text(text: impl Into<String>) -> Reply {
        Reply::Bulk(Bytes::from(text.into()))
    }

    /// A bulk string of a value, or null.
    pub fn value(value: Option<Vec<u8>>) -> Reply {
        value.map_or(Reply::Null, |v| Reply::Bulk(Bytes::from(v)))
    }

    /// Whether this is an error reply.
    pub fn is_error(&self) -> bool {
        matches!(self, Reply::Error(_))
    }

    /// What the reply was, for metrics: `ok`, or the error's Redis code in lowercase for the
    /// ones clients act on (`moved`, `tryagain`, `crossslot`, `clusterdown`), else `error`.
    pub fn kind(&self) -> &'static str {
        let Reply::Error(text) = self else {
            return "ok";
        };
        let code = text.split(' ').next().unwrap_or_default();
        match code {
            "MOVED" => "moved",
            "TRYAGAIN" => "tryagain",
            "CROSSSLOT" => "crossslot",
            "CLUSTERDOWN" => "clusterdown",
            _ => "error",
        }
    }

    /// Appends the encoding of this reply in `protocol` to `out`.
    pub fn encode(&self, protocol: Protocol, out: &mut BytesMut) {
        // The encoders fail only on a frame they cannot represent (an attribute on a RESP2
        // frame, a streaming frame); [`Reply`] builds neither.
        let result = match protocol {
            Protocol::Resp2 => {
                redis_protocol::resp2::encode::extend_encode(out, &self.to_resp2(), false)
            }
            Protocol::Resp3 => {
                redis_protocol::resp3::encode::complete::extend_encode(out, &self.to_resp3(), false)
            }
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "a reply could not be encoded");
            let fallback = Reply::err("internal: a reply could not be encoded");
            // An error line always encodes.
            let _ = redis_protocol::resp2::encode::extend_encode(out, &fallback.to_resp2(), false);
        }
    }

    fn to_resp2(&self) -> Frame2 {
        match self {
            Reply::Status(s) => Frame2::SimpleString(Bytes::from(one_line(s))),
            Reply::Error(e) => Frame2::Error(one_line(e).into()),
            Reply::Integer(n) => Frame2::Integer(*n),
            Reply::Bulk(b) => Frame2::BulkString(b.clone()),
            Reply::Null => Frame2::Null,
            Reply::Array(items) => Frame2::Array(items.iter().map(Reply::to_resp2).collect()),
            Reply::Map(pairs) => Frame2::Array(
                pairs
                    .iter()
                    .flat_map(|(k, v)| [k.to_resp2(), v.to_resp2()])
                    .collect(),
            ),
        }
    }

    fn to_resp3(&self) -> Frame3 {
        match self {
            Reply::Status(s) => Frame3::SimpleString {
                data: Bytes::from(one_line(s)),
                attributes: None,
            },
            Reply::Error(e) => Frame3::SimpleError {
                data: one_line(e).into(),
                attributes: None,
            },
            Reply::Integer(n) => Frame3::Number {
                data: *n,
                attributes: None,
            },
            Reply::Bulk(b) => Frame3::BlobString {
                data: b.clone(),
                attributes: None,
            },
            Reply::Null => Frame3::Null,
            Reply::Array(items) => Frame3::Array {
                data: items.iter().map(Reply::to_resp3).collect(),
                attributes: None,
            },
            Reply::Map(pairs) => {
                let mut data = FrameMap::with_capacity(pairs.len());
                for (k, v) in pairs {
                    data.insert(k.to_resp3(), v.to_resp3());
                }
                Frame3::Map {
                    data,
                    attributes: None,
                }
            }
        }
    }
}

/// `text` fit for a status or error line, which ends at the first CR or LF: each becomes a
/// space (as Redis does), so text a client sent (an unknown command's name) cannot end the
/// line early and pass for replies of its own.
fn one_line(text: &str) -> String {
    text.replace(['\r', '\n'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(reply: &Reply, protocol: Protocol) -> String {
        let mut out = BytesMut::new();
        reply.encode(protocol, &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn scalars_encode_as_redis_sends_them() {
        for p in [Protocol::Resp2, Protocol::Resp3] {
            assert_eq!(encoded(&Reply::ok(), p), "+OK\r\n");
            assert_eq!(
                encoded(&Reply::err("no such thing"), p),
                "-ERR no such thing\r\n"
            );
            assert_eq!(encoded(&Reply::Integer(-7), p), ":-7\r\n");
            assert_eq!(encoded(&Reply::text("hi"), p), "$2\r\nhi\r\n");
        }
    }

    #[test]
    fn null_is_the_null_bulk_string_in_resp2_and_null_in_resp3() {
        assert_eq!(encoded(&Reply::Null, Protocol::Resp2), "$-1\r\n");
        assert_eq!(encoded(&Reply::Null, Protocol::Resp3), "_\r\n");
        assert_eq!(
            encoded(&Reply::Array(vec![Reply::Null]), Protocol::Resp2),
            "*1\r\n$-1\r\n"
        );
    }

    #[test]
    fn maps_are_flat_arrays_in_resp2_and_keep_their_order_in_resp3() {
        let map = Reply::Map(vec![
            (Reply::text("server"), Reply::text("redis")),
            (Reply::text("proto"), Reply::Integer(3)),
        ]);
        assert_eq!(
            encoded(&map, Protocol::Resp2),
            "*4\r\n$6\r\nserver\r\n$5\r\nredis\r\n$5\r\nproto\r\n:3\r\n"
        );
        assert_eq!(
            encoded(&map, Protocol::Resp3),
            "%2\r\n$6\r\nserver\r\n$5\r\nredis\r\n$5\r\nproto\r\n:3\r\n"
        );
    }

    #[test]
    fn binary_values_pass_unchanged() {
        let value = Reply::value(Some(vec![0, 255, b'\r', b'\n']));
        let mut out = BytesMut::new();
        value.encode(Protocol::Resp2, &mut out);
        assert_eq!(&out[..], b"$4\r\n\x00\xff\r\n\r\n");
    }

    #[test]
    fn a_line_break_in_status_or_error_text_cannot_forge_a_reply() {
        let forged = Reply::err("unknown command 'x\r\n+OK\r\n'");
        for p in [Protocol::Resp2, Protocol::Resp3] {
            assert_eq!(encoded(&forged, p), "-ERR unknown command 'x  +OK  '\r\n");
            let status = Reply::Status("a\nb".into());
            assert_eq!(encoded(&status, p), "+a b\r\n");
        }
    }

    #[test]
    fn the_kind_of_a_reply_names_the_errors_clients_act_on() {
        assert_eq!(Reply::ok().kind(), "ok");
        assert_eq!(Reply::Null.kind(), "ok");
        assert_eq!(
            Reply::Error("MOVED 7 127.0.0.1:6102".into()).kind(),
            "moved"
        );
        assert_eq!(Reply::Error("TRYAGAIN shard 2".into()).kind(), "tryagain");
        assert_eq!(Reply::Error("CROSSSLOT keys".into()).kind(), "crossslot");
        assert_eq!(
            Reply::Error("CLUSTERDOWN slot".into()).kind(),
            "clusterdown"
        );
        assert_eq!(Reply::err("syntax error").kind(), "error");
    }
}
