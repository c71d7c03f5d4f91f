//! permessage-deflate payloads (RFC 7692 §7.2): every message is compressed on its own (the
//! server announces `server_no_context_takeover` and asks for `client_no_context_takeover`), so
//! one compressor and one decompressor per thread serve every socket, and an idle socket holds
//! no compression state at all. zlib itself is `flate2` over `zlib-rs`.

use std::cell::RefCell;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// What a sync flush ends with; RFC 7692 §7.2.1 strips it from a message, §7.2.2 puts it back.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Messages shorter than this are sent as they are: a few bytes saved do not pay for the CPU.
pub const MIN_COMPRESSED_LEN: usize = 128;

thread_local! {
    static COMPRESSOR: RefCell<Compress> =
        RefCell::new(Compress::new(Compression::default(), false));
    static DECOMPRESSOR: RefCell<Decompress> = RefCell::new(Decompress::new(false));
}

/// `payload` as a raw DEFLATE message without its tail, or `None` when it is too short to be
/// worth it or does not shrink.
pub fn compress(payload: &[u8]) -> Option<Vec<u8>> {
    if payload.len() < MIN_COMPRESSED_LEN {
        return None;
    }
    // Room for the whole message: a result as long as the input is useless anyway.
    compress_within(payload, payload.len() + TAIL.len())
}

/// `payload` compressed whatever its size and whether it shrinks or not, with a window of
/// `window_bits` (9 to 15; zlib has no 8-bit window for raw DEFLATE). The Autobahn echo server
/// compresses every message it echoes, each with the window its client asked for.
pub fn compress_always(payload: &[u8], window_bits: u8) -> Vec<u8> {
    // Stored blocks cost 5 bytes per 64 KiB at worst, plus the flush.
    let room = payload.len() + payload.len() / 1024 * 5 + 64;
    let packed = if window_bits >= 15 {
        COMPRESSOR.with(|c| compress_with(&mut c.borrow_mut(), payload, room))
    } else {
        let bits = window_bits.clamp(9, 15);
        let mut c = Compress::new_with_window_bits(Compression::default(), false, bits);
        compress_with(&mut c, payload, room)
    };
    packed.expect("room for stored blocks")
}

fn compress_within(payload: &[u8], room: usize) -> Option<Vec<u8>> {
    COMPRESSOR.with(|c| compress_with(&mut c.borrow_mut(), payload, room))
}

fn compress_with(c: &mut Compress, payload: &[u8], room: usize) -> Option<Vec<u8>> {
    {
        c.reset();
        let mut out = vec![0u8; room];
        let start_in = c.total_in();
        let start_out = c.total_out();
        let status = c.compress(payload, &mut out, FlushCompress::Sync).ok()?;
        let consumed = (c.total_in() - start_in) as usize;
        let written = (c.total_out() - start_out) as usize;
        // Out of room before the flush completed: it does not shrink.
        if status != Status::Ok || consumed != payload.len() || written == out.len() {
            return None;
        }
        if !out[..written].ends_with(&TAIL) {
            return None;
        }
        out.truncate(written - TAIL.len());
        (out.len() < room - TAIL.len()).then_some(out)
    }
}

/// Why a compressed message could not be inflated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InflateError {
    /// It inflates to more than the limit (inflating stopped there).
    TooLarge,
    /// Not a valid DEFLATE stream.
    Invalid,
}

/// Inflates one message compressed without context, spending at most `max` bytes of output:
/// a decompression bomb stops at the limit.
///
/// # Errors
/// [`InflateError::TooLarge`] over `max`, [`InflateError::Invalid`] for corrupt data.
pub fn inflate(compressed: &[u8], max: usize) -> Result<Vec<u8>, InflateError> {
    DECOMPRESSOR.with(|d| {
        let mut d = d.borrow_mut();
        d.reset(false);
        let start_out = d.total_out();
        // Allocated as it fills, never past `max + 1` bytes.
        let mut out = vec![0u8; (compressed.len() * 4).max(256).min(max.saturating_add(1))];
        for input in [compressed, &TAIL[..]] {
            let mut consumed = 0;
            loop {
                let written = (d.total_out() - start_out) as usize;
                if written == out.len() {
                    if written > max {
                        return Err(InflateError::TooLarge);
                    }
                    let grown = (out.len() * 2).min(max.saturating_add(1));
                    out.resize(grown, 0);
                }
                let before = d.total_in();
                let status = d
                    .decompress(
                        &input[consumed..],
                        &mut out[written..],
                        FlushDecompress::Sync,
                    )
                    .map_err(|_| InflateError::Invalid)?;
                consumed += (d.total_in() - before) as usize;
                let written = (d.total_out() - start_out) as usize;
                if status == Status::StreamEnd {
                    // A final block (BFINAL) ends the message; what follows is ignored.
                    out.truncate(written);
                    return Ok(out);
                }
                if written > max {
                    return Err(InflateError::TooLarge);
                }
                // Everything read and room left over: this input is done.
                if consumed == input.len() && written < out.len() {
                    break;
                }
                if status == Status::BufError && written < out.len() {
                    break;
                }
            }
        }
        let written = (d.total_out() - start_out) as usize;
        out.truncate(written);
        Ok(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(n: usize) -> Vec<u8> {
        let mut s = String::from("[");
        for i in 0..n {
            s.push_str(&format!(
                r#"{{"id":{i},"name":"Order {i}","user":{{"id":7,"email":"a@example.com"}}}},"#
            ));
        }
        s.push(']');
        s.into_bytes()
    }

    #[test]
    fn round_trip() {
        for n in [3, 10, 100, 2000] {
            let plain = json(n);
            let packed = compress(&plain).expect("JSON shrinks");
            assert!(packed.len() < plain.len() / 2);
            assert_eq!(inflate(&packed, plain.len()).unwrap(), plain);
        }
    }

    #[test]
    fn short_or_random_input_is_not_compressed() {
        assert_eq!(compress(b"{\"event\":\"pusher:pong\",\"data\":{}}"), None);
        let mut x = 0x1234_5678u32;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        assert_eq!(compress(&noise), None);
    }

    #[test]
    fn bomb_stops_at_the_limit() {
        let zeros = vec![0u8; 10 << 20];
        let packed = compress(&zeros).unwrap();
        assert!(packed.len() < 20_000);
        assert_eq!(inflate(&packed, 64 * 1024), Err(InflateError::TooLarge));
        assert_eq!(inflate(&packed, zeros.len()).unwrap().len(), zeros.len());
    }

    #[test]
    fn anything_can_be_compressed_on_request() {
        for plain in [&b""[..], b"x", &[7u8; 100_000], &json(3)] {
            for bits in [9, 12, 15] {
                let packed = compress_always(plain, bits);
                assert_eq!(inflate(&packed, plain.len()).unwrap(), plain);
            }
        }
    }

    #[test]
    fn garbage_is_invalid() {
        assert_eq!(inflate(&[0xff; 16], 1024), Err(InflateError::Invalid));
    }

    #[test]
    fn exact_limit_is_allowed() {
        let plain = json(50);
        let packed = compress(&plain).unwrap();
        assert_eq!(inflate(&packed, plain.len()).unwrap(), plain);
        assert_eq!(
            inflate(&packed, plain.len() - 1),
            Err(InflateError::TooLarge)
        );
    }
}
