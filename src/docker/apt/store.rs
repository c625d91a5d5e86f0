//! Where the apt cache keeps packages: a directory of the caller's
//! (`--apt-cache DIR`, kept, shared by runs at once) or of this session's
//! (removed at close), its counters for -d, and the disk space every
//! download in flight has reserved in it. A package appears in the
//! directory only whole, by rename, and nobody waits for anybody.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub struct Store {
    dir: PathBuf,
    temporary: bool,
    /// Bytes that downloads under way were promised and have not written
    /// yet: free space counts only what is written.
    reserved: Mutex<u64>,
}

impl Store {
    /// `--apt-cache DIR`: made if missing, kept.
    pub fn at(dir: &Path) -> Result<Store> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the apt cache {}", dir.display()))?;
        Ok(Store {
            dir: dir.to_path_buf(),
            temporary: false,
            reserved: Mutex::new(0),
        })
    }

    /// This session's cache, in $TMPDIR, removed at the end.
    pub fn session() -> Result<Store> {
        let dir = std::env::temp_dir().join(format!(
            "rdocker-apt-cache.{}.{}",
            std::process::id(),
            crate::docker::names::random_hex(4)
        ));
        std::fs::create_dir(&dir)
            .with_context(|| format!("cannot create the apt cache {}", dir.display()))?;
        Ok(Store {
            dir,
            temporary: true,
            reserved: Mutex::new(0),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn temporary(&self) -> bool {
        self.temporary
    }

    /// Reserve `len` bytes for a download, if the filesystem can take them
    /// on top of everything reserved and keep the margin that copies keep
    /// (archive.rs: 2%, 16 MiB to 1 GiB).
    pub fn reserve(self: &Arc<Self>, len: u64) -> Option<Reservation> {
        let mut r = Reservation {
            store: self.clone(),
            left: 0,
        };
        r.grow(len).then_some(r)
    }

    fn take(&self, len: u64) -> bool {
        let mut reserved = self.reserved.lock().unwrap_or_else(|e| e.into_inner());
        let room = match nix::sys::statvfs::statvfs(&self.dir) {
            Ok(st) => crate::docker::archive::leaves_room(&st, reserved.saturating_add(len)),
            Err(_) => false,
        };
        if room {
            *reserved += len;
        }
        room
    }

    fn give_back(&self, len: u64) {
        let mut reserved = self.reserved.lock().unwrap_or_else(|e| e.into_inner());
        *reserved = reserved.saturating_sub(len);
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if self.temporary {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Space a download may still write; what it has not written is given
/// back when dropped.
pub struct Reservation {
    store: Arc<Store>,
    left: u64,
}

impl Reservation {
    /// `n` more bytes are about to be written: within the reservation, or
    /// reserved now (a body of unknown length grows it as it comes).
    /// false: no room; nothing more may be written.
    pub fn write(&mut self, n: u64) -> bool {
        if n > self.left && !self.grow((n - self.left).max(GROW)) {
            return false;
        }
        self.left -= n;
        self.store.give_back(n);
        true
    }

    fn grow(&mut self, n: u64) -> bool {
        let ok = self.store.take(n);
        if ok {
            self.left += n;
        }
        ok
    }
}

/// How much a body of unknown length reserves at a time.
const GROW: u64 = 1 << 20;

impl Drop for Reservation {
    fn drop(&mut self) {
        self.store.give_back(self.left);
    }
}

/// What the proxy did, for -d.
#[derive(Default)]
pub struct Stats {
    pub hits: AtomicU64,
    pub hit_bytes: AtomicU64,
    pub stored: AtomicU64,
    pub stored_bytes: AtomicU64,
    pub passed: AtomicU64,
}

impl Stats {
    pub fn summary(&self) -> String {
        let mib = |b: &AtomicU64| b.load(Ordering::Relaxed) as f64 / (1 << 20) as f64;
        format!(
            "{} .debs from the cache ({:.1} MiB), {} fetched and kept ({:.1} MiB), {} other \
             requests passed through",
            self.hits.load(Ordering::Relaxed),
            mib(&self.hit_bytes),
            self.stored.load(Ordering::Relaxed),
            mib(&self.stored_bytes),
            self.passed.load(Ordering::Relaxed)
        )
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_add_up_and_come_back() {
        let dir = std::env::temp_dir().join(format!(
            "rdocker-store-test.{}",
            crate::docker::names::random_hex(4)
        ));
        let s = Arc::new(Store::at(&dir).unwrap());
        let st = nix::sys::statvfs::statvfs(&dir).unwrap();
        #[allow(clippy::unnecessary_cast)]
        let free = (st.blocks_available() as u64) * (st.fragment_size() as u64);
        // Far more than there is: refused, and nothing stays reserved.
        assert!(s.reserve(free).is_none());
        assert_eq!(*s.reserved.lock().unwrap(), 0);
        let mut a = s.reserve(1000).unwrap();
        assert_eq!(*s.reserved.lock().unwrap(), 1000);
        assert!(a.write(600));
        assert_eq!(*s.reserved.lock().unwrap(), 400);
        // Past its length: it grows.
        assert!(a.write(1000));
        assert_eq!(*s.reserved.lock().unwrap(), GROW - 600);
        drop(a);
        assert_eq!(*s.reserved.lock().unwrap(), 0);
        // Reserved by one, not available to another.
        let half = free / 2;
        let b = s.reserve(half - (16 << 20)).unwrap();
        assert!(s.reserve(half).is_none());
        drop(b);
        drop(s);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
