//! The ingress queue: a bounded, lock-free MPSC hand-off from transports to
//! the batcher thread.
//!
//! Producers never block: when the queue is full `push` hands the item back
//! and the transport answers "overloaded" (HTTP 429 / `Dropped`) for that
//! frame. The batcher thread parks when there is nothing to do; the producer
//! wakes it after a push when it can act on the frame (see
//! [`IngressQueue::push`]). Capacity is fixed at construction, so
//! memory is bounded.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::thread::Thread;

use crossbeam_queue::ArrayQueue;

/// Bounded lock-free queue with a wake-up for its single consumer thread.
#[derive(Debug)]
pub struct IngressQueue<T> {
    items: ArrayQueue<T>,
    consumer: OnceLock<Thread>,
    closed: AtomicBool,
}

impl<T> IngressQueue<T> {
    /// A queue holding at most `capacity` items.
    pub fn new(capacity: usize) -> Self {
        Self {
            items: ArrayQueue::new(capacity.max(1)),
            consumer: OnceLock::new(),
            closed: AtomicBool::new(false),
        }
    }

    /// Registers the thread to wake on push (the batcher).
    pub fn set_consumer(&self, thread: Thread) {
        let _ = self.consumer.set(thread);
    }

    /// Adds an item, or gives it back when the queue is full or closed. It
    /// does not wake the consumer: the caller wakes it (see [`Self::wake`])
    /// only when the consumer could act on the item now. A consumer that
    /// cannot (every worker busy) is woken by whatever ends that state, and
    /// finds the item then.
    pub fn push(&self, item: T) -> Result<(), T> {
        if self.closed.load(Ordering::Acquire) {
            return Err(item);
        }
        self.items.push(item)
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

    /// Refuses further pushes and wakes the consumer so it can drain and stop.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.wake();
    }

    /// Whether `close` was called.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Wakes the consumer thread.
    pub fn wake(&self) {
        if let Some(t) = self.consumer.get() {
            t.unpark();
        }
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
