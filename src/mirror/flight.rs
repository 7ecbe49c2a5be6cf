//! One request at a time per key: the first asks upstream, the others wait and then find
//! its answer in the cache. Fifty nodes asking for the same cold tag at once spend one
//! pull, not fifty. (Blob fills coalesce in `fill`, where followers also share the bytes.)

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

#[derive(Default)]
pub struct Flights {
    /// A lock per key while anyone holds or waits for it.
    locks: Mutex<HashMap<String, Weak<AsyncMutex<()>>>>,
}

impl Flights {
    /// Waits until no one else is asking for `key`; the guard lets the next one in.
    pub async fn enter(&self, key: String) -> OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
            // The map holds only keys in use: the finished ones are swept as others enter.
            locks.retain(|_, lock| lock.strong_count() > 0);
            match locks.get(&key).and_then(Weak::upgrade) {
                Some(lock) => lock,
                None => {
                    let lock = Arc::new(AsyncMutex::new(()));
                    locks.insert(key, Arc::downgrade(&lock));
                    lock
                }
            }
        };
        lock.lock_owned().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn one_at_a_time_per_key_and_keys_are_forgotten() {
        let flights = Arc::new(Flights::default());
        let inside = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (flights, inside) = (flights.clone(), inside.clone());
            tasks.push(tokio::spawn(async move {
                let _guard = flights.enter("tag".into()).await;
                assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0);
                tokio::task::yield_now().await;
                inside.fetch_sub(1, Ordering::SeqCst);
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        // Another key is not held up by a held one.
        let _held = flights.enter("a".into()).await;
        let _other = flights.enter("b".into()).await;
        drop((_held, _other));
        let _ = flights.enter("c".into()).await;
        assert!(flights.locks.lock().unwrap().len() <= 1);
    }
}
