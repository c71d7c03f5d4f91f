//! What a busy channel's history costs in memory at the default settings: a channel fed at
//! 20 events/s for longer than `history_seconds`, with Laravel-like broadcast frames of 512 bytes
//! and of 1 KB, once every subscriber has been written to (the history is then the frames' only
//! holder). Measured as the growth of the process's resident memory; run alone (its own test
//! binary, one test) so that nothing else allocates meanwhile. The bounds it asserts are loose
//! (more than the text, under four times it); the numbers it prints are the measurement:
//!
//! `cargo test -p herald-core --test history_memory -- --nocapture`
//!
//! The numbers are in docs/guide/continuity.md.

use herald_core::{App, Durability, Frame, Node, NodeLimits};
use herald_protocol::{server_message, ChannelName};
use herald_ws::Deflate;

/// Channels filled per frame size, so that the resident memory they add dwarfs the allocator's
/// noise.
const CHANNELS: usize = 16;

/// The process's resident memory in bytes (`/proc/self/statm`, 4 KiB pages).
fn resident() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// A Laravel broadcast frame of about `size` bytes: an event class, a private channel, and a
/// JSON payload of ids, words and numbers (compressible as real ones are, not a run of one
/// byte).
fn laravel_frame(n: u64, size: usize) -> String {
    let mut seed = n.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    let mut next = move || {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        seed >> 33
    };
    const WORDS: [&str; 8] = [
        "shipped", "pending", "paid", "refunded", "Lyon", "Berlin", "express", "standard",
    ];
    let mut items = Vec::new();
    loop {
        let data = serde_json::json!({
            "order": {"id": 100_000 + n, "status": WORDS[(n % 4) as usize], "items": items},
            "socket": null,
        })
        .to_string();
        let text =
            server_message::channel_event("App\\Events\\OrderUpdated", "private-orders.42", &data);
        if text.len() >= size {
            return text;
        }
        items.push(serde_json::json!({
            "sku": format!("{:08x}", next()),
            "qty": next() % 9 + 1,
            "price": format!("{}.{:02}", next() % 500, next() % 100),
            "city": WORDS[(next() % 8) as usize],
        }));
    }
}

/// Fills [`CHANNELS`] channels' histories at the app's defaults, each as at 20 events/s for
/// `history_seconds` (the window's worth: the count bound is reached, and the byte bound for
/// frames over 873 bytes), and returns the node (alive: its memory stays resident while the next
/// size is measured) with, per channel, (events kept, bytes of text counted against
/// `history_max_bytes`, resident bytes added).
fn fill(size: usize) -> (Node, (usize, usize, usize)) {
    let app = App::demo();
    let events = 20 * app.history_seconds as usize;
    let node = Node::new(1, vec![app], NodeLimits::default());
    let state = node.app_by_id("1").unwrap();
    let deflate = Deflate {
        server_max_window_bits: 15,
    };
    let frames: Vec<String> = (0..events as u64).map(|n| laravel_frame(n, size)).collect();
    let text = frames[0].len();
    let before = resident();
    for c in 0..CHANNELS {
        let channel = ChannelName::parse(&format!("private-orders.{c}"), 200).unwrap();
        for data in &frames {
            let frame = Frame::new(data.clone());
            // Its subscribers were written to: both wire forms were built, once each.
            let _ = frame.wire(None);
            let _ = frame.wire(Some(deflate));
            state.deliver(&channel, &frame, None, Durability::Logged);
        }
    }
    let added = resident().saturating_sub(before) / CHANNELS;
    drop(frames);
    let app = state.app();
    let kept = events
        .min(app.history_events)
        .min(app.history_max_bytes / text);
    drop(state);
    (node, (kept, kept * text, added))
}

#[test]
fn a_busy_channels_default_history_costs_what_the_guide_says() {
    let app = App::demo();
    println!(
        "defaults: history_events {}, history_seconds {}, history_max_bytes {}",
        app.history_events, app.history_seconds, app.history_max_bytes
    );
    assert!(
        app.history_events as u64 >= 20 * app.history_seconds,
        "at 20 events/s the count bound never trims before the window"
    );
    let mut nodes = Vec::new();
    for size in [512, 1024] {
        let (node, (events, text, added)) = fill(size);
        nodes.push(node);
        println!(
            "{size} B frames: {events} events kept a channel, {text} bytes of text, \
             {added} bytes resident a channel ({:.2} MiB, {} B an event)",
            added as f64 / (1024.0 * 1024.0),
            added / events,
        );
        // Text, its plain and compressed WebSocket frames, the frame's header and the history
        // entry: more than the text, under four times it.
        assert!(
            added > text && added < 4 * text,
            "{added} bytes for {text} bytes of text"
        );
    }
}
