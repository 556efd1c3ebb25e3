//! The connection-event ring (`WEFT_EVENTS_V2`) and the switch that turns events off:
//! shared by sock_ops (TCP), the UDP accounting and the refusals of both paths.

use aya_ebpf::helpers::bpf_ktime_get_boot_ns;
use weft_common::{ConnRecord, event, settings};

use crate::maps::{EVENTS, LOST, SETTINGS};

/// Whether the operator turned per-connection records and events off (`stats:`).
#[inline(always)]
pub fn connection_stats_off() -> bool {
    SETTINGS
        .get(0)
        .is_some_and(|bits| bits & settings::CONNECTION_STATS_OFF != 0)
}

/// `bpf_ringbuf_output` flags and the `bpf_ringbuf_query` selector (uapi/linux/bpf.h).
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;

/// Unread bytes past which an event wakes the agent even though it would not need to: a
/// quarter of the ring, so a burst is read long before the ring overflows.
const WAKE_AT_PENDING_BYTES: u64 = weft_common::maps::EVENTS_BYTES as u64 / 4;

/// Sends a copy of the record to the ring buffer; a full ring counts the loss.
///
/// Waking the agent for every event costs a context switch per connection on the very CPUs
/// the connections run on (measured: a third of the connection rate). So opened and closed
/// events wake nobody: the agent collects them on a short timer. A connect failure wakes it
/// at once, because passive failure detection reacts to it; a ring filling up does too.
#[inline(always)]
pub fn emit(record: &ConnRecord, kind: u8) {
    let mut out = *record;
    out.kind = kind;
    let wakeup = if kind == event::CONNECT_FAILED
        || EVENTS.query(BPF_RB_AVAIL_DATA) >= WAKE_AT_PENDING_BYTES
    {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    if EVENTS.output(&out, wakeup).is_err()
        && let Some(lost) = LOST.get_ptr_mut(0)
    {
        // SAFETY: this CPU's slot of a per-CPU array; no other writer runs here concurrently.
        unsafe { *lost += 1 };
    }
}

/// Tells `weft conns --follow` about a connection weft refused (`kind`: denied, aborted or
/// overflow), when connection events are on. `record` names the client and the service; it
/// is stamped with the time of the refusal.
#[inline(always)]
pub fn emit_refusal(record: ConnRecord, kind: u8) {
    if connection_stats_off() {
        return;
    }
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    let record = ConnRecord {
        start_ns: now,
        update_ns: now,
        ..record
    };
    emit(&record, kind);
}
