//! Frames as the server writes them (RFC 6455 §5.2): never masked, always final, RSV1 set only on
//! a permessage-deflate message.

use std::sync::OnceLock;

use bytes::{BufMut, Bytes, BytesMut};

use crate::deflate;
use crate::handshake::Deflate;

/// The opcodes a server writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    Text = 0x1,
    Binary = 0x2,
    Close = 0x8,
    Ping = 0x9,
    Pong = 0xA,
}

/// RFC 6455 §5.5: a control frame's payload is at most 125 bytes.
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// The bytes of one final, unmasked frame: header and payload in one buffer, ready to share.
/// `compressed` sets RSV1 (RFC 7692 §6: the payload is a raw DEFLATE message).
pub fn encode(opcode: OpCode, compressed: bool, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(payload.len() + 10);
    let rsv1 = if compressed { 0x40 } else { 0 };
    out.put_u8(0x80 | rsv1 | opcode as u8);
    let len = payload.len();
    if len < 126 {
        out.put_u8(len as u8);
    } else if let Ok(len) = u16::try_from(len) {
        out.put_u8(126);
        out.put_u16(len);
    } else {
        out.put_u8(127);
        out.put_u64(len as u64);
    }
    out.put_slice(payload);
    out.freeze()
}

/// A close frame with `code` and `reason`, the reason cut (at a character boundary) to fit the
/// control frame limit.
pub fn close_frame(code: u16, reason: &str) -> Bytes {
    let mut end = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    encode(OpCode::Close, false, &payload)
}

/// One message's frames as they go on the wire, each built at its first need and then shared by
/// every socket the message is sent to: the plain frame, and the compressed one (or the finding
/// that compressing does not pay). The payload itself is kept by the owner.
#[derive(Debug, Default)]
pub struct WireForms {
    plain: OnceLock<Bytes>,
    /// `None` inside: too short, or it does not shrink; the plain frame goes instead.
    compressed: OnceLock<Option<Bytes>>,
}

impl WireForms {
    /// Forms fixed in advance: `frame` goes to every socket, whatever it negotiated. For a
    /// message built for one socket (the echo mode's replies).
    pub fn prebuilt(frame: Bytes) -> WireForms {
        WireForms {
            plain: OnceLock::from(frame),
            compressed: OnceLock::from(None),
        }
    }

    /// The frame for a socket: compressed when it negotiated `deflate`, the message is within
    /// its window, and compressing pays; plain otherwise (RSV1 clear, which may be mixed freely
    /// with compressed frames).
    pub fn frame(&self, opcode: OpCode, payload: &[u8], deflate: Option<Deflate>) -> &Bytes {
        if let Some(deflate) = deflate {
            if payload.len() <= deflate.max_compressed_message() {
                let compressed = self.compressed.get_or_init(|| {
                    deflate::compress(payload).map(|packed| encode(opcode, true, &packed))
                });
                if let Some(frame) = compressed {
                    return frame;
                }
            }
        }
        self.plain.get_or_init(|| encode(opcode, false, payload))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_use_the_shortest_encoding() {
        assert_eq!(&encode(OpCode::Text, false, b"hi")[..], b"\x81\x02hi");
        let medium = encode(OpCode::Binary, true, &[0; 126]);
        assert_eq!(&medium[..4], b"\xc2\x7e\x00\x7e");
        let long = encode(OpCode::Text, false, &[0; 70_000]);
        assert_eq!(&long[..10], b"\x81\x7f\x00\x00\x00\x00\x00\x01\x11\x70");
        assert_eq!(long.len(), 70_010);
    }

    #[test]
    fn wire_forms_are_built_once() {
        let forms = WireForms::default();
        let payload = "{\"event\":\"x\",\"data\":\"".to_owned() + &"ab".repeat(200) + "\"}";
        let deflate = Some(Deflate {
            server_max_window_bits: 15,
        });
        let a = forms.frame(OpCode::Text, payload.as_bytes(), deflate);
        let b = forms.frame(OpCode::Text, payload.as_bytes(), deflate);
        assert_eq!(a.as_ptr(), b.as_ptr(), "shared, not rebuilt");
        assert_eq!(a[0], 0xC1, "FIN, RSV1, text");
        let plain = forms.frame(OpCode::Text, payload.as_bytes(), None);
        assert_eq!(plain[0], 0x81);
        // A socket with a 256-byte window gets this 400-byte message uncompressed.
        let small = Some(Deflate {
            server_max_window_bits: 8,
        });
        let c = forms.frame(OpCode::Text, payload.as_bytes(), small);
        assert_eq!(c.as_ptr(), plain.as_ptr());
    }

    #[test]
    fn close_reason_is_cut_at_a_char_boundary() {
        let reason = "é".repeat(100);
        let frame = close_frame(1000, &reason);
        assert_eq!(frame[1] as usize, frame.len() - 2);
        assert!(frame.len() - 2 <= MAX_CONTROL_PAYLOAD);
        assert!(std::str::from_utf8(&frame[4..]).is_ok());
    }
}
