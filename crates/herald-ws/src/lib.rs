//! herald's WebSocket codec, server side: RFC 6455 framing and RFC 7692 permessage-deflate,
//! without IO. The socket task feeds it the bytes it read and writes the bytes it returns.
//!
//! Invariant: nothing here does IO or holds memory between messages beyond the bytes of an
//! incomplete frame or message: an idle socket's decoder owns no heap memory, and the
//! (de)compressors are per thread, never per socket.

pub mod decoder;
pub mod deflate;
pub mod frame;
pub mod handshake;

pub use decoder::{Compressed, Decoder, Error, Inflated, Message};
pub use frame::{close_frame, encode, OpCode, WireForms};
pub use handshake::{accept_key, negotiate_deflate, Deflate};
