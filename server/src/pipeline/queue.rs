//! The ingress queue: a bounded, lock-free MPMC hand-off from transports to
//! the inference workers.
//!
//! Producers never block: when the queue is full `push` hands the item back
//! and the transport answers "overloaded" (HTTP 429 / `Dropped`) for that
//! frame. A free worker drains the queue when it forms its next batch; one
//! with nothing to do parks, and the producer wakes it after a push when it
//! can act on the frame (see [`super::idle`]). Capacity is fixed at
//! construction, so memory is bounded.

use std::sync::atomic::{AtomicBool, Ordering};

use crossbeam_queue::ArrayQueue;

/// Bounded lock-free queue that can be closed.
#[derive(Debug)]
pub struct IngressQueue<T> {
    items: ArrayQueue<T>,
    closed: AtomicBool,
}

impl<T> IngressQueue<T> {
    /// A queue holding at most `capacity` items.
    pub fn new(capacity: usize) -> Self {
        Self {
            items: ArrayQueue::new(capacity.max(1)),
            closed: AtomicBool::new(false),
        }
    }

    /// Adds an item, or gives it back when the queue is full or closed. It
    /// wakes nobody: the caller wakes a parked worker only when one could act
    /// on the item now. A worker that finishes its batch looks here before
    /// it parks, and finds the item then.
    pub fn push(&self, item: T) -> Result<(), T> {
        if self.closed.load(Ordering::Acquire) {
            return Err(item);
        }
        self.items.push(item)
    }

    /// Adds an item even when closed (tests land a push that raced the
    /// close); `false` when full.
    #[cfg(test)]
    pub(crate) fn push_ignoring_close(&self, item: T) -> bool {
        self.items.push(item).is_ok()
    }

    /// Takes the oldest item.
    pub fn pop(&self) -> Option<T> {
        self.items.pop()
    }

    /// Items waiting.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Capacity.
    pub fn capacity(&self) -> usize {
        self.items.capacity()
    }

    /// Refuses further pushes; consumers drain what is left and stop (the
    /// caller wakes them).
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    /// Whether `close` was called.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn full_queue_hands_items_back() {
        let q = IngressQueue::new(2);
        q.push(1).unwrap();
        q.push(2).unwrap();
        assert_eq!(q.push(3), Err(3));
        assert_eq!(q.pop(), Some(1));
        q.push(3).unwrap();
        assert_eq!(q.len(), 2);
    }

    #[test]
    fn closed_queue_refuses() {
        let q = IngressQueue::new(2);
        q.close();
        assert_eq!(q.push(1), Err(1));
    }

    #[test]
    fn many_producers_lose_nothing() {
        let q = Arc::new(IngressQueue::new(64));
        let producers: Vec<_> = (0..4)
            .map(|p| {
                let q = q.clone();
                std::thread::spawn(move || {
                    for i in 0..1000u32 {
                        let mut item = p * 1000 + i;
                        while let Err(back) = q.push(item) {
                            item = back;
                            std::thread::yield_now();
                        }
                    }
                })
            })
            .collect();
        let mut seen = Vec::new();
        while seen.len() < 4000 {
            if let Some(v) = q.pop() {
                seen.push(v);
            } else {
                std::thread::yield_now();
            }
        }
        for p in producers {
            p.join().unwrap();
        }
        seen.sort_unstable();
        assert_eq!(seen, (0..4000).collect::<Vec<_>>());
    }
}
