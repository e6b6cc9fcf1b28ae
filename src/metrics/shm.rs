//! A worker's metric values, in memory shared with the master.
//!
//! The master creates one region (a memfd) per worker it starts and maps it
//! read-only; the worker maps it read-write and counts straight into it with
//! atomic adds. So the master reads every request counted up to the instant
//! of a scrape, without asking, and a worker that is killed loses nothing:
//! its region stays with the master, which folds it into the cluster's
//! totals.
//!
//! Layout, in 8-byte words: a header (magic, version, slot capacity, arena
//! capacity, slots used, arena bytes used), then fixed-size slots (state,
//! family, label offset, label length, values), then an arena of label text.
//! Only the worker writes; a slot becomes visible to the master by a release
//! store of its state after its labels are written.

use std::num::NonZeroUsize;
use std::os::fd::{AsFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use nix::sys::memfd::{MFdFlags, memfd_create};
use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap};

const MAGIC: u64 = u64::from_be_bytes(*b"corralm1");
const VERSION: u64 = 1;
const HEADER_WORDS: usize = 8;
/// Values per slot: room for a histogram's buckets, count and sum.
pub const VALUES: usize = super::family::HISTOGRAM_SUM + 1;
const SLOT_WORDS: usize = 4 + VALUES;
/// Series per worker; the memfd is sparse, so unused slots cost no memory.
pub const SLOTS: usize = 16 * 1024;
const ARENA: usize = 2 << 20;
const LEN: usize = (HEADER_WORDS + SLOTS * SLOT_WORDS) * 8 + ARENA;

const USED: usize = 4;
const ARENA_USED: usize = 5;
const READY: u64 = 1;

#[derive(Debug, thiserror::Error)]
pub enum ShmError {
    #[error("shared metrics memory: {0}")]
    Sys(#[from] nix::Error),
    #[error("shared metrics memory has an unknown layout")]
    Layout,
    #[error("shared metrics memory: {0}")]
    Io(#[from] std::io::Error),
}

/// One mapped region.
#[derive(Debug)]
pub struct Region {
    base: NonNull<u8>,
}

// SAFETY: the region is only accessed through atomics (see `words` and
// `arena`), which are safe to share between threads.
#[allow(unsafe_code)]
unsafe impl Send for Region {}
#[allow(unsafe_code)]
unsafe impl Sync for Region {}

/// A slot's identity, as read back by the master.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SeriesKey {
    pub family: u64,
    pub labels: String,
}

impl Region {
    /// Master: a new zeroed region, mapped read-only here, and its
    /// descriptor for the worker.
    pub fn create() -> Result<(Self, OwnedFd), ShmError> {
        let fd = memfd_create("corral-metrics", MFdFlags::MFD_CLOEXEC)?;
        nix::unistd::ftruncate(&fd, LEN as i64)?;
        let region = Self::map(&fd, ProtFlags::PROT_READ)?;
        Ok((region, fd))
    }

    /// Worker: maps the master's region read-write and sets up its header.
    pub fn open(fd: &OwnedFd) -> Result<Self, ShmError> {
        let region = Self::map(fd, ProtFlags::PROT_READ | ProtFlags::PROT_WRITE)?;
        let w = region.words();
        match w[0].load(Ordering::Acquire) {
            0 => {
                w[1].store(VERSION, Ordering::Relaxed);
                w[2].store(SLOTS as u64, Ordering::Relaxed);
                w[3].store(ARENA as u64, Ordering::Relaxed);
                w[0].store(MAGIC, Ordering::Release);
                Ok(region)
            }
            MAGIC if w[1].load(Ordering::Relaxed) == VERSION => Ok(region),
            _ => Err(ShmError::Layout),
        }
    }

    /// Master: maps read-only a region another master created (handed
    /// over in an upgrade), if it has this binary's size and layout: one
    /// of another shape would be misread, or fault when read past its end.
    pub fn adopt(fd: &OwnedFd) -> Result<Self, ShmError> {
        let size = nix::sys::stat::fstat(fd)?.st_size;
        if usize::try_from(size).ok() != Some(LEN) {
            return Err(ShmError::Layout);
        }
        let region = Self::map(fd, ProtFlags::PROT_READ)?;
        let w = region.words();
        match w[0].load(Ordering::Acquire) {
            // A worker that has not started yet writes this layout's header.
            0 => Ok(region),
            MAGIC if w[1].load(Ordering::Relaxed) == VERSION => Ok(region),
            _ => Err(ShmError::Layout),
        }
    }

    /// A region private to this process, for a server without a master.
    pub fn private() -> Result<Self, ShmError> {
        let fd = memfd_create("corral-metrics", MFdFlags::MFD_CLOEXEC)?;
        nix::unistd::ftruncate(&fd, LEN as i64)?;
        Self::open(&fd)
    }

    #[allow(unsafe_code)]
    fn map(fd: &OwnedFd, prot: ProtFlags) -> Result<Self, ShmError> {
        let len = NonZeroUsize::new(LEN).ok_or(ShmError::Layout)?;
        // SAFETY: a fresh shared mapping of a memfd of exactly `LEN` bytes;
        // nothing else in this process refers to its address range.
        let base = unsafe { mmap(None, len, prot, MapFlags::MAP_SHARED, fd.as_fd(), 0)? };
        Ok(Self { base: base.cast() })
    }

    #[allow(unsafe_code)]
    fn words(&self) -> &[AtomicU64] {
        // SAFETY: the mapping is `LEN` bytes, page-aligned, lives as long as
        // `self`, and is only ever accessed atomically (by this process and
        // the peer), so viewing its word part as atomics is sound.
        unsafe {
            std::slice::from_raw_parts(
                self.base.as_ptr().cast::<AtomicU64>(),
                HEADER_WORDS + SLOTS * SLOT_WORDS,
            )
        }
    }

    #[allow(unsafe_code)]
    fn arena(&self) -> &[AtomicU8] {
        let offset = (HEADER_WORDS + SLOTS * SLOT_WORDS) * 8;
        // SAFETY: as for `words`; the arena is the mapping's tail.
        unsafe {
            std::slice::from_raw_parts(self.base.as_ptr().add(offset).cast::<AtomicU8>(), ARENA)
        }
    }

    fn slot(&self, i: usize) -> &[AtomicU64] {
        let start = HEADER_WORDS + i * SLOT_WORDS;
        &self.words()[start..start + SLOT_WORDS]
    }

    /// The values of slot `i`.
    pub fn values(&self, i: usize) -> &[AtomicU64] {
        &self.slot(i)[4..]
    }

    /// Worker: claims a slot for a new series; `None` when full. Callers
    /// serialise allocation (one writer).
    pub fn allocate(&self, family: u64, labels: &str) -> Option<usize> {
        let w = self.words();
        let i = w[USED].load(Ordering::Relaxed) as usize;
        let off = w[ARENA_USED].load(Ordering::Relaxed) as usize;
        if i >= SLOTS || off + labels.len() > ARENA {
            return None;
        }
        for (dst, b) in self.arena()[off..off + labels.len()]
            .iter()
            .zip(labels.bytes())
        {
            dst.store(b, Ordering::Relaxed);
        }
        let slot = self.slot(i);
        slot[1].store(family, Ordering::Relaxed);
        slot[2].store(off as u64, Ordering::Relaxed);
        slot[3].store(labels.len() as u64, Ordering::Relaxed);
        slot[0].store(READY, Ordering::Release);
        w[ARENA_USED].store((off + labels.len()) as u64, Ordering::Relaxed);
        w[USED].store(i as u64 + 1, Ordering::Release);
        Some(i)
    }

    /// Master: every published series with its slot index.
    pub fn series(&self) -> Vec<(SeriesKey, usize)> {
        let w = self.words();
        let used = (w[USED].load(Ordering::Acquire) as usize).min(SLOTS);
        (0..used)
            .filter_map(|i| {
                let slot = self.slot(i);
                if slot[0].load(Ordering::Acquire) != READY {
                    return None;
                }
                let off = slot[2].load(Ordering::Relaxed) as usize;
                let len = slot[3].load(Ordering::Relaxed) as usize;
                let bytes: Vec<u8> = self
                    .arena()
                    .get(off..off + len)?
                    .iter()
                    .map(|b| b.load(Ordering::Relaxed))
                    .collect();
                let labels = String::from_utf8(bytes).ok()?;
                Some((
                    SeriesKey {
                        family: slot[1].load(Ordering::Relaxed),
                        labels,
                    },
                    i,
                ))
            })
            .collect()
    }
}

impl Drop for Region {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `map` mapped; every reference into it
        // borrows `self`, so none outlives this.
        if let Err(e) = unsafe { munmap(self.base.cast(), LEN) } {
            tracing::warn!(error = %e, "unmapping a metrics region failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_the_worker_writes_the_master_reads() {
        let (master, fd) = Region::create().unwrap();
        let worker = Region::open(&fd).unwrap();
        let a = worker.allocate(1, "route=a").unwrap();
        let b = worker.allocate(2, "route=b\u{1f}code=200").unwrap();
        worker.values(a)[0].fetch_add(3, Ordering::Relaxed);
        worker.values(b)[VALUES - 1].fetch_add(9, Ordering::Relaxed);
        drop(worker);
        let series = master.series();
        assert_eq!(series.len(), 2);
        assert_eq!(
            series[1].0,
            SeriesKey {
                family: 2,
                labels: "route=b\u{1f}code=200".into()
            }
        );
        assert_eq!(master.values(series[0].1)[0].load(Ordering::Relaxed), 3);
        assert_eq!(
            master.values(series[1].1)[VALUES - 1].load(Ordering::Relaxed),
            9
        );
    }
}
