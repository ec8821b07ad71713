//! The batcher → worker hand-off: a FIFO under a mutex, where a worker with
//! nothing to do sleeps on a condition variable.
//!
//! A channel that spins and yields before it blocks (crossbeam's) makes an
//! idle worker call `sched_yield` several times per batch; on a machine
//! whose cores are all busy (the usual case under load) each yield is a
//! context switch away from the threads that do the work. Here a worker
//! blocks at once, and the batcher wakes one only when one is asleep. At
//! most one batch per worker is outstanding (the batcher dispatches only to
//! idle workers), so the queue stays short and the mutex is uncontended.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};

struct State<T> {
    items: VecDeque<T>,
    closed: bool,
    sleeping: usize,
}

struct Inner<T> {
    state: Mutex<State<T>>,
    wake: Condvar,
}

/// The sending end (one, the batcher). Dropping it closes the hand-off:
/// workers take what is left, then `recv` returns `None`.
pub struct Sender<T>(Arc<Inner<T>>);

/// A receiving end (one per worker).
pub struct Receiver<T>(Arc<Inner<T>>);

impl<T> Clone for Receiver<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

/// A new hand-off.
pub fn handoff<T>() -> (Sender<T>, Receiver<T>) {
    let inner = Arc::new(Inner {
        state: Mutex::new(State {
            items: VecDeque::new(),
            closed: false,
            sleeping: 0,
        }),
        wake: Condvar::new(),
    });
    (Sender(inner.clone()), Receiver(inner))
}

impl<T> Sender<T> {
    /// Queues `item` and wakes a sleeping worker, if any.
    pub fn send(&self, item: T) {
        let mut s = self.0.state.lock().expect("hand-off lock");
        s.items.push_back(item);
        let wake = s.sleeping > 0;
        drop(s);
        if wake {
            self.0.wake.notify_one();
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let mut s = match self.0.state.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        s.closed = true;
        drop(s);
        self.0.wake.notify_all();
    }
}

impl<T> Receiver<T> {
    /// The next item; blocks while there is none. `None` once the sender is
    /// gone and everything it sent has been taken.
    pub fn recv(&self) -> Option<T> {
        let mut s = self.0.state.lock().expect("hand-off lock");
        loop {
            if let Some(item) = s.items.pop_front() {
                return Some(item);
            }
            if s.closed {
                return None;
            }
            s.sleeping += 1;
            s = self.0.wake.wait(s).expect("hand-off lock");
            s.sleeping -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_item_reaches_exactly_one_receiver_then_close_ends_them() {
        let (tx, rx) = handoff::<u32>();
        let workers: Vec<_> = (0..3)
            .map(|_| {
                let rx = rx.clone();
                std::thread::spawn(move || {
                    let mut got = Vec::new();
                    while let Some(v) = rx.recv() {
                        got.push(v);
                    }
                    got
                })
            })
            .collect();
        for v in 0..10_000 {
            tx.send(v);
        }
        drop(tx);
        let mut all: Vec<u32> = workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect();
        all.sort_unstable();
        assert_eq!(all, (0..10_000).collect::<Vec<_>>());
    }

    #[test]
    fn items_sent_before_close_are_still_received() {
        let (tx, rx) = handoff::<&str>();
        tx.send("a");
        tx.send("b");
        drop(tx);
        assert_eq!(rx.recv(), Some("a"));
        assert_eq!(rx.recv(), Some("b"));
        assert_eq!(rx.recv(), None);
    }
}
