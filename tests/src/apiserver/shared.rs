//! What the server's threads share: the store behind its lock with the condition variable that
//! signals its changes, the generation that tells the threads of a stopped server to cut their
//! connections, the registry of those connections and threads, and the counters and request log
//! that tests read.

use std::{
    collections::{HashMap, VecDeque},
    net::TcpStream,
    sync::{Condvar, Mutex, MutexGuard, PoisonError, atomic::AtomicU64},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use super::store::Store;

/// How long a request for a resourceVersion newer than the server's waits before a 504.
const TOO_LARGE_RV_WAIT: Duration = Duration::from_secs(3);

/// Counters for assertions in tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Every HTTP request received.
    pub requests: u64,
    /// Collection GETs without `watch` (every page counts).
    pub lists: u64,
    /// Watch requests.
    pub watches: u64,
    /// Watch streams open right now.
    pub open_watches: u64,
    /// 410s served: `ERROR` events in watch streams and expired `continue` tokens.
    pub expired: u64,
    /// `BOOKMARK` events sent.
    pub bookmarks: u64,
    /// TCP connections accepted.
    pub connections: u64,
}

/// The state every thread of one server holds a reference to.
pub(super) struct Shared {
    pub(super) store: Mutex<Store>,
    /// Signalled on every change, compaction, watch close and stop.
    pub(super) cond: Condvar,
    /// Bumped by [`ApiServer::stop`](super::ApiServer::stop): threads of an older generation cut
    /// their connections.
    pub(super) generation: AtomicU64,
    pub(super) port: u16,
    pub(super) conns: Mutex<HashMap<u64, TcpStream>>,
    pub(super) threads: Mutex<Vec<JoinHandle<()>>>,
    pub(super) next_conn: AtomicU64,
    pub(super) stats: Mutex<Stats>,
    pub(super) log: Mutex<VecDeque<String>>,
}

impl Shared {
    /// The state of a new server listening on `port`: an empty store, no connections.
    pub(super) fn new(port: u16) -> Self {
        Self {
            store: Mutex::new(Store::new(port)),
            cond: Condvar::new(),
            generation: AtomicU64::new(0),
            port,
            conns: Mutex::new(HashMap::new()),
            threads: Mutex::new(Vec::new()),
            next_conn: AtomicU64::new(0),
            stats: Mutex::new(Stats::default()),
            log: Mutex::new(VecDeque::new()),
        }
    }

    /// Waits (briefly) until the server has reached `rv`. False: still too large.
    pub(super) fn wait_for_rv<'a>(&'a self, mut store: MutexGuard<'a, Store>, rv: u64) -> (MutexGuard<'a, Store>, bool) {
        let deadline = Instant::now() + TOO_LARGE_RV_WAIT;
        while store.rv < rv {
            let now = Instant::now();
            if now >= deadline {
                return (store, false);
            }
            store = self.cond.wait_timeout(store, deadline - now).unwrap_or_else(PoisonError::into_inner).0;
        }
        (store, true)
    }
}

/// Locks `m`, even if a thread panicked while holding it (the test will report that panic).
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
