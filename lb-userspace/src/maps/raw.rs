//! One kernel map as bytes: lookup, update, delete and key walks through the `bpf()` syscall on
//! the map's descriptor. Every agent-written map is reached through this one type (the map
//! table gives each its key and value encoding), whatever its kind: a hash map and an LPM trie
//! answer the same element commands.

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::maps::MapData;

use super::MapError;

/// `bpf()` commands (include/uapi/linux/bpf.h, `enum bpf_cmd`).
const BPF_MAP_LOOKUP_ELEM: u32 = 1;
const BPF_MAP_UPDATE_ELEM: u32 = 2;
const BPF_MAP_DELETE_ELEM: u32 = 3;
const BPF_MAP_GET_NEXT_KEY: u32 = 4;
const BPF_MAP_LOOKUP_BATCH: u32 = 24;
const BPF_MAP_UPDATE_BATCH: u32 = 26;
/// Bytes of values one batch lookup reads at most.
const READ_BATCH_BYTES: usize = 4 << 20;
/// The kernel's "operation not supported" for map kinds without batch commands (ENOTSUPP, not
/// exported to userspace headers).
const ENOTSUPP: i32 = 524;

/// The attribute of the element commands (`union bpf_attr`, the `BPF_MAP_*_ELEM` member).
#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    /// `value`, or `next_key` for `BPF_MAP_GET_NEXT_KEY`.
    value: u64,
    flags: u64,
}

/// The attribute of the batch commands (`union bpf_attr`, the `BPF_MAP_*_BATCH` member).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    /// In: elements given; out: elements processed.
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// A kernel map with its name and element sizes, checked against what the table expects.
pub struct RawMap {
    name: &'static str,
    data: MapData,
    key_size: usize,
    value_size: usize,
    max_entries: u32,
    /// An array (every index exists): a delete writes zeros, and an all-zero slot is no entry.
    array: bool,
}

impl RawMap {
    /// Wraps `data`, refusing a map whose key or value size is not the expected one (a map of
    /// another layout would be misread byte for byte).
    pub fn new(name: &'static str, data: MapData, key_size: usize, value_size: usize) -> Result<Self, MapError> {
        let info = data.info().map_err(|source| MapError::Open { name, source })?;
        let found = (info.key_size() as usize, info.value_size() as usize);
        if found != (key_size, value_size) {
            return Err(MapError::Layout { name, expected: (key_size, value_size), found });
        }
        let array = matches!(info.map_type(), Ok(aya::maps::MapType::Array | aya::maps::MapType::PerCpuArray));
        Ok(Self { name, data, key_size, value_size, max_entries: info.max_entries(), array })
    }

    /// Wraps any map for reading its bytes as they are: keys and values of the kernel's sizes (a
    /// per-CPU map's value is what a lookup from userspace returns: one 8-aligned value per
    /// possible CPU).
    pub fn any(name: &'static str, data: MapData) -> Result<Self, MapError> {
        use aya::maps::MapType;
        let info = data.info().map_err(|source| MapError::Open { name, source })?;
        let kind = info.map_type();
        let per_cpu = matches!(kind, Ok(MapType::PerCpuArray | MapType::PerCpuHash | MapType::LruPerCpuHash));
        let mut value_size = info.value_size() as usize;
        if per_cpu {
            let cpus = aya::util::nr_cpus().map_err(|(_, source)| MapError::Read { name, source })?;
            value_size = value_size.div_ceil(8) * 8 * cpus;
        }
        let array = matches!(kind, Ok(MapType::Array | MapType::PerCpuArray));
        Ok(Self { name, data, key_size: info.key_size() as usize, value_size, max_entries: info.max_entries(), array })
    }

    /// The capacity the kernel gave the map.
    pub fn max_entries(&self) -> u32 {
        self.max_entries
    }

    fn call(&self, cmd: u32, key: *const u8, value: *const u8, flags: u64) -> io::Result<()> {
        let attr =
            ElemAttr { map_fd: self.data.fd().as_fd().as_raw_fd() as u32, _pad: 0, key: key as u64, value: value as u64, flags };
        // SAFETY: an element command on our own map descriptor; `key` and `value` point to
        // buffers of the map's key and value sizes (checked by the callers) that outlive the
        // call.
        let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, &raw const attr, size_of::<ElemAttr>() as u32) };
        if r == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
    }

    /// Runs batch command `cmd` (`BPF_MAP_*_BATCH`) on this map with `attr` (its descriptor
    /// filled in); the kernel writes back `attr.count`.
    ///
    /// # Safety
    /// `attr`'s pointers must hold `attr.count` keys and values of the map's sizes, and its
    /// tokens (if any) at least a key's size, all valid for writes for the call.
    unsafe fn batch(&self, cmd: u32, attr: &mut BatchAttr) -> io::Result<()> {
        attr.map_fd = self.data.fd().as_fd().as_raw_fd() as u32;
        // SAFETY: a batch command on our own map descriptor; the caller vouches for the
        // buffers `attr` points to.
        let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, std::ptr::from_mut(attr), size_of::<BatchAttr>() as u32) };
        if r == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
    }

    /// Writes `key` → `value` (creating or replacing).
    pub fn update(&self, key: &[u8], value: &[u8]) -> Result<(), MapError> {
        assert_eq!((key.len(), value.len()), (self.key_size, self.value_size), "{}: element size", self.name);
        self.call(BPF_MAP_UPDATE_ELEM, key.as_ptr(), value.as_ptr(), 0)
            .map_err(|source| MapError::Write { name: self.name, source })
    }

    /// Writes `n` entries, their keys and values concatenated in `keys` and `values`, in order,
    /// with one `BPF_MAP_UPDATE_BATCH` (one element at a time on map kinds without batch
    /// commands). Returns how many were written: all of them, or those before an error.
    pub fn update_batch(&self, keys: &[u8], values: &[u8], n: usize) -> (usize, Result<(), MapError>) {
        assert_eq!((keys.len(), values.len()), (n * self.key_size, n * self.value_size), "{}: batch sizes", self.name);
        if n == 0 {
            return (0, Ok(()));
        }
        let mut attr =
            BatchAttr { keys: keys.as_ptr() as u64, values: values.as_ptr() as u64, count: n as u32, ..BatchAttr::default() };
        // SAFETY: `keys` and `values` hold `n` keys and values of the map's sizes (asserted
        // above) and outlive the call.
        let Err(err) = (unsafe { self.batch(BPF_MAP_UPDATE_BATCH, &mut attr) }) else {
            return (n, Ok(()));
        };
        // The kernel writes back how many it processed only once it started on the elements; a
        // refusal up front (a frozen map, bad flags) leaves the count as given: nothing written.
        let done = if (attr.count as usize) < n { attr.count as usize } else { 0 };
        if done == 0 && matches!(err.raw_os_error(), Some(libc::EINVAL | libc::EOPNOTSUPP | ENOTSUPP)) {
            // No batch commands for this map kind (an LPM trie) or this kernel.
            for i in 0..n {
                let key = &keys[i * self.key_size..(i + 1) * self.key_size];
                if let Err(e) = self.update(key, &values[i * self.value_size..(i + 1) * self.value_size]) {
                    return (i, Err(e));
                }
            }
            return (n, Ok(()));
        }
        (done, Err(MapError::Write { name: self.name, source: err }))
    }

    /// Deletes `key` (zeroes its slot in an array); a key that is not there is not an error
    /// (deletes are idempotent).
    pub fn delete(&self, key: &[u8]) -> Result<(), MapError> {
        assert_eq!(key.len(), self.key_size, "{}: key size", self.name);
        if self.array {
            return self.update(key, &vec![0u8; self.value_size]);
        }
        match self.call(BPF_MAP_DELETE_ELEM, key.as_ptr(), std::ptr::null(), 0) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            other => other.map_err(|source| MapError::Delete { name: self.name, source }),
        }
    }

    /// Calls `f` with every entry's key and value bytes, in the kernel's order, through
    /// buffers reused for the whole read: reading a map back costs no allocation per entry
    /// (drift repair reads every map of a large cluster: 400,000 entries at 10,000 Services).
    /// Read in batches (`BPF_MAP_LOOKUP_BATCH`, thousands of entries per syscall: an array of
    /// 65,536 backends is 16 calls instead of 131,072), else by walking the keys. Left out: an
    /// array's all-zero slot, and in a key walk an entry deleted between the walk and its
    /// lookup. A key deleted during a walk may restart it (the kernel's `GET_NEXT_KEY`
    /// semantics), so `f` may see a key twice (callers collect into maps).
    pub fn for_each_entry(&self, mut f: impl FnMut(&[u8], &[u8])) -> Result<(), MapError> {
        match self.for_each_batch(&mut f) {
            Ok(true) => Ok(()),
            Ok(false) => self.for_each_walked(f),
            Err(source) => Err(MapError::Read { name: self.name, source }),
        }
    }

    /// [`Self::for_each_entry`] through `BPF_MAP_LOOKUP_BATCH`. `Ok(false)`: walk the keys
    /// instead (this map kind, an LPM trie, or kernel has no batch lookup; or a hash bucket
    /// outgrew a call).
    fn for_each_batch(&self, f: &mut impl FnMut(&[u8], &[u8])) -> io::Result<bool> {
        // Entries per call: a few MiB of values at most (a per-CPU value is one per CPU).
        let per_call = (READ_BATCH_BYTES / self.value_size.max(1)).clamp(64, 4096);
        let (mut keys, mut values) = (vec![0u8; per_call * self.key_size], vec![0u8; per_call * self.value_size]);
        // The position token: a bucket or index the kernel writes back (4 bytes) or, for map
        // kinds without their own batch code, a key.
        let token_size = self.key_size.max(8);
        let (mut token_in, mut token_out) = (vec![0u8; token_size], vec![0u8; token_size]);
        let mut first = true;
        loop {
            let mut attr = BatchAttr {
                in_batch: if first { 0 } else { token_in.as_ptr() as u64 },
                out_batch: token_out.as_mut_ptr() as u64,
                keys: keys.as_mut_ptr() as u64,
                values: values.as_mut_ptr() as u64,
                count: per_call as u32,
                ..BatchAttr::default()
            };
            // SAFETY: `keys` and `values` hold `per_call` keys and values of the map's sizes,
            // the tokens `token_size` bytes (at least a key), all outliving the call; the
            // kernel writes at most `attr.count` entries and one token.
            let err = unsafe { self.batch(BPF_MAP_LOOKUP_BATCH, &mut attr) }.err();
            let errno = err.as_ref().and_then(io::Error::raw_os_error);
            if first && matches!(errno, Some(libc::EINVAL | libc::EOPNOTSUPP | ENOTSUPP)) {
                return Ok(false);
            }
            if errno == Some(libc::ENOSPC) {
                // One hash bucket holds more entries than a call returns: walk instead (`f`
                // sees the entries of the earlier calls again).
                return Ok(false);
            }
            match errno {
                None | Some(libc::ENOENT) => {}
                Some(_) => return Err(err.expect("an errno comes with an error")),
            }
            let n = (attr.count as usize).min(per_call);
            for i in 0..n {
                let value = &values[i * self.value_size..(i + 1) * self.value_size];
                if self.array && value.iter().all(|b| *b == 0) {
                    continue;
                }
                f(&keys[i * self.key_size..(i + 1) * self.key_size], value);
            }
            if errno == Some(libc::ENOENT) {
                return Ok(true); // the last entries came with the end
            }
            first = false;
            std::mem::swap(&mut token_in, &mut token_out);
        }
    }

    /// [`Self::for_each_entry`] by walking the keys (`GET_NEXT_KEY`, then a lookup each).
    fn for_each_walked(&self, mut f: impl FnMut(&[u8], &[u8])) -> Result<(), MapError> {
        let (mut key, mut next) = (vec![0u8; self.key_size], vec![0u8; self.key_size]);
        let mut value = vec![0u8; self.value_size];
        let mut first = true;
        loop {
            let prev = if first { std::ptr::null() } else { key.as_ptr() };
            match self.call(BPF_MAP_GET_NEXT_KEY, prev, next.as_mut_ptr(), 0) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
                Err(source) => return Err(MapError::Read { name: self.name, source }),
            }
            first = false;
            std::mem::swap(&mut key, &mut next);
            match self.call(BPF_MAP_LOOKUP_ELEM, key.as_ptr(), value.as_mut_ptr(), 0) {
                Ok(()) if self.array && value.iter().all(|b| *b == 0) => {}
                Ok(()) => f(&key, &value),
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(source) => return Err(MapError::Read { name: self.name, source }),
            }
        }
    }

    /// How many keys the map holds now (a walk that keeps no key but the last).
    pub fn len(&self) -> Result<usize, MapError> {
        let (mut key, mut next) = (vec![0u8; self.key_size], vec![0u8; self.key_size]);
        let mut n = 0;
        loop {
            let prev = if n == 0 { std::ptr::null() } else { key.as_ptr() };
            match self.call(BPF_MAP_GET_NEXT_KEY, prev, next.as_mut_ptr(), 0) {
                Ok(()) => {
                    n += 1;
                    std::mem::swap(&mut key, &mut next);
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(n),
                Err(source) => return Err(MapError::Read { name: self.name, source }),
            }
        }
    }
}
