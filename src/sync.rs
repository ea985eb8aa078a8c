//! Locking that survives a panic elsewhere.
//!
//! A std `Mutex` is poisoned when a holder panics; every lock in mcpmux guards plain data
//! that stays consistent between statements, so the data is used as is rather than
//! wedging every later request behind the poison.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `m`, recovering from poisoning.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
