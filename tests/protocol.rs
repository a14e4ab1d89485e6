//! Bad frames: each gets its exact close code, the server then closes the
//! connection, and a well-behaved client on the same server is unaffected.

mod common;

use std::io::Write;

use common::{client, expect_close, frame, masked, raw_ws, Running, Server};
use tungstenite::Message;

fn close_code_for(server: &impl Running, bytes: &[u8]) -> u16 {
    let mut s = raw_ws(server.addr(), "/echo");
    s.write_all(bytes).unwrap();
    expect_close(&mut s)
}

#[test]
fn each_protocol_violation_gets_its_close_code() {
    let server = Server::start(&[]);
    let mut bystander = client(&server.url("/echo"));
    let k = Some([1, 2, 3, 4]);
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("unmasked frame", frame(true, 0, 1, b"hello", None), 1002),
        ("RSV1 without extension", frame(true, 4, 1, b"x", k), 1002),
        ("RSV2", frame(true, 2, 2, b"x", k), 1002),
        ("RSV3", frame(true, 1, 1, b"x", k), 1002),
        ("reserved data opcode 3", masked(true, 3, b""), 1002),
        ("reserved control opcode 0xB", masked(true, 0xB, b""), 1002),
        ("ping over 125 bytes", masked(true, 9, &[0; 126]), 1002),
        ("fragmented ping", masked(false, 9, b"p"), 1002),
        (
            "continuation without a message",
            masked(true, 0, b"c"),
            1002,
        ),
        (
            "new message inside a fragmented one",
            [masked(false, 1, b"a"), masked(true, 2, b"b")].concat(),
            1002,
        ),
        ("close with 1-byte payload", masked(true, 8, &[3]), 1002),
        (
            "close code 1005",
            masked(true, 8, &1005u16.to_be_bytes()),
            1002,
        ),
        (
            "close code 999",
            masked(true, 8, &999u16.to_be_bytes()),
            1002,
        ),
        (
            "close code 2000",
            masked(true, 8, &2000u16.to_be_bytes()),
            1002,
        ),
        ("close code 0", masked(true, 8, &0u16.to_be_bytes()), 1002),
        (
            "close code 1004",
            masked(true, 8, &1004u16.to_be_bytes()),
            1002,
        ),
        (
            "close code 1006",
            masked(true, 8, &1006u16.to_be_bytes()),
            1002,
        ),
        (
            "close code 1015",
            masked(true, 8, &1015u16.to_be_bytes()),
            1002,
        ),
        (
            "close code 5000",
            masked(true, 8, &5000u16.to_be_bytes()),
            1002,
        ),
        (
            "close reason not UTF-8",
            masked(true, 8, &[0x03, 0xE8, 0xC3, 0x28]),
            1007,
        ),
        ("text not UTF-8", masked(true, 1, b"abc\xff"), 1007),
        ("surrogate in text", masked(true, 1, b"\xed\xa0\x80"), 1007),
        (
            "invalid UTF-8 split across fragments",
            [
                masked(false, 1, "κόσ".as_bytes()),
                masked(false, 0, b"\xce"),
                masked(true, 0, b"\x28"),
            ]
            .concat(),
            1007,
        ),
        (
            "truncated code point at message end",
            [masked(false, 1, b"ab"), masked(true, 0, b"\xe2\x82")].concat(),
            1007,
        ),
    ];
    for (name, bytes, want) in cases {
        assert_eq!(close_code_for(&server, &bytes), want, "{name}");
        bystander.send(Message::text(name)).unwrap();
        assert_eq!(
            bystander.read().unwrap(),
            Message::text(name),
            "bystander after {name}"
        );
    }
}

#[test]
fn invalid_utf8_fails_fast_before_the_message_ends() {
    // Only the first fragment is sent, and it already contains bytes that
    // can never be UTF-8: the server must not wait for the rest.
    let server = Server::start(&[]);
    let mut s = raw_ws(server.addr, "/echo");
    s.write_all(&masked(false, 1, b"valid so far \xf8 then not"))
        .unwrap();
    assert_eq!(expect_close(&mut s), 1007);
    // Even inside a single frame whose payload has not fully arrived.
    let mut s = raw_ws(server.addr, "/echo");
    let f = masked(
        true,
        1,
        &[b"ok \xc0\xaf".as_slice(), &[b'x'; 5000]].concat(),
    );
    s.write_all(&f[..f.len() - 4000]).unwrap();
    assert_eq!(expect_close(&mut s), 1007);
}

#[test]
fn oversized_messages_get_1009_without_being_buffered() {
    let server = Server::start(&["--max-message-bytes", "1024"]);
    // A header announcing 2^40 bytes, and no payload at all: the server must
    // answer from the header alone.
    let mut s = raw_ws(server.addr, "/echo");
    let mut hdr = vec![0x82, 0x80 | 127];
    hdr.extend_from_slice(&(1u64 << 40).to_be_bytes());
    hdr.extend_from_slice(&[9, 9, 9, 9]);
    s.write_all(&hdr).unwrap();
    assert_eq!(expect_close(&mut s), 1009);
    // Fragments that only together exceed the limit.
    let bytes = [masked(false, 2, &[0; 600]), masked(true, 0, &[0; 600])].concat();
    assert_eq!(close_code_for(&server, &bytes), 1009);
    // Exactly at the limit is fine.
    let mut ws = client(&server.url("/echo"));
    ws.send(Message::binary(vec![5u8; 1024])).unwrap();
    assert_eq!(ws.read().unwrap(), Message::binary(vec![5u8; 1024]));
}

#[test]
fn a_frame_trickled_one_byte_at_a_time_is_echoed() {
    let server = Server::start(&[]);
    let mut s = raw_ws(server.addr, "/echo");
    let f = masked(true, 1, "trickle → ok".as_bytes());
    for b in &f {
        s.write_all(std::slice::from_ref(b)).unwrap();
    }
    let (_, op, payload) = common::read_frame(&mut s).unwrap();
    assert_eq!((op, payload.as_slice()), (1, "trickle → ok".as_bytes()));
}

#[test]
fn a_ping_flood_gets_its_pongs_coalesced() {
    // 1,000 pings in one write arrive in a few reads; past the first 32 of a
    // read, each pong replaces the previous one (RFC 6455 §5.5.3), so the
    // answer is bounded by reads, not by pings, and the most recent ping is
    // always answered.
    let server = Server::start(&["--cores", "1"]);
    let mut s = raw_ws(server.addr, "/echo");
    let mut flood = Vec::new();
    for i in 0..1000u32 {
        flood.extend(masked(true, 9, &i.to_be_bytes()));
    }
    flood.extend(masked(true, 1, b"done"));
    s.write_all(&flood).unwrap();
    let mut pongs = Vec::new();
    loop {
        let (_, op, payload) = common::read_frame(&mut s).unwrap();
        match op {
            0xA => pongs.push(payload),
            1 => {
                assert_eq!(payload, b"done");
                break;
            }
            other => panic!("unexpected opcode {other}"),
        }
    }
    assert!(pongs.len() < 1000, "{} pongs for 1000 pings", pongs.len());
    assert_eq!(
        pongs.last().map(Vec::as_slice),
        Some(&999u32.to_be_bytes()[..])
    );
    let m = common::scrape(&server);
    let coalesced = common::metric_sum(&m, "ringcast_pongs_coalesced_total", None);
    assert_eq!(coalesced as usize + pongs.len(), 1000);
}
