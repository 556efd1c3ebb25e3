//! Backend selection: service lookup, Maglev slot, backend. The one place that decides where
//! a new connection goes, so the socket and (later) TC paths choose alike.

use weft_common::{Backend, MAGLEV_CHUNK, MaglevKey, ServiceKey};

use crate::maps::{BACKENDS, MAGLEV, SERVICES};

pub enum Choice {
    /// Not a service: leave the socket alone.
    NotService,
    /// A service with no usable endpoint: refuse at once.
    NoEndpoint,
    /// Send it here.
    Endpoint(Chosen),
}

/// The endpoint a new connection or flow goes to.
#[derive(Clone, Copy, Default)]
pub struct Chosen {
    pub backend: Backend,
    pub backend_id: u32,
    pub service_id: u32,
}

/// A slot drawn from a service's current table (all zero when none was).
#[derive(Clone, Copy, Default)]
pub struct Drawn {
    pub table_id: u32,
    pub table_size: u32,
    pub slot: u32,
}

/// Picks the endpoint for `key`, using `entropy` (a random number or a hash) as the slot.
#[inline(always)]
pub fn choose(key: &ServiceKey, entropy: u32) -> Choice {
    draw(key, entropy, &mut Drawn::default())
}

/// `choose`, also telling where in the table the slot was drawn (for a second choice:
/// circuit breaking, which only the socket path does).
#[inline(always)]
pub fn draw(key: &ServiceKey, entropy: u32, drawn: &mut Drawn) -> Choice {
    // SAFETY: the service map is BPF_F_NO_PREALLOC, so an element the agent replaces is freed
    // only after readers are done (RCU); we copy the fields we need right away.
    let Some(service) = (unsafe { SERVICES.get(key) }) else {
        return Choice::NotService;
    };
    let table_size = service.table_size;
    if table_size == 0 {
        return Choice::NoEndpoint;
    }
    let slot = entropy % table_size;
    let table_id = service.table_id;
    let chunk_key = MaglevKey {
        table_id,
        chunk: slot / MAGLEV_CHUNK,
    };
    let service_id = service.service_id;
    // SAFETY: as above; the table a service entry names is complete before it is published.
    let Some(chunk) = (unsafe { MAGLEV.get(&chunk_key) }) else {
        // Cannot happen with the agent's write order; refusing beats silently sending the
        // connection to the service address, which nothing listens on.
        return Choice::NoEndpoint;
    };
    let backend_id = chunk.backends[(slot & (MAGLEV_CHUNK - 1)) as usize];
    // SAFETY: as above.
    match unsafe { BACKENDS.get(&backend_id) } {
        Some(backend) => {
            *drawn = Drawn {
                table_id,
                table_size,
                slot,
            };
            Choice::Endpoint(Chosen {
                backend: *backend,
                backend_id,
                service_id,
            })
        }
        None => Choice::NoEndpoint,
    }
}

/// The backend ids of the `MAGLEV_CHUNK` slots around `drawn` (its chunk of the table);
/// slots past the table's end hold 0.
#[inline(always)]
pub fn neighbours(drawn: &Drawn) -> Option<&'static [u32; MAGLEV_CHUNK as usize]> {
    let key = MaglevKey {
        table_id: drawn.table_id,
        chunk: drawn.slot / MAGLEV_CHUNK,
    };
    // SAFETY: as in `choose`.
    unsafe { MAGLEV.get(&key) }.map(|chunk| &chunk.backends)
}

/// The endpoint behind a backend id, if it still exists.
#[inline(always)]
pub fn backend(backend_id: u32) -> Option<Backend> {
    // SAFETY: as in `choose`.
    unsafe { BACKENDS.get(&backend_id) }.copied()
}

/// Spreads sequential socket cookies over the table (a 64-bit finalizer, splitmix64).
#[inline(always)]
pub fn mix_cookie(cookie: u64) -> u32 {
    let mut z = cookie.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)) as u32
}
