//! `/echo` over real sockets with a real client (tungstenite), against
//! ringcast and the tokio baseline alike.

mod common;

use common::{client, flavors};
use tungstenite::protocol::frame::coding::{Data, OpCode};
use tungstenite::protocol::frame::Frame;
use tungstenite::Message;

fn text_of(len: usize) -> String {
    // Mixed 1-, 2- and 3-byte characters, cut to exactly `len` bytes.
    let unit = "aé€";
    let mut s = String::with_capacity(len + 3);
    while s.len() < len {
        s.push_str(unit);
    }
    let mut cut = len;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    s.truncate(cut);
    while s.len() < len {
        s.push('z');
    }
    s
}

fn binary_of(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

#[test]
fn echoes_text_and_binary_from_0_bytes_to_16_mib() {
    for flavor in flavors() {
        eprintln!("server: {}", flavor.name);
        let server = flavor.start(1, &[]);
        let mut ws = client(&server.url("/echo"));
        for len in [
            0usize,
            1,
            125,
            126,
            127,
            65_535,
            65_536,
            100_000,
            1 << 20,
            16 << 20,
        ] {
            let text = text_of(len);
            ws.send(Message::text(text.clone())).unwrap();
            match ws.read().unwrap() {
                Message::Text(t) => assert!(
                    t.as_str() == text,
                    "text of {len} bytes came back different"
                ),
                other => panic!("expected text of {len} bytes, got {other:?}"),
            }
            let bin = binary_of(len);
            ws.send(Message::binary(bin.clone())).unwrap();
            match ws.read().unwrap() {
                Message::Binary(b) => assert!(
                    b[..] == bin[..],
                    "binary of {len} bytes came back different"
                ),
                other => panic!("expected binary of {len} bytes, got {other:?}"),
            }
        }
    }
}

#[test]
fn pipelined_messages_come_back_in_order() {
    for flavor in flavors() {
        eprintln!("server: {}", flavor.name);
        let server = flavor.start(1, &[]);
        let mut ws = client(&server.url("/echo"));
        for i in 0..2000 {
            ws.write(Message::text(format!("message {i}"))).unwrap();
        }
        ws.flush().unwrap();
        for i in 0..2000 {
            assert_eq!(ws.read().unwrap(), Message::text(format!("message {i}")));
        }
    }
}

#[test]
fn fragmented_message_with_interleaved_ping_is_reassembled() {
    for flavor in flavors() {
        eprintln!("server: {}", flavor.name);
        let server = flavor.start(1, &[]);
        let mut ws = client(&server.url("/echo"));
        let whole = "Hello, wörld €𝄞!";
        let b = whole.as_bytes();
        // Cut inside the 3-byte € and inside the 4-byte 𝄞.
        let (a, rest) = b.split_at(b.len() - 6);
        let (c, d) = rest.split_at(2);
        ws.write(Message::Frame(Frame::message(
            a.to_vec(),
            OpCode::Data(Data::Text),
            false,
        )))
        .unwrap();
        ws.write(Message::Frame(Frame::ping(b"in the middle".to_vec())))
            .unwrap();
        ws.write(Message::Frame(Frame::message(
            c.to_vec(),
            OpCode::Data(Data::Continue),
            false,
        )))
        .unwrap();
        ws.write(Message::Frame(Frame::message(
            d.to_vec(),
            OpCode::Data(Data::Continue),
            true,
        )))
        .unwrap();
        ws.flush().unwrap();
        assert_eq!(
            ws.read().unwrap(),
            Message::Pong(b"in the middle".to_vec().into())
        );
        assert_eq!(ws.read().unwrap(), Message::text(whole));
        // Binary too, many small fragments.
        let data = binary_of(10_000);
        let chunks: Vec<&[u8]> = data.chunks(7).collect();
        for (i, ch) in chunks.iter().enumerate() {
            let op = if i == 0 {
                OpCode::Data(Data::Binary)
            } else {
                OpCode::Data(Data::Continue)
            };
            ws.write(Message::Frame(Frame::message(
                ch.to_vec(),
                op,
                i == chunks.len() - 1,
            )))
            .unwrap();
        }
        ws.flush().unwrap();
        assert_eq!(ws.read().unwrap(), Message::binary(data));
    }
}

#[test]
fn ping_gets_pong_with_same_payload() {
    for flavor in flavors() {
        eprintln!("server: {}", flavor.name);
        let server = flavor.start(1, &[]);
        let mut ws = client(&server.url("/echo"));
        for payload in [&b""[..], b"x", &[7u8; 125]] {
            ws.send(Message::Ping(payload.to_vec().into())).unwrap();
            assert_eq!(ws.read().unwrap(), Message::Pong(payload.to_vec().into()));
        }
    }
}

#[test]
fn close_handshake_echoes_the_code_and_server_closes_tcp() {
    for flavor in flavors() {
        use tungstenite::protocol::frame::coding::CloseCode;
        use tungstenite::protocol::CloseFrame;
        let server = flavor.start(1, &[]);
        for code in [1000u16, 1001, 3000, 4999] {
            let mut ws = client(&server.url("/echo"));
            ws.send(Message::text("before close")).unwrap();
            assert_eq!(ws.read().unwrap(), Message::text("before close"));
            ws.close(Some(CloseFrame {
                code: CloseCode::from(code),
                reason: "bye".into(),
            }))
            .unwrap();
            let reply = match ws.read() {
                Ok(Message::Close(f)) => f,
                other => panic!("expected close, got {other:?}"),
            };
            assert_eq!(reply.map(|f| u16::from(f.code)), Some(code));
            // After the handshake the server drops TCP: the next read ends cleanly.
            match ws.read() {
                Err(tungstenite::Error::ConnectionClosed)
                | Err(tungstenite::Error::AlreadyClosed) => {}
                other => panic!("expected the connection to end, got {other:?}"),
            }
        }
    }
}
