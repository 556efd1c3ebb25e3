//! Any endpoints (addresses, weights from 0 to 65535, up to 256 of them): the Maglev table
//! the planner builds gives each endpoint its share of the slots within one slot, every
//! slot names an endpoint with weight, and a service without weight gets no table.
#![no_main]

use std::net::{Ipv4Addr, SocketAddr};

use libfuzzer_sys::fuzz_target;
use weft::{
    layout,
    plan::maglev::{self, Member},
};

fuzz_target!(|data: &[u8]| {
    // Six bytes per endpoint: an address's last three octets, a port's low byte, a weight.
    let members: Vec<Member> = data
        .as_chunks::<6>()
        .0
        .iter()
        .take(256)
        .map(|b| {
            let address =
                SocketAddr::from((Ipv4Addr::new(10, b[0], b[1], b[2]), 8000 + u16::from(b[3])));
            Member {
                hash: layout::endpoint_hash(address),
                weight: u32::from(u16::from_le_bytes([b[4], b[5]])),
            }
        })
        .collect();
    let m = layout::table_size(members.len());
    let table = maglev::build(&members, m);
    let total: u64 = members.iter().map(|e| u64::from(e.weight)).sum();
    if total == 0 {
        assert!(table.is_empty(), "a table for a service without weight");
        return;
    }
    assert_eq!(table.len(), m as usize);
    let mut slots = vec![0u64; members.len()];
    for &index in &table {
        let member = members.get(index as usize).expect("a slot names no member");
        assert!(member.weight > 0, "a slot for an endpoint without weight");
        slots[index as usize] += 1;
    }
    for (member, &got) in members.iter().zip(&slots) {
        // |got/m - w/W| <= 1/m, in integers: |got*W - w*m| <= W.
        let want = u64::from(member.weight) * u64::from(m);
        assert!(
            (got * total).abs_diff(want) <= total,
            "weight {} of {total}: {got} of {m} slots",
            member.weight
        );
    }
});
