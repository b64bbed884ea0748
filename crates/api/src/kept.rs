//! Identical bytes kept once in the process: the deflated entries of slices that hold the same
//! list. Subscriptions of one workspace by different integrations (every team's credential
//! seeing the company's workspace) list the same repositories, and every replica caches every
//! slice: without sharing, each copy costs its bytes again (about 0.8 KiB for a dozen
//! repositories). Bytes are shared while something holds them, and forgotten with their last
//! holder.

use std::{
    collections::HashMap,
    hash::{DefaultHasher, Hash, Hasher},
    sync::{Arc, LazyLock, Mutex, PoisonError, Weak},
};

/// The bytes held somewhere in the process, by a hash of their content.
static KEPT: LazyLock<Mutex<HashMap<u64, Weak<[u8]>>>> = LazyLock::new(Mutex::default);

fn content_hash(bytes: &[u8]) -> u64 {
    let mut hasher = DefaultHasher::new();
    bytes.hash(&mut hasher);
    hasher.finish()
}

/// `bytes`, shared with any equal bytes held already (copied to an allocation of their exact
/// size otherwise). Each is handed back to [`release`] to be dropped.
pub fn share(bytes: &[u8]) -> Arc<[u8]> {
    let hash = content_hash(bytes);
    let mut kept = KEPT.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(held) = kept.get(&hash).and_then(Weak::upgrade)
        && *held == *bytes
    {
        return held;
    }
    let new: Arc<[u8]> = Arc::from(bytes);
    // Two contents of one hash: the one held last is shared, the other kept alone.
    kept.insert(hash, Arc::downgrade(&new));
    new
}

/// Drops a holder's `bytes`, forgetting them when it held them last (a weak reference left
/// behind would keep their allocation). The count falls under the lock, as [`share`] takes new
/// holders under it: two holders dropping at once cannot both find another still holding.
pub fn release(bytes: Arc<[u8]>) {
    let mut kept = KEPT.lock().unwrap_or_else(PoisonError::into_inner);
    if Arc::strong_count(&bytes) == 1 {
        let hash = content_hash(&bytes);
        if kept
            .get(&hash)
            .is_some_and(|held| std::ptr::eq(held.as_ptr(), Arc::as_ptr(&bytes)))
        {
            kept.remove(&hash);
        }
    }
    drop(bytes);
}

/// What a dropped holder is left with: nothing, shared.
pub fn none() -> Arc<[u8]> {
    static NONE: LazyLock<Arc<[u8]>> = LazyLock::new(|| Arc::from(&[][..]));
    Arc::clone(&NONE)
}

/// Whether bytes equal to `bytes` are kept.
#[cfg(test)]
pub fn is_kept(bytes: &[u8]) -> bool {
    let kept = KEPT.lock().unwrap_or_else(PoisonError::into_inner);
    kept.contains_key(&content_hash(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_bytes_are_held_once_and_forgotten_with_their_last_holder() {
        let content = b"kept::tests: one list of repositories".as_slice();
        let first = share(content);
        let second = share(content);
        assert!(Arc::ptr_eq(&first, &second), "equal bytes share one copy");
        let other = share(b"kept::tests: another list");
        assert!(!Arc::ptr_eq(&first, &other));

        release(first);
        assert!(is_kept(content), "still held by the second");
        release(second);
        assert!(!is_kept(content), "forgotten with the last holder");
        release(other);
    }
}
