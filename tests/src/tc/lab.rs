//! The TC programs in the kernel, fed hand-built frames with `BPF_PROG_TEST_RUN`: the real
//! programs and real maps, loaded from the kernel object the agent embeds, with services
//! written into the maps as the agent writes them. No interface, no agent.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
};

use aya::{
    Ebpf, EbpfLoader, TestRun as _, TestRunOptions,
    maps::{HashMap, MapData, PerCpuArray},
    programs::SchedClassifier,
};
use weft_common::{
    Addr, Backend, FAMILY_V4, FAMILY_V6, FlowKey, FlowValue, MAGLEV_CHUNK, MaglevChunk, MaglevKey,
    ServiceKey, ServiceValue, VipKey, maps,
};

pub const TC_ACT_UNSPEC: i32 = -1;
pub const TC_ACT_SHOT: i32 = 2;

/// The kernel object: `WEFT_EBPF_OBJECT` (set by `cargo xtask test`), else the release build.
fn object() -> PathBuf {
    std::env::var_os("WEFT_EBPF_OBJECT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../target/bpf/bpfel-unknown-none/release/weft-ebpf")
        })
}

/// What a program did with a frame.
#[derive(Debug)]
pub struct Run {
    pub verdict: i32,
    pub frame: Vec<u8>,
}

/// The lab's bpffs directory, removed (with the maps pinned in it) when dropped: also when
/// loading panics, which matters because proptest catches that panic and loads again, and
/// every lab pins a full-size flow table.
struct PinDirectory(PathBuf);

impl Drop for PinDirectory {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub struct TcLab {
    ebpf: Ebpf,
    // Dropped after `ebpf`, so the maps are unpinned once the lab no longer holds them.
    _pins: PinDirectory,
    next_backend: u32,
    next_table: u32,
    next_service: u32,
}

fn kernel_addr(ip: IpAddr) -> (Addr, u8) {
    let word = |b: &[u8]| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]);
    match ip {
        IpAddr::V4(v4) => ([word(&v4.octets()), 0, 0, 0], FAMILY_V4),
        IpAddr::V6(v6) => {
            let o = v6.octets();
            (
                [
                    word(&o[0..4]),
                    word(&o[4..8]),
                    word(&o[8..12]),
                    word(&o[12..16]),
                ],
                FAMILY_V6,
            )
        }
    }
}

fn service_key(vip: SocketAddr, protocol: u8) -> ServiceKey {
    let (addr, family) = kernel_addr(vip.ip());
    ServiceKey {
        addr,
        port: vip.port().to_be(),
        protocol,
        family,
    }
}

impl TcLab {
    /// Loads the object with its shared maps pinned in a directory of the lab's own.
    pub fn load() -> TcLab {
        static LABS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = LABS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let pins = PinDirectory(PathBuf::from(format!(
            "/sys/fs/bpf/weft-tclab-{}-{n}",
            std::process::id()
        )));
        let _ = std::fs::remove_dir_all(&pins.0);
        std::fs::create_dir_all(&pins.0).expect("creating the lab's bpffs directory");
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&pins.0)
            // The object declares the LRU maps with one entry; the agent sizes them.
            .map_max_entries(maps::FLOWS, maps::FLOWS_CAPACITY)
            .map_max_entries(maps::FRAGS, maps::FRAGS_CAPACITY)
            .load_file(object())
            .unwrap_or_else(|e| panic!("loading {}: {e}", object().display()));
        for name in ["weft_tc_ingress", "weft_tc_egress"] {
            let program: &mut SchedClassifier = ebpf
                .program_mut(name)
                .unwrap_or_else(|| panic!("no program {name}"))
                .try_into()
                .expect("a classifier");
            program
                .load()
                .unwrap_or_else(|e| panic!("the verifier refused {name}: {e:?}"));
        }
        TcLab {
            ebpf,
            _pins: pins,
            next_backend: 1,
            next_table: 1,
            next_service: 1,
        }
    }

    fn hash<K: aya::Pod, V: aya::Pod>(&mut self, name: &str) -> HashMap<&mut MapData, K, V> {
        HashMap::try_from(
            self.ebpf
                .map_mut(name)
                .unwrap_or_else(|| panic!("no map {name}")),
        )
        .unwrap_or_else(|e| panic!("map {name}: {e}"))
    }

    /// Installs a service (as the agent does: endpoints, table, service entry, address) with
    /// a table of one slot per endpoint, slot i holding endpoint i. Returns its service id.
    pub fn service(&mut self, vip: SocketAddr, protocol: u8, endpoints: &[SocketAddr]) -> u32 {
        let id = self.next_service;
        self.next_service += 1;
        let (addr, family) = kernel_addr(vip.ip());
        self.hash::<VipKey, u32>(maps::VIPS)
            .insert(
                &VipKey {
                    addr,
                    family,
                    _pad: [0; 3],
                },
                &1,
                0,
            )
            .expect("writing the service address");
        self.set_table(vip, protocol, id, endpoints);
        id
    }

    /// Publishes a new table for a service (a weight change, as the kernel sees it).
    pub fn set_table(
        &mut self,
        vip: SocketAddr,
        protocol: u8,
        service_id: u32,
        endpoints: &[SocketAddr],
    ) {
        let mut ids = Vec::new();
        for endpoint in endpoints {
            let id = self.next_backend;
            self.next_backend += 1;
            let (addr, family) = kernel_addr(endpoint.ip());
            let backend = Backend {
                addr,
                port: endpoint.port().to_be(),
                family,
                _pad: 0,
            };
            self.hash::<u32, Backend>(maps::BACKENDS)
                .insert(&id, &backend, 0)
                .expect("writing a backend");
            ids.push(id);
        }
        let table_id = self.next_table;
        self.next_table += 1;
        let size = ids.len() as u32;
        let mut chunk = MaglevChunk {
            backends: [0; MAGLEV_CHUNK as usize],
        };
        chunk.backends[..ids.len()].copy_from_slice(&ids);
        if size > 0 {
            self.hash::<MaglevKey, MaglevChunk>(maps::MAGLEV)
                .insert(&MaglevKey { table_id, chunk: 0 }, &chunk, 0)
                .expect("writing a table");
        }
        let value = ServiceValue {
            service_id,
            table_id,
            table_size: size,
            flags: 0,
        };
        self.hash::<ServiceKey, ServiceValue>(maps::SERVICES)
            .insert(&service_key(vip, protocol), &value, 0)
            .expect("writing a service");
    }

    /// Removes every backend entry naming `endpoint` (the endpoint left every service).
    pub fn remove_endpoint(&mut self, endpoint: SocketAddr) {
        let (addr, _) = kernel_addr(endpoint.ip());
        let mut backends = self.hash::<u32, Backend>(maps::BACKENDS);
        let gone: Vec<u32> = backends
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, b)| b.addr == addr && u16::from_be(b.port) == endpoint.port())
            .map(|(id, _)| id)
            .collect();
        for id in gone {
            backends.remove(&id).expect("removing a backend");
        }
    }

    fn run(&mut self, program: &str, frame: &[u8]) -> Run {
        let program: &mut SchedClassifier = self
            .ebpf
            .program_mut(program)
            .expect("program")
            .try_into()
            .expect("a classifier");
        let mut out = vec![0u8; frame.len() + 256];
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ..TestRunOptions::new()
            })
            .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN of a {}-byte frame: {e:?}", frame.len()));
        out.truncate(result.data_size_out as usize);
        Run {
            verdict: result.return_value as i32,
            frame: out,
        }
    }

    /// The ingress program (client side) on `frame`.
    pub fn ingress(&mut self, frame: &[u8]) -> Run {
        self.run("weft_tc_ingress", frame)
    }

    /// The egress program (towards the client) on `frame`.
    pub fn egress(&mut self, frame: &[u8]) -> Run {
        self.run("weft_tc_egress", frame)
    }

    /// A TC counter summed over CPUs.
    pub fn counter(&self, index: u32) -> u64 {
        let counters: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(self.ebpf.map(maps::TC_COUNTERS).expect("counters"))
                .expect("per-CPU array");
        counters.get(&index, 0).map(|v| v.iter().sum()).unwrap_or(0)
    }

    /// Every conntrack entry.
    pub fn flows(&self) -> Vec<(FlowKey, FlowValue)> {
        let flows: HashMap<&MapData, FlowKey, FlowValue> =
            HashMap::try_from(self.ebpf.map(maps::FLOWS).expect("flows")).expect("hash");
        flows.iter().filter_map(Result::ok).collect()
    }
}
