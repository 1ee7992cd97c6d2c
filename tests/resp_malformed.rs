//! Malformed RESP over raw TCP: huge declared lengths, negative and garbage lengths, a huge
//! element count, a nesting bomb, inline garbage, a command cut off mid-way and many
//! connections each parked mid-command. Each gets an error reply and/or a closed
//! connection, never a crash; the host's memory stays bounded (nothing is allocated for a
//! length that was only declared) and it then serves a normal client.

mod common;

use std::io::Write;
use std::time::Duration;

use common::resp::send_raw;
use common::Cluster;

/// How much the host's resident memory may grow over the whole drill.
const RSS_GROWTH_MAX_BYTES: u64 = 200 << 20;

/// How long to wait for the host to answer or close.
const WAIT: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_resp_gets_an_error_and_a_close_never_a_crash_or_unbounded_memory() {
    let (mut cluster, client, _) = Cluster::started_with_resp(1, 1, 1, false, false).await;
    let addr = cluster.resp_addr(1);
    let pid = cluster.pid(1);
    let rss_before = common::proc_status_bytes(pid, "VmRSS");

    let nesting_bomb = "*1\r\n".repeat(100_000);
    let refused: Vec<(&str, Vec<u8>)> = vec![
        (
            "a bulk length of 2^40",
            b"*1\r\n$1099511627776\r\n".to_vec(),
        ),
        (
            "a bulk length of 2^63-1",
            b"*2\r\n$3\r\nGET\r\n$9223372036854775807\r\n".to_vec(),
        ),
        ("a negative bulk length", b"*1\r\n$-5\r\n".to_vec()),
        (
            "a null bulk string as an argument",
            b"*2\r\n$3\r\nGET\r\n$-1\r\n".to_vec(),
        ),
        ("a garbage bulk length", b"*1\r\n$abc\r\n".to_vec()),
        ("an element count of 2^31", b"*2147483648\r\n".to_vec()),
        (
            "an element count of 2^64",
            b"*18446744073709551616\r\n".to_vec(),
        ),
        ("a garbage element count", b"*x1\r\n".to_vec()),
        ("a nesting bomb", nesting_bomb.into_bytes()),
        (
            "an integer as an argument",
            b"*2\r\n$3\r\nGET\r\n:1\r\n".to_vec(),
        ),
        ("inline garbage", b"hello there\r\n".to_vec()),
        (
            "binary garbage",
            (0u8..=255).cycle().take(64 << 10).collect(),
        ),
        (
            "a length line that never ends",
            std::iter::once(b'*')
                .chain(std::iter::repeat_n(b'9', 1 << 20))
                .collect(),
        ),
        (
            "a valid PING, then garbage",
            b"*1\r\n$4\r\nPING\r\n*1\r\n$zz\r\n".to_vec(),
        ),
    ];
    for (what, bytes) in &refused {
        let got = send_raw(addr, bytes, None, WAIT);
        let text = String::from_utf8_lossy(&got.reply);
        eprintln!("{what}: {text:?}, closed: {}", got.closed);
        assert!(
            got.closed,
            "{what}: the host closes the connection (it answered {text:?})"
        );
        // Past what the host reads before it closes, the kernel may answer the unread rest
        // with a reset that discards the error reply in flight; a short input always sees it.
        if bytes.len() < 4096 {
            assert!(
                text.contains("-ERR Protocol error"),
                "{what}: a protocol error reply: {text:?}"
            );
        } else {
            assert!(
                text.is_empty() || text.contains("-ERR Protocol error"),
                "{what}: a protocol error reply if any: {text:?}"
            );
        }
        if what.starts_with("a valid PING") {
            assert!(text.starts_with("+PONG\r\n-ERR"), "{what}: {text:?}");
        }
        cluster.check_alive();
    }

    // A command of 100,000 one-byte arguments is within bounds: an error reply, no close.
    let mut many = b"*100000\r\n$1\r\nx\r\n".to_vec();
    many.extend(b"$1\r\na\r\n".repeat(100_000 - 1));
    many.extend(b"*1\r\n$4\r\nPING\r\n");
    let got = send_raw(addr, &many, Some(b"+PONG\r\n"), WAIT);
    let text = String::from_utf8_lossy(&got.reply);
    assert!(
        text.starts_with("-ERR unknown command 'x'") && text.ends_with("+PONG\r\n"),
        "a wide command is refused by name and the connection goes on: {text:?}"
    );

    // A command cut off mid-way by the client.
    for cut in [
        &b"*3\r\n$3\r\nSET\r\n$1\r\nk"[..],
        b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$100\r\nabc",
        b"*2\r\n$3\r\nGET",
    ] {
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        s.write_all(cut).expect("send a partial command");
        drop(s);
    }

    // Many connections, each parked inside a value of the largest length the host accepts
    // (it must not set the declared length aside for each before the bytes come).
    let declared = 1 << 20;
    let mut parked = Vec::new();
    for i in 0..200 {
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        let key = format!("parked-{i}");
        write!(
            s,
            "*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${declared}\r\nstart",
            key.len()
        )
        .expect("send a command's start");
        parked.push(s);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_parked = common::proc_status_bytes(pid, "VmRSS");

    // The host still serves a normal client while those wait, and after they go.
    assert_eq!(cluster.redis_cli_text(1, &["set", "after", "drill"]), "OK");
    drop(parked);
    assert_eq!(cluster.redis_cli_text(1, &["get", "after"]), "drill");
    assert_eq!(
        client.get(b"parked-0").await.expect("client get"),
        None,
        "a command never finished is never applied"
    );
    cluster.check_alive();

    let peak = common::proc_status_bytes(pid, "VmHWM");
    eprintln!(
        "VmRSS before {} MiB, with 200 parked connections {} MiB; VmHWM {} MiB",
        rss_before >> 20,
        rss_parked >> 20,
        peak >> 20
    );
    assert!(
        peak < rss_before + RSS_GROWTH_MAX_BYTES,
        "the host's peak memory {} MiB stays within {} MiB of its {} MiB before the drill",
        peak >> 20,
        RSS_GROWTH_MAX_BYTES >> 20,
        rss_before >> 20
    );
}
