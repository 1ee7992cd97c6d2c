//! Unit tests of the command decoder: well-formed commands, pipelines and pieces, and every
//! kind of malformed input refused from its header.

use super::*;

fn limits() -> Limits {
    Limits {
        args_max: 8,
        bulk_bytes_max: 16,
        command_bytes_max: 64,
    }
}

fn decode_all(input: &[u8]) -> Result<Vec<Vec<Bytes>>, RequestError> {
    let mut codec = RequestCodec::new(limits());
    let mut buf = BytesMut::from(input);
    let mut out = Vec::new();
    while let Some(args) = codec.decode(&mut buf)? {
        out.push(args);
    }
    Ok(out)
}

#[track_caller]
fn refused(input: &[u8], reason: &str) {
    match decode_all(input) {
        Err(RequestError::Protocol(text)) => {
            assert!(text.contains(reason), "{text:?} does not say {reason:?}")
        }
        other => panic!("expected a protocol error saying {reason:?}, got {other:?}"),
    }
}

#[test]
fn a_pipeline_decodes_into_commands_in_order() {
    let got = decode_all(b"*2\r\n$3\r\nGET\r\n$1\r\na\r\n*1\r\n$4\r\nPING\r\n").expect("ok");
    assert_eq!(
        got,
        vec![
            vec![Bytes::from("GET"), Bytes::from("a")],
            vec![Bytes::from("PING")]
        ]
    );
}

#[test]
fn a_command_arriving_byte_by_byte_decodes_once_complete() {
    let input = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$4\r\nv\r\n\0\r\n";
    let mut codec = RequestCodec::new(limits());
    let mut buf = BytesMut::new();
    for (i, b) in input.iter().enumerate() {
        buf.extend_from_slice(&[*b]);
        let got = codec.decode(&mut buf).expect("no error");
        if i + 1 < input.len() {
            assert!(
                got.is_none(),
                "complete after {} of {} bytes",
                i + 1,
                input.len()
            );
        } else {
            assert_eq!(got.expect("complete")[2], Bytes::from(&b"v\r\n\0"[..]));
        }
    }
    assert!(buf.is_empty());
}

#[test]
fn empty_arrays_are_skipped() {
    let got = decode_all(b"*0\r\n*-1\r\n*1\r\n$4\r\nPING\r\n").expect("ok");
    assert_eq!(got, vec![vec![Bytes::from("PING")]]);
}

#[test]
fn huge_declared_lengths_are_refused_from_the_header() {
    refused(b"*99999999999\r\n", "invalid multibulk length");
    refused(b"*9\r\n", "invalid multibulk length");
    refused(b"*1\r\n$17\r\n", "invalid bulk length 17");
    refused(b"*1\r\n$9223372036854775807\r\n", "invalid bulk length");
    refused(b"*1\r\n$-1\r\n", "invalid bulk length");
    // Within each bulk limit but over the command's budget.
    refused(
        b"*5\r\n$16\r\n0123456789abcdef\r\n$16\r\n0123456789abcdef\r\n$16\r\n",
        "a command of more than 64 bytes",
    );
}

#[test]
fn nesting_and_other_frame_types_are_refused() {
    refused(b"*1\r\n*1\r\n*1\r\n*1\r\n", "expected '$', got '*'");
    refused(b"*1\r\n:1\r\n", "expected '$', got ':'");
    refused(b"%1\r\n", "expected '*', got '%'");
    refused(b"PING\r\n", "expected '*', got 'P'");
    refused(b"*1\r\n$?\r\n", "invalid bulk length");
}

#[test]
fn malformed_lengths_and_terminators_are_refused() {
    refused(b"*x\r\n", "invalid multibulk length");
    refused(b"*1\n$4\r\n", "invalid multibulk length");
    refused(b"*1\r\n$4\r\nPINGxx", "not ended by CRLF");
    refused(b"*11111111111111111111111111111111111111", "too long");
    // A CR as the last byte the header may have, and no LF: too long, not "wait for more".
    refused(b"*AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\r", "too long");
    refused(b"*1\r\n$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\r", "too long");
}

#[test]
fn a_nesting_bomb_is_refused_without_recursion() {
    let bomb = b"*1\r\n".repeat(1_000_000);
    refused(&bomb, "expected '$', got '*'");
}

#[test]
fn a_peer_closing_mid_command_ends_the_stream() {
    let mut codec = RequestCodec::new(limits());
    let mut buf = BytesMut::from(&b"*2\r\n$3\r\nGET\r\n"[..]);
    assert!(codec.decode_eof(&mut buf).expect("no error").is_none());
}
