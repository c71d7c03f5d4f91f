//! What the unit tests share: socket ids and the events an outbox holds.

use herald_protocol::SocketId;

use crate::outbox::Outbox;

/// Socket `seq` of node `node`.
pub(crate) fn sid(node: u64, seq: u64) -> SocketId {
    SocketId { node, seq }
}

/// The names of the events queued in `outbox`, in order (taking them).
pub(crate) fn events(outbox: &Outbox) -> Vec<String> {
    let (batch, _) = outbox.take();
    batch
        .iter()
        .map(|f| {
            let v: serde_json::Value = serde_json::from_slice(f.text()).unwrap();
            v["event"].as_str().unwrap().to_owned()
        })
        .collect()
}
