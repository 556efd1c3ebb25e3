//! Direct bpf(2) queries, independent of the agent: what is attached to a cgroup, and
//! whether a program, link or map id still exists in the kernel.

use std::{
    collections::{BTreeMap, BTreeSet},
    ffi::CString,
    os::unix::ffi::OsStrExt as _,
    path::Path,
};

const BPF_PROG_QUERY: i64 = 16;
const BPF_PROG_GET_FD_BY_ID: i64 = 13;
const BPF_MAP_GET_FD_BY_ID: i64 = 14;
const BPF_LINK_GET_FD_BY_ID: i64 = 30;

/// The socket hooks weft attaches to, as bpf_attach_type numbers with their names.
pub const SOCKET_HOOKS: [(u32, &str); 12] = [
    (0, "inet_ingress"),
    (1, "inet_egress"),
    (3, "sock_ops"),
    (10, "connect4"),
    (11, "connect6"),
    (14, "sendmsg4"),
    (15, "sendmsg6"),
    (19, "recvmsg4"),
    (20, "recvmsg6"),
    (29, "getpeername4"),
    (30, "getpeername6"),
    (34, "sock_release"),
];

fn bpf(cmd: i64, attr: &mut [u64; 16]) -> i64 {
    // SAFETY: attr is a zero-initialised buffer at least as large as the union members used.
    unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            std::mem::size_of_val(attr),
        )
    }
}

/// Program and link ids attached to `cgroup` for one attach type.
pub fn attached(cgroup: &Path, attach_type: u32) -> (Vec<u32>, Vec<u32>) {
    let path = CString::new(cgroup.as_os_str().as_bytes()).unwrap();
    // SAFETY: plain open of a directory.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY) };
    assert!(
        fd >= 0,
        "open {}: {}",
        cgroup.display(),
        std::io::Error::last_os_error()
    );
    let mut prog_ids = [0u32; 64];
    let mut attr = [0u64; 16];
    // Layout of bpf_attr.query: target_fd u32, attach_type u32, query_flags u32,
    // attach_flags u32, prog_ids u64, prog_cnt u32. Its `link_ids` stays unset: kernels
    // before 6.6 reject the whole query when it is set (EINVAL), and for cgroup hooks the
    // kernel does not fill it (6.18 returns zeros).
    attr[0] = fd as u64 | (u64::from(attach_type) << 32);
    attr[2] = prog_ids.as_mut_ptr() as u64;
    attr[3] = prog_ids.len() as u64;
    let rc = bpf(BPF_PROG_QUERY, &mut attr);
    let error = std::io::Error::last_os_error();
    // SAFETY: closing the fd we opened.
    unsafe { libc::close(fd) };
    assert!(rc == 0, "BPF_PROG_QUERY on {}: {error}", cgroup.display());
    let count = (attr[3] & 0xffff_ffff) as usize;
    let programs = prog_ids[..count].to_vec();
    let links = links_of(&programs);
    (programs, links)
}

/// The ids of the links that attach `programs`, found by walking every link in the kernel.
fn links_of(programs: &[u32]) -> Vec<u32> {
    aya::programs::loaded_links()
        .filter_map(Result::ok)
        .filter(|link| programs.contains(&link.program_id()))
        .map(|link| link.id())
        .collect()
}

fn exists(cmd: i64, id: u32) -> bool {
    let mut attr = [0u64; 16];
    attr[0] = u64::from(id);
    let fd = bpf(cmd, &mut attr);
    if fd >= 0 {
        // SAFETY: closing the fd the kernel just gave us.
        unsafe { libc::close(fd as i32) };
        return true;
    }
    false
}

pub fn program_exists(id: u32) -> bool {
    exists(BPF_PROG_GET_FD_BY_ID, id)
}

pub fn link_exists(id: u32) -> bool {
    exists(BPF_LINK_GET_FD_BY_ID, id)
}

pub fn map_exists(id: u32) -> bool {
    exists(BPF_MAP_GET_FD_BY_ID, id)
}

/// Ids of the maps pinned in `dir`.
pub fn pinned_map_ids(dir: &Path) -> Vec<u32> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| aya::maps::MapInfo::from_pin(e.path()).ok())
                .map(|info| info.id())
                .collect()
        })
        .unwrap_or_default()
}

/// A pinned hash map (LRU or not) of `weft`'s, seen as raw key and value bytes: the tests
/// write and count entries behind the agent's back, as a foreign writer or a full kernel
/// table would.
pub struct RawMap<const K: usize, const V: usize> {
    map: aya::maps::HashMap<aya::maps::MapData, [u8; K], [u8; V]>,
}

impl<const K: usize, const V: usize> RawMap<K, V> {
    pub fn open(path: &Path) -> Self {
        let data = aya::maps::MapData::from_pin(path)
            .unwrap_or_else(|e| panic!("opening pinned map {}: {e}", path.display()));
        let lru = aya::maps::MapInfo::from_pin(path)
            .map(|info| matches!(info.map_type(), Ok(aya::maps::MapType::LruHash)))
            .unwrap_or(false);
        let map = if lru {
            aya::maps::Map::LruHashMap(data)
        } else {
            aya::maps::Map::HashMap(data)
        };
        RawMap {
            map: aya::maps::HashMap::try_from(map)
                .unwrap_or_else(|e| panic!("{} as a hash map: {e}", path.display())),
        }
    }

    pub fn insert(&mut self, key: [u8; K], value: [u8; V]) -> std::io::Result<()> {
        self.map
            .insert(&key, &value, 0)
            .map_err(|e| std::io::Error::other(e.to_string()))
    }

    pub fn remove(&mut self, key: &[u8; K]) {
        self.map.remove(key).expect("removing a map entry");
    }

    pub fn len(&self) -> usize {
        self.map.keys().filter(Result::is_ok).count()
    }

    pub fn entries(&self) -> Vec<([u8; K], [u8; V])> {
        self.map.iter().filter_map(Result::ok).collect()
    }

    /// Removes every entry (as if the kernel had evicted them all).
    pub fn clear(&mut self) {
        for (key, _) in self.entries() {
            let _ = self.map.remove(&key);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Pins the map pinned at `from` again at `to` (a bpffs path that is then not free).
pub fn pin_again(from: &Path, to: &Path) {
    let map = aya::maps::MapData::from_pin(from)
        .unwrap_or_else(|e| panic!("opening pinned map {}: {e}", from.display()));
    map.pin(to)
        .unwrap_or_else(|e| panic!("pinning at {}: {e}", to.display()));
}

/// The socket's cookie (SO_COOKIE): how the kernel programs key per-socket state.
pub fn socket_cookie(socket: &impl std::os::fd::AsRawFd) -> u64 {
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into the u64 we own.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "SO_COOKIE: {}", std::io::Error::last_os_error());
    cookie
}

/// What weft's maps hold, as a reader of the kernel sees it: per service key, the backend
/// of every slot of its table; and every backend. Raw bytes of the kernel layout
/// (ServiceKey 20, Backend 20), so ids, which differ between installs, drop out.
#[derive(Debug, PartialEq, Eq)]
pub struct KernelTables {
    pub tables: BTreeMap<Vec<u8>, Vec<Vec<u8>>>,
    pub backends: BTreeSet<Vec<u8>>,
}

/// The `KernelTables` of the maps under `maps_dir`, which must be consistent (no write in
/// progress).
pub fn kernel_tables(maps_dir: &Path) -> KernelTables {
    try_kernel_tables(maps_dir).unwrap_or_else(|why| panic!("{why}"))
}

/// The `KernelTables` of the maps under `maps_dir`, or why they are not consistent: maps
/// are read one after another, so a reader racing the agent's writes may see a service
/// pointing at a table that was just replaced. Pollers retry.
pub fn try_kernel_tables(maps_dir: &Path) -> Result<KernelTables, String> {
    let services = RawMap::<20, 16>::open(&maps_dir.join("WEFT_SERVICE_V1")).entries();
    let backends: BTreeMap<u32, [u8; 20]> =
        RawMap::<4, 20>::open(&maps_dir.join("WEFT_BACKEND_V1"))
            .entries()
            .into_iter()
            .map(|(id, b)| (u32::from_ne_bytes(id), b))
            .collect();
    let chunks: BTreeMap<(u32, u32), [u8; 256]> =
        RawMap::<8, 256>::open(&maps_dir.join("WEFT_MAGLEV_V1"))
            .entries()
            .into_iter()
            .map(|(key, chunk)| {
                let word = |i: usize| u32::from_ne_bytes(key[i..i + 4].try_into().unwrap());
                ((word(0), word(4)), chunk)
            })
            .collect();
    let mut tables = BTreeMap::new();
    let mut used = 0;
    for (key, value) in services {
        let word = |i: usize| u32::from_ne_bytes(value[i..i + 4].try_into().unwrap());
        let (table_id, size) = (word(4), word(8) as usize);
        let mut slots = Vec::with_capacity(size);
        for chunk in 0..size.div_ceil(64) {
            let c = chunks
                .get(&(table_id, chunk as u32))
                .ok_or_else(|| format!("table {table_id} lacks chunk {chunk}"))?;
            used += 1;
            for slot in c.chunks(4) {
                let id = u32::from_ne_bytes(slot.try_into().unwrap());
                slots.push(id);
            }
        }
        slots.truncate(size);
        let endpoints = slots
            .iter()
            .map(|id| {
                backends
                    .get(id)
                    .map(|b| b.to_vec())
                    .ok_or_else(|| format!("a slot names backend {id}, not in the map"))
            })
            .collect::<Result<_, _>>()?;
        tables.insert(key.to_vec(), endpoints);
    }
    if used != chunks.len() {
        return Err(format!(
            "{} table chunks no service uses",
            chunks.len().saturating_sub(used)
        ));
    }
    Ok(KernelTables {
        tables,
        backends: backends.values().map(|b| b.to_vec()).collect(),
    })
}

/// Names of the programs attached with TCX to `interface` (both directions) in `netns`;
/// empty on a kernel without TCX.
pub fn tcx_programs(netns: &crate::NetNs, interface: &'static str) -> Vec<String> {
    use aya::programs::{SchedClassifier, tc::TcAttachType};
    netns.run(move || {
        let name = std::ffi::CString::new(interface).expect("interface name");
        [TcAttachType::Ingress, TcAttachType::Egress]
            .into_iter()
            .filter_map(|direction| SchedClassifier::query_tcx(name.as_c_str(), direction).ok())
            .flat_map(|(_, programs)| programs)
            .map(|p| p.name_as_str().unwrap_or("?").to_string())
            .collect()
    })
}

const BPF_MAP_CREATE: i64 = 0;
const BPF_OBJ_PIN: i64 = 6;
const BPF_MAP_TYPE_ARRAY: u64 = 2;

/// Creates a one-entry array map with `value_size`-byte values and pins it at `path` (the
/// pin holds it until removed): a map of another layout where weft expects its own.
pub fn pin_array_map(path: &Path, value_size: u32) -> std::io::Result<()> {
    let mut attr = [0u64; 16];
    // bpf_attr.map_create: map_type u32, key_size u32, value_size u32, max_entries u32.
    attr[0] = BPF_MAP_TYPE_ARRAY | (4 << 32);
    attr[1] = u64::from(value_size) | (1 << 32);
    let fd = bpf(BPF_MAP_CREATE, &mut attr);
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let pathname = CString::new(path.as_os_str().as_bytes()).expect("no NUL in path");
    let mut attr = [0u64; 16];
    // bpf_attr.obj_pin: pathname u64, bpf_fd u32, file_flags u32.
    attr[0] = pathname.as_ptr() as u64;
    attr[1] = fd as u64;
    let rc = bpf(BPF_OBJ_PIN, &mut attr);
    let error = std::io::Error::last_os_error();
    // SAFETY: closing the fd the kernel gave us; the pin keeps the map.
    unsafe { libc::close(fd as i32) };
    if rc != 0 {
        return Err(error);
    }
    Ok(())
}
