//! `BPF_MAP_LOOKUP_BATCH`, `BPF_MAP_UPDATE_BATCH` and `BPF_MAP_DELETE_BATCH` (hash and LRU
//! hash maps, Linux ≥ 5.6), which aya does not wrap: an install from scratch writes hundreds
//! of thousands of elements, and the flow expiry reads a conntrack table as large; one
//! syscall per element (two for a walk) was most of their cost.

use std::os::fd::{AsRawFd as _, BorrowedFd};

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;
/// `ENOTSUPP`, the kernel-internal errno a map type without batch operations returns.
const ENOTSUPP: i32 = 524;

#[derive(Debug)]
pub enum BatchError {
    /// The kernel (or this map type) has no batch operations: write one by one.
    Unsupported,
    /// The first `done` elements were processed, then element `done` failed.
    Failed { done: usize, error: std::io::Error },
}

/// Writes `keys[i] → values[i]` in order, stopping at the first failure.
pub fn update<K, V>(map: BorrowedFd<'_>, keys: &[K], values: &[V]) -> Result<(), BatchError> {
    debug_assert_eq!(keys.len(), values.len());
    call(
        BPF_MAP_UPDATE_BATCH,
        map,
        keys.as_ptr().cast(),
        values.as_ptr().cast(),
        keys.len(),
    )
}

/// Deletes `keys` in order, stopping at the first failure (a missing key fails).
pub fn delete<K>(map: BorrowedFd<'_>, keys: &[K]) -> Result<(), BatchError> {
    call(
        BPF_MAP_DELETE_BATCH,
        map,
        keys.as_ptr().cast(),
        std::ptr::null(),
        keys.len(),
    )
}

/// Reads every element of a hash map, up to `chunk` per syscall. Elements written or
/// removed during the walk may or may not be in it; none is read twice.
pub fn lookup_all<K: Copy + Default, V: Copy + Default>(
    map: BorrowedFd<'_>,
    chunk: usize,
) -> Result<Vec<(K, V)>, BatchError> {
    let mut chunk = chunk.max(1);
    let mut keys = vec![K::default(); chunk];
    let mut values = vec![V::default(); chunk];
    let mut elements = Vec::new();
    // The kernel's position in the walk (a bucket index for hash maps), opaque here.
    let mut position = 0u64;
    let mut next_position = 0u64;
    let mut started = false;
    loop {
        let mut attr = BatchAttr::new(
            map,
            keys.as_mut_ptr().cast(),
            values.as_mut_ptr().cast(),
            chunk,
        );
        attr.positions(
            started.then_some(&raw const position),
            &raw mut next_position,
        );
        // SAFETY: `keys` and `values` hold `chunk` elements of the map's key and value sizes
        // (the callers' typed slices), the positions 8 bytes each (the kernel writes 4 for
        // hash maps).
        let rc = unsafe { attr.run(BPF_MAP_LOOKUP_BATCH) };
        let error = (rc != 0).then(std::io::Error::last_os_error);
        let errno = error.as_ref().and_then(std::io::Error::raw_os_error);
        // On success and at the end (ENOENT) the kernel writes back how many it copied.
        if rc == 0 || errno == Some(libc::ENOENT) {
            let read = attr.count().min(chunk);
            elements.extend(
                keys[..read]
                    .iter()
                    .copied()
                    .zip(values[..read].iter().copied()),
            );
        }
        match (rc, errno) {
            (0, _) => {
                position = next_position;
                started = true;
            }
            (_, Some(libc::ENOENT)) => return Ok(elements),
            // One bucket holds more elements than a chunk: read it with room enough.
            (_, Some(libc::ENOSPC)) if chunk < 1 << 20 => {
                chunk *= 2;
                keys.resize(chunk, K::default());
                values.resize(chunk, V::default());
            }
            (_, Some(libc::EINVAL | libc::EOPNOTSUPP | ENOTSUPP)) if !started => {
                return Err(BatchError::Unsupported);
            }
            _ => {
                return Err(BatchError::Failed {
                    done: elements.len(),
                    error: error.unwrap_or_else(std::io::Error::last_os_error),
                });
            }
        }
    }
}

fn call(
    cmd: libc::c_long,
    map: BorrowedFd<'_>,
    keys: *const u8,
    values: *const u8,
    count: usize,
) -> Result<(), BatchError> {
    if count == 0 {
        return Ok(());
    }
    let mut attr = BatchAttr::new(map, keys, values, count);
    // SAFETY: `keys` and `values` point at `count` contiguous elements of the map's key and
    // value sizes (the callers' typed slices), which the kernel only reads.
    if unsafe { attr.run(cmd) } == 0 {
        return Ok(());
    }
    let error = std::io::Error::last_os_error();
    match error.raw_os_error() {
        Some(libc::EINVAL | libc::EOPNOTSUPP | ENOTSUPP) if attr.count() == attr.asked => {
            Err(BatchError::Unsupported)
        }
        _ => Err(BatchError::Failed {
            // On failure the kernel writes back how many elements it processed.
            done: attr.count(),
            error,
        }),
    }
}

/// `bpf_attr.batch`: in_batch, out_batch, keys, values (u64 each), count (u32), map_fd
/// (u32), elem_flags, flags (u64 each).
struct BatchAttr {
    words: [u64; 8],
    /// The count asked for (the kernel overwrites it with the count done).
    asked: usize,
}

impl BatchAttr {
    fn new(map: BorrowedFd<'_>, keys: *const u8, values: *const u8, count: usize) -> BatchAttr {
        let count32 = u32::try_from(count).unwrap_or(u32::MAX);
        let mut words = [0u64; 8];
        words[2] = keys as u64;
        words[3] = values as u64;
        words[4] = u64::from(count32) | ((map.as_raw_fd() as u64) << 32);
        BatchAttr {
            words,
            asked: count32 as usize,
        }
    }

    /// Where a walk resumes (none: from the start) and where the kernel says it stopped.
    fn positions(&mut self, from: Option<*const u64>, to: *mut u64) {
        self.words[0] = from.map_or(0, |p| p as u64);
        self.words[1] = to as u64;
    }

    /// Elements the last call processed.
    fn count(&self) -> usize {
        (self.words[4] & 0xffff_ffff) as usize
    }

    /// # Safety
    /// The keys, values and positions given must be valid for the command: readable (and
    /// writable for a lookup) for the count's elements of the map's sizes.
    unsafe fn run(&mut self, cmd: libc::c_long) -> libc::c_long {
        // SAFETY: `words` outlives the call and is as large as the batch member; the
        // pointers in it are the caller's to vouch for.
        unsafe {
            libc::syscall(
                libc::SYS_bpf,
                cmd,
                self.words.as_mut_ptr(),
                std::mem::size_of_val(&self.words),
            )
        }
    }
}
