//! Any bytes as the kernel's event ring: each record-sized piece decodes, and everything
//! the agent derives from a record — addresses, byte counts, state, age, the `--follow`
//! line, the counting against the published services — copes with whatever its fields hold
//! (unknown families, kinds and states, counters that went backwards), never panicking.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use weft::{
    api::event_view,
    stats::{
        events::{ConnEvent, Sinks, count},
        record,
    },
    store::Snapshot,
};
use weft_common::ConnRecord;

fuzz_target!(|data: &[u8]| {
    let size = std::mem::size_of::<ConnRecord>();
    let batch: Vec<ConnRecord> = data.chunks(size).filter_map(record::decode).collect();
    assert_eq!(
        batch.len(),
        data.len() / size,
        "a whole record did not decode"
    );
    for r in &batch {
        let _ = (record::bytes_sent(r), record::bytes_received(r));
        let _ = (record::source(r), record::destination(r));
        let _ = (
            record::state(r),
            record::is_refusal(r),
            record::is_socket_tcp(r),
        );
        let _ = (
            record::age_ms(r, u64::MAX),
            record::age_ms(r, 0),
            record::duration_s(r),
        );
        let event = ConnEvent {
            service: Arc::from("fuzzed"),
            endpoint: record::destination(r),
            record: *r,
        };
        serde_json::to_vec(&event_view(&event)).expect("a --follow line");
    }
    let (_view_tx, view) = tokio::sync::watch::channel(Arc::new(Snapshot::default()));
    let (follow, _followers) = tokio::sync::broadcast::channel(16);
    let (passive, _outcomes) = tokio::sync::mpsc::channel(16);
    let outcomes = count(
        &batch,
        &Sinks {
            view,
            follow,
            passive,
        },
    );
    assert!(
        outcomes.is_empty(),
        "outcomes for services nobody published"
    );
});
