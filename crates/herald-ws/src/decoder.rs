//! The read side (RFC 6455 §5, RFC 7692 §6): frames are parsed and unmasked in place, in the
//! buffer the bytes were read into; only an incomplete frame or a fragmented message is copied.
//!
//! Invariant: between two reads the decoder holds only the bytes of an incomplete frame or of a
//! message still in fragments, and frees them as soon as it is complete, so an idle socket's
//! decoder owns no heap memory.

use std::ops::ControlFlow;

use crate::deflate::{self, InflateError};
use crate::frame::MAX_CONTROL_PAYLOAD;

/// One message or control frame, borrowed from the buffer it was read into.
#[derive(Debug, PartialEq, Eq)]
pub enum Message<'a> {
    Text(&'a str),
    Binary(&'a [u8]),
    /// A text or binary message that came compressed (permessage-deflate), not yet inflated:
    /// the reader decides whether it is worth the work, so a client over its message budget is
    /// refused without inflating and a flood of small bombs costs what its bytes cost.
    Compressed(Compressed<'a>),
    Ping(&'a [u8]),
    Pong(&'a [u8]),
    /// A close frame: its code and reason, `None` when it had no payload.
    Close(Option<(u16, &'a str)>),
}

/// A compressed message as it came: [`Compressed::inflate`] does the work, bounded by the
/// decoder's message limit.
#[derive(Debug, PartialEq, Eq)]
pub struct Compressed<'a> {
    text: bool,
    payload: &'a [u8],
    max: usize,
}

impl Compressed<'_> {
    /// The compressed size, as it came on the wire.
    pub fn wire_len(&self) -> usize {
        self.payload.len()
    }

    /// Inflates the message; no more than the message limit plus one byte is ever allocated.
    ///
    /// # Errors
    /// [`Error::TooLarge`] past the limit (a decompression bomb), [`Error::Protocol`] for data
    /// that is not DEFLATE.
    pub fn inflate(&self) -> Result<Inflated, Error> {
        let bytes = deflate::inflate(self.payload, self.max).map_err(|err| match err {
            InflateError::TooLarge => Error::TooLarge,
            InflateError::Invalid => Error::Protocol("Invalid compressed data"),
        })?;
        Ok(Inflated {
            text: self.text,
            bytes,
        })
    }
}

/// An inflated message.
#[derive(Debug)]
pub struct Inflated {
    text: bool,
    bytes: Vec<u8>,
}

impl Inflated {
    /// The message as [`Message::Text`] or [`Message::Binary`].
    ///
    /// # Errors
    /// [`Error::InvalidUtf8`] for a text message that is not UTF-8.
    pub fn message(&self) -> Result<Message<'_>, Error> {
        if self.text {
            let text = std::str::from_utf8(&self.bytes).map_err(|_| Error::InvalidUtf8)?;
            Ok(Message::Text(text))
        } else {
            Ok(Message::Binary(&self.bytes))
        }
    }
}

/// How the client broke the protocol; each maps to its RFC 6455 §7.4.1 close code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// Framing the RFC forbids: 1002.
    Protocol(&'static str),
    /// A text message or close reason that is not UTF-8: 1007.
    InvalidUtf8,
    /// A message over the size limit, before or after inflating: 1009.
    TooLarge,
}

impl Error {
    pub fn close_code(self) -> u16 {
        match self {
            Error::Protocol(_) => 1002,
            Error::InvalidUtf8 => 1007,
            Error::TooLarge => 1009,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            Error::Protocol(why) => why,
            Error::InvalidUtf8 => "Text message is not valid UTF-8",
            Error::TooLarge => "Message too large",
        }
    }
}

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// One socket's read state: 16 bytes while no frame or message is incomplete.
#[derive(Debug, Default)]
pub struct Decoder {
    /// Invariant: `Some` only while part of a frame or a message in fragments is waiting.
    pending: Option<Box<Pending>>,
    /// The largest message, before and after inflating.
    max_message: u32,
    /// Whether permessage-deflate was negotiated (RSV1 allowed on a message's first frame).
    deflate: bool,
}

/// What waits for more bytes.
#[derive(Debug, Default)]
struct Pending {
    /// The bytes of an incomplete frame. Invariant: less than one whole frame.
    partial: Vec<u8>,
    /// The payload so far of a message in fragments (still compressed when `compressed`).
    message: Vec<u8>,
    /// The opcode of the message in fragments; 0 when there is none.
    message_op: u8,
    compressed: bool,
    /// How much of `message` is known to be UTF-8 (a text message fails fast).
    utf8_checked: u32,
}

impl Decoder {
    /// A decoder for messages of at most `max_message` bytes; `deflate` when permessage-deflate
    /// was negotiated.
    pub fn new(max_message: usize, deflate: bool) -> Decoder {
        Decoder {
            max_message: u32::try_from(max_message).unwrap_or(u32::MAX),
            deflate,
            ..Decoder::default()
        }
    }

    /// Keeps bytes that arrived before decoding could start (with the handshake); the next
    /// [`Decoder::decode`] parses them first.
    pub fn buffer(&mut self, bytes: &[u8]) {
        if !bytes.is_empty() {
            self.pending_mut().partial.extend_from_slice(bytes);
        }
    }

    /// Whether part of a frame or message is waiting for more bytes.
    pub fn is_mid_message(&self) -> bool {
        self.pending.is_some()
    }

    fn pending_mut(&mut self) -> &mut Pending {
        self.pending.get_or_insert_with(Box::default)
    }

    fn message_op(&self) -> u8 {
        self.pending.as_ref().map_or(0, |p| p.message_op)
    }

    fn message_len(&self) -> usize {
        self.pending.as_ref().map_or(0, |p| p.message.len())
    }

    /// Frees the pending state once nothing waits in it.
    fn release(&mut self) {
        if self
            .pending
            .as_ref()
            .is_some_and(|p| p.partial.is_empty() && p.message_op == 0)
        {
            self.pending = None;
        }
    }

    /// Parses every complete frame in `input` (modified: unmasked in place), calling `on` with
    /// each message and control frame, in order, until `on` breaks. Bytes of an incomplete
    /// frame are kept for the next call.
    ///
    /// # Errors
    /// The first protocol violation; the connection must then be failed with its close code.
    pub fn decode(
        &mut self,
        input: &mut [u8],
        on: &mut dyn FnMut(Message<'_>) -> ControlFlow<()>,
    ) -> Result<ControlFlow<()>, Error> {
        let partial = match self.pending.as_mut() {
            Some(p) => std::mem::take(&mut p.partial),
            None => Vec::new(),
        };
        let flow = if partial.is_empty() {
            let (used, flow) = self.frames(input, on)?;
            if flow.is_continue() && used < input.len() {
                self.pending_mut().partial.extend_from_slice(&input[used..]);
            }
            flow
        } else {
            let mut buf = partial;
            buf.extend_from_slice(input);
            let (used, flow) = self.frames(&mut buf, on)?;
            if flow.is_continue() && used < buf.len() {
                buf.drain(..used);
                self.pending_mut().partial = buf;
            }
            flow
        };
        self.release();
        Ok(flow)
    }

    fn max(&self) -> usize {
        self.max_message as usize
    }

    /// Parses the complete frames at the start of `buf`; returns how many bytes they took.
    fn frames(
        &mut self,
        buf: &mut [u8],
        on: &mut dyn FnMut(Message<'_>) -> ControlFlow<()>,
    ) -> Result<(usize, ControlFlow<()>), Error> {
        let mut pos = 0;
        loop {
            let Some((header, len)) = self.header(&buf[pos..])? else {
                return Ok((pos, ControlFlow::Continue(())));
            };
            let Some(end) = (pos + header.len)
                .checked_add(len)
                .filter(|end| *end <= buf.len())
            else {
                return Ok((pos, ControlFlow::Continue(())));
            };
            let payload = &mut buf[pos + header.len..end];
            unmask(payload, header.mask);
            pos = end;
            if self.frame(&header, payload, on)?.is_break() {
                return Ok((pos, ControlFlow::Break(())));
            }
        }
    }

    /// Checks a frame's header as soon as its first bytes are there (a bad frame fails before
    /// its payload arrives); `None` while it is incomplete.
    fn header(&self, buf: &[u8]) -> Result<Option<(Header, usize)>, Error> {
        let [b0, b1, ..] = *buf else {
            return Ok(None);
        };
        let fin = b0 & 0x80 != 0;
        let rsv1 = b0 & 0x40 != 0;
        let opcode = b0 & 0x0F;
        if b0 & 0x30 != 0 {
            return Err(Error::Protocol("Reserved bits set"));
        }
        let is_control = opcode & 0x8 != 0;
        let message_op = self.message_op();
        match opcode {
            OP_CONTINUATION => {
                if message_op == 0 {
                    return Err(Error::Protocol("Continuation frame without a message"));
                }
                if rsv1 {
                    return Err(Error::Protocol("RSV1 on a continuation frame"));
                }
            }
            OP_TEXT | OP_BINARY => {
                if message_op != 0 {
                    return Err(Error::Protocol("New message inside a fragmented message"));
                }
                if rsv1 && !self.deflate {
                    return Err(Error::Protocol("RSV1 set without an extension"));
                }
            }
            OP_CLOSE | OP_PING | OP_PONG => {
                if rsv1 {
                    return Err(Error::Protocol("RSV1 on a control frame"));
                }
                if !fin {
                    return Err(Error::Protocol("Fragmented control frame"));
                }
            }
            _ => return Err(Error::Protocol("Reserved opcode")),
        }
        if b1 & 0x80 == 0 {
            return Err(Error::Protocol("Unmasked client frame"));
        }
        let (ext, len) = match b1 & 0x7F {
            126 => {
                let Some(b) = buf.get(2..4) else {
                    return Ok(None);
                };
                (2, u64::from(u16::from_be_bytes([b[0], b[1]])))
            }
            127 => {
                let Some(b) = buf.get(2..10) else {
                    return Ok(None);
                };
                let len = u64::from_be_bytes(b.try_into().expect("8 bytes"));
                if len >> 63 != 0 {
                    return Err(Error::Protocol("Frame length with the top bit set"));
                }
                (8, len)
            }
            n => (0, u64::from(n)),
        };
        if is_control && len > MAX_CONTROL_PAYLOAD as u64 {
            return Err(Error::Protocol("Control frame over 125 bytes"));
        }
        if !is_control && len + self.message_len() as u64 > u64::from(self.max_message) {
            return Err(Error::TooLarge);
        }
        let Some(mask) = buf.get(2 + ext..6 + ext) else {
            return Ok(None);
        };
        let header = Header {
            fin,
            rsv1,
            opcode,
            mask: mask.try_into().expect("4 bytes"),
            len: 6 + ext,
        };
        Ok(Some((header, len as usize)))
    }

    fn frame(
        &mut self,
        header: &Header,
        payload: &[u8],
        on: &mut dyn FnMut(Message<'_>) -> ControlFlow<()>,
    ) -> Result<ControlFlow<()>, Error> {
        match header.opcode {
            OP_PING => Ok(on(Message::Ping(payload))),
            OP_PONG => Ok(on(Message::Pong(payload))),
            OP_CLOSE => Ok(on(Message::Close(parse_close(payload)?))),
            OP_TEXT | OP_BINARY if header.fin => {
                if header.rsv1 {
                    Ok(on(Message::Compressed(
                        self.compressed(header.opcode, payload),
                    )))
                } else {
                    deliver(header.opcode, payload, on)
                }
            }
            OP_TEXT | OP_BINARY => {
                let pending = self.pending_mut();
                pending.message_op = header.opcode;
                pending.compressed = header.rsv1;
                pending.utf8_checked = 0;
                pending.append(payload)?;
                Ok(ControlFlow::Continue(()))
            }
            _ => {
                let pending = self.pending_mut();
                pending.append(payload)?;
                if !header.fin {
                    return Ok(ControlFlow::Continue(()));
                }
                let message = std::mem::take(&mut pending.message);
                let opcode = std::mem::replace(&mut pending.message_op, 0);
                if std::mem::replace(&mut pending.compressed, false) {
                    Ok(on(Message::Compressed(self.compressed(opcode, &message))))
                } else {
                    deliver(opcode, &message, on)
                }
            }
        }
    }

    fn compressed<'a>(&self, opcode: u8, payload: &'a [u8]) -> Compressed<'a> {
        Compressed {
            text: opcode == OP_TEXT,
            payload,
            max: self.max(),
        }
    }
}

impl Pending {
    /// Adds a fragment to the message; text fails as soon as its bytes cannot be UTF-8.
    fn append(&mut self, payload: &[u8]) -> Result<(), Error> {
        self.message.extend_from_slice(payload);
        if self.message_op == OP_TEXT && !self.compressed {
            let checked = self.utf8_checked as usize;
            let valid = match std::str::from_utf8(&self.message[checked..]) {
                Ok(_) => self.message.len(),
                Err(err) if err.error_len().is_none() => checked + err.valid_up_to(),
                Err(_) => return Err(Error::InvalidUtf8),
            };
            self.utf8_checked = u32::try_from(valid).unwrap_or(u32::MAX);
        }
        Ok(())
    }
}

struct Header {
    fin: bool,
    rsv1: bool,
    opcode: u8,
    mask: [u8; 4],
    /// Header length in bytes, mask included.
    len: usize,
}

fn deliver(
    opcode: u8,
    payload: &[u8],
    on: &mut dyn FnMut(Message<'_>) -> ControlFlow<()>,
) -> Result<ControlFlow<()>, Error> {
    if opcode == OP_TEXT {
        let text = std::str::from_utf8(payload).map_err(|_| Error::InvalidUtf8)?;
        Ok(on(Message::Text(text)))
    } else {
        Ok(on(Message::Binary(payload)))
    }
}

/// RFC 6455 §5.5.1 and §7.4: a close payload is empty, or a valid code and a UTF-8 reason.
fn parse_close(payload: &[u8]) -> Result<Option<(u16, &str)>, Error> {
    match payload {
        [] => Ok(None),
        [_] => Err(Error::Protocol("Close frame with a 1-byte payload")),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            let valid = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
            if !valid {
                return Err(Error::Protocol("Invalid close code"));
            }
            let reason = std::str::from_utf8(reason).map_err(|_| Error::InvalidUtf8)?;
            Ok(Some((code, reason)))
        }
    }
}

/// XORs the payload with the client's mask (RFC 6455 §5.3), eight bytes at a time.
fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let wide = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = payload.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let v = u64::from_ne_bytes((&*chunk).try_into().expect("8 bytes")) ^ wide;
        chunk.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(fin: bool, rsv: u8, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x12, 0x34, 0x56, 0x78];
        let mut out = vec![(u8::from(fin) << 7) | (rsv << 4) | opcode];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xFFFF => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    #[derive(Debug, PartialEq)]
    enum Got {
        Text(String),
        Binary(Vec<u8>),
        Ping(Vec<u8>),
        Pong(Vec<u8>),
        Close(Option<(u16, String)>),
    }

    /// Decodes `bytes` fed `chunk` bytes at a time, inflating what came compressed.
    fn feed(decoder: &mut Decoder, bytes: &[u8], chunk: usize) -> Result<Vec<Got>, Error> {
        fn got(m: Message<'_>) -> Result<Got, Error> {
            Ok(match m {
                Message::Text(t) => Got::Text(t.to_owned()),
                Message::Binary(b) => Got::Binary(b.to_vec()),
                Message::Compressed(c) => return got(c.inflate()?.message()?),
                Message::Ping(b) => Got::Ping(b.to_vec()),
                Message::Pong(b) => Got::Pong(b.to_vec()),
                Message::Close(c) => Got::Close(c.map(|(c, r)| (c, r.to_owned()))),
            })
        }
        let mut all = Vec::new();
        let mut failed = None;
        for piece in bytes.chunks(chunk.max(1)) {
            let mut piece = piece.to_vec();
            let _ = decoder.decode(&mut piece, &mut |m| match got(m) {
                Ok(g) => {
                    all.push(g);
                    ControlFlow::Continue(())
                }
                Err(err) => {
                    failed = Some(err);
                    ControlFlow::Break(())
                }
            })?;
            if let Some(err) = failed {
                return Err(err);
            }
        }
        Ok(all)
    }

    #[test]
    fn messages_survive_any_split() {
        let mut bytes = frame(true, 0, 1, b"hello");
        bytes.extend(frame(false, 0, 1, "h\u{e9}".as_bytes()));
        bytes.extend(frame(true, 0, 9, b"p"));
        bytes.extend(frame(true, 0, 0, "llo \u{20ac}".as_bytes()));
        bytes.extend(frame(true, 0, 2, &[0u8; 300]));
        bytes.extend(frame(true, 0, 8, b"\x03\xe8bye"));
        for chunk in [1, 2, 3, 7, 64, 10_000] {
            let mut d = Decoder::new(1024, false);
            let got = feed(&mut d, &bytes, chunk).unwrap();
            assert_eq!(
                got,
                [
                    Got::Text("hello".into()),
                    Got::Ping(b"p".to_vec()),
                    Got::Text("h\u{e9}llo \u{20ac}".into()),
                    Got::Binary(vec![0; 300]),
                    Got::Close(Some((1000, "bye".into()))),
                ],
                "chunk {chunk}"
            );
            assert!(!d.is_mid_message());
            assert!(d.pending.is_none(), "no memory held after the message");
        }
    }

    #[test]
    fn violations_get_their_codes() {
        let cases: Vec<(Vec<u8>, u16)> = vec![
            (frame(true, 4, 1, b"{}"), 1002),
            (frame(true, 1, 1, b"{}"), 1002),
            (frame(true, 0, 3, b""), 1002),
            (frame(false, 0, 9, b""), 1002),
            (frame(true, 0, 9, &[0; 126]), 1002),
            (frame(true, 0, 0, b"x"), 1002),
            (frame(true, 0, 8, b"\x03"), 1002),
            (frame(true, 0, 8, b"\x03\xe7"), 1002),
            (frame(true, 0, 1, b"\xff"), 1007),
            (frame(true, 0, 8, b"\x03\xe8\xff"), 1007),
            (frame(true, 0, 1, &[b' '; 1025]), 1009),
            (vec![0x81, 0x00], 1002),
        ];
        for (bytes, code) in cases {
            let mut d = Decoder::new(1024, false);
            let err = feed(&mut d, &bytes, 1).unwrap_err();
            assert_eq!(err.close_code(), code, "{bytes:?}: {err:?}");
        }
    }

    #[test]
    fn utf8_fails_fast_across_fragments() {
        let mut d = Decoder::new(1024, false);
        feed(&mut d, &frame(false, 0, 1, b"\xe2\x82"), 100).unwrap();
        let err = feed(&mut d, &frame(false, 0, 0, b"\x28"), 100).unwrap_err();
        assert_eq!(err, Error::InvalidUtf8);
    }

    #[test]
    fn oversized_frame_fails_on_its_header() {
        let mut d = Decoder::new(1024, false);
        let mut header = vec![0x81, 0xFF];
        header.extend_from_slice(&(u64::MAX >> 1).to_be_bytes());
        assert_eq!(feed(&mut d, &header, 100), Err(Error::TooLarge));
    }

    #[test]
    fn compressed_messages_inflate_and_are_bounded() {
        let text = "{\"event\":\"client-x\",\"data\":\"".to_owned() + &"abc".repeat(200) + "\"}";
        let packed = crate::deflate::compress(text.as_bytes()).unwrap();
        let mut d = Decoder::new(1024, true);
        let got = feed(&mut d, &frame(true, 4, 1, &packed), 5).unwrap();
        assert_eq!(got, [Got::Text(text.clone())]);
        // In fragments, RSV1 on the first only.
        let (a, b) = packed.split_at(packed.len() / 2);
        let mut bytes = frame(false, 4, 1, a);
        bytes.extend(frame(true, 0, 0, b));
        assert_eq!(feed(&mut d, &bytes, 3).unwrap(), [Got::Text(text.clone())]);
        // A bomb: small on the wire, over the limit inflated.
        let bomb = crate::deflate::compress(&[b'a'; 100_000]).unwrap();
        assert!(bomb.len() < 1024);
        let mut d = Decoder::new(1024, true);
        assert_eq!(
            feed(&mut d, &frame(true, 4, 1, &bomb), 100),
            Err(Error::TooLarge)
        );
        // RSV1 on a control frame or continuation.
        let mut d = Decoder::new(1024, true);
        assert!(feed(&mut d, &frame(true, 4, 9, b""), 100).is_err());
    }
}
