//! The lock order of an app's state, checked in debug builds.
//!
//! Every lock of `AppState`'s parts has a [`Level`]; a thread may take a lock only while it holds
//! none of the same or a higher level. Debug builds (every `cargo test` without `--release`) assert it with a thread-local
//! set of held levels, so a new call path that nests locks the other way fails the first test
//! that runs it, instead of deadlocking one day under load. herald-core's own unit tests check it in
//! release builds too (`scripts/test` runs them so). Other release builds check nothing: the
//! wrappers compile to the bare `parking_lot` calls.
//!
//! Invariant: the order is `Channels` < `Cache` < `Users` < `Watchlists` < `Connections` <
//! `Settings`. Only two nestings exist: a subscribe reads the cache under the channel table
//! (so a cache channel's event is either cached or delivered after the subscribe), and a new
//! connection reads the settings under the connection table (so none slips past a disable).
//! Every other call path holds one lock at a time.

use std::ops::{Deref, DerefMut};

use parking_lot::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Level {
    Channels = 1,
    Cache,
    Users,
    Watchlists,
    Connections,
    Settings,
}

#[cfg(any(debug_assertions, test))]
thread_local! {
    /// Bit `level` is set while this thread holds a lock of that level.
    static HELD: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Proof that this thread registered a lock of `level`; unregisters it when dropped.
#[derive(Debug)]
pub(crate) struct Held {
    #[cfg(any(debug_assertions, test))]
    level: Level,
}

impl Held {
    /// # Panics
    /// In debug builds, when this thread holds a lock of the same or a higher level.
    #[inline]
    fn take(level: Level) -> Held {
        #[cfg(any(debug_assertions, test))]
        HELD.with(|held| {
            let mask = held.get();
            assert!(
                mask >> (level as u32) == 0,
                "lock order broken: taking {level:?} while holding levels {mask:#b}"
            );
            held.set(mask | (1 << level as u32));
        });
        #[cfg(not(any(debug_assertions, test)))]
        let _ = level;
        Held {
            #[cfg(any(debug_assertions, test))]
            level,
        }
    }
}

impl Drop for Held {
    #[inline]
    fn drop(&mut self) {
        #[cfg(any(debug_assertions, test))]
        HELD.with(|held| held.set(held.get() & !(1 << self.level as u32)));
    }
}

/// A guard that also holds its place in the lock order.
#[derive(Debug)]
pub(crate) struct Guard<G> {
    guard: G,
    _held: Held,
}

impl<G: Deref> Deref for Guard<G> {
    type Target = G::Target;

    #[inline]
    fn deref(&self) -> &G::Target {
        &self.guard
    }
}

impl<G: DerefMut> DerefMut for Guard<G> {
    #[inline]
    fn deref_mut(&mut self) -> &mut G::Target {
        &mut self.guard
    }
}

/// A `Mutex` with a level.
#[derive(Debug)]
pub(crate) struct OrderedMutex<T> {
    level: Level,
    inner: Mutex<T>,
}

impl<T> OrderedMutex<T> {
    pub(crate) fn new(level: Level, value: T) -> OrderedMutex<T> {
        OrderedMutex {
            level,
            inner: Mutex::new(value),
        }
    }

    #[inline]
    pub(crate) fn lock(&self) -> Guard<MutexGuard<'_, T>> {
        let held = Held::take(self.level);
        Guard {
            guard: self.inner.lock(),
            _held: held,
        }
    }
}

/// An `RwLock` with a level.
#[derive(Debug)]
pub(crate) struct OrderedRwLock<T> {
    level: Level,
    inner: RwLock<T>,
}

impl<T> OrderedRwLock<T> {
    pub(crate) fn new(level: Level, value: T) -> OrderedRwLock<T> {
        OrderedRwLock {
            level,
            inner: RwLock::new(value),
        }
    }

    #[inline]
    pub(crate) fn read(&self) -> Guard<RwLockReadGuard<'_, T>> {
        let held = Held::take(self.level);
        Guard {
            guard: self.inner.read(),
            _held: held,
        }
    }

    #[inline]
    pub(crate) fn write(&self) -> Guard<RwLockWriteGuard<'_, T>> {
        let held = Held::take(self.level);
        Guard {
            guard: self.inner.write(),
            _held: held,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn panics(f: impl FnOnce() + std::panic::UnwindSafe) -> bool {
        std::panic::catch_unwind(f).is_err()
    }

    #[test]
    fn locks_taken_in_order_pass_and_out_of_order_panic() {
        let channels = OrderedRwLock::new(Level::Channels, ());
        let cache = OrderedMutex::new(Level::Cache, ());
        {
            let _channels = channels.write();
            let _cache = cache.lock();
        }
        assert!(panics(|| {
            let channels = OrderedRwLock::new(Level::Channels, ());
            let cache = OrderedMutex::new(Level::Cache, ());
            let _cache = cache.lock();
            let _channels = channels.read();
        }));
        assert!(
            panics(|| {
                let users = OrderedMutex::new(Level::Users, ());
                let _first = users.lock();
                let other = OrderedMutex::new(Level::Users, ());
                let _again = other.lock();
            }),
            "two locks of one level are never nested"
        );
    }
}
