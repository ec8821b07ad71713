//! Idle inference workers, and how a producer wakes one.
//!
//! There is no batcher thread: a worker that is free forms its own next
//! batch from the ingress queue (`next_batch` in the pipeline). A worker
//! with nothing to run registers here and parks; a transport that queues a
//! frame while some worker is idle wakes one registered worker (with
//! batches of more than one, once its runtime thread has run the tasks that
//! were ready: `ModelPipeline::wake_a_worker`). A frame
//! then crosses two threads (the transport's task, the worker) instead of
//! three, and each thread switch is a context switch on a machine whose
//! cores are busy.
//!
//! No wake-up is lost. The worker registers, then (behind a SeqCst fence)
//! looks for work once more before it parks; the producer publishes its
//! frame, then (behind a SeqCst fence) looks for a registered worker. One of
//! the two sees the other: either the producer finds the worker and unparks
//! it, or the worker finds the frame and does not park. A thread's park
//! token is kept when the unpark comes first, so an unpark between the
//! worker's last look and its `park` is not lost either.

use std::sync::atomic::{fence, Ordering};
use std::sync::Mutex;
use std::thread::Thread;
use std::time::Instant;

/// The workers parked for want of work (most recent last).
#[derive(Debug, Default)]
pub struct Sleepers {
    parked: Mutex<Vec<Thread>>,
}

impl Sleepers {
    /// Parks the calling thread until a producer wakes it, `until` passes
    /// (never, for `None`), or, checked after registering, `ready()` holds
    /// already. Spurious returns are possible; callers look for work again.
    pub fn wait(&self, until: Option<Instant>, ready: impl Fn() -> bool) {
        let me = std::thread::current();
        self.parked.lock().expect("sleepers lock").push(me.clone());
        // Pairs with the producer's fence in [`Self::wake_one_after_publish`].
        fence(Ordering::SeqCst);
        if !ready() {
            match until {
                Some(t) => {
                    let now = Instant::now();
                    if t > now {
                        std::thread::park_timeout(t - now);
                    }
                }
                None => std::thread::park(),
            }
        }
        // Woken by a producer: it took us off the list already. Otherwise
        // (work found, time up, spurious) take ourselves off, so no
        // producer spends its wake-up on a worker that is not asleep.
        let mut parked = self.parked.lock().expect("sleepers lock");
        if let Some(i) = parked.iter().position(|t| t.id() == me.id()) {
            parked.swap_remove(i);
        }
    }

    /// Wakes one parked worker, if any. Call after publishing the work (a
    /// push to the ingress queue); the fence makes the publication and this
    /// look at the parked workers a store-load pair with [`Self::wait`].
    pub fn wake_one_after_publish(&self) -> bool {
        fence(Ordering::SeqCst);
        self.wake_one()
    }

    /// Wakes one parked worker, if any (the most recently parked: its cache
    /// is the warmest).
    pub fn wake_one(&self) -> bool {
        let t = self.parked.lock().expect("sleepers lock").pop();
        match t {
            Some(t) => {
                t.unpark();
                true
            }
            None => false,
        }
    }

    /// Wakes every parked worker (shutdown).
    pub fn wake_all(&self) {
        fence(Ordering::SeqCst);
        let all = std::mem::take(&mut *self.parked.lock().expect("sleepers lock"));
        for t in all {
            t.unpark();
        }
    }

    /// Workers parked now.
    pub fn parked(&self) -> usize {
        self.parked.lock().expect("sleepers lock").len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam_queue::ArrayQueue;
    use std::sync::atomic::AtomicBool;
    use std::sync::{mpsc, Arc};
    use std::time::Duration;

    /// Consumers park with no timeout at all, so a single lost wake-up
    /// leaves an item unconsumed for good. Each producer pushes one item and
    /// waits for its answer before the next (the consumer is then on its way
    /// to park, the race that matters), with a watchdog of half a minute per
    /// item, far beyond any scheduling delay: the test fails on a lost
    /// wake-up instead of passing late.
    #[test]
    fn no_wake_up_is_lost_when_consumers_park_without_a_timeout() {
        // One of each: nobody else is awake to cover for a lost wake-up.
        ping_pong(1, 1);
        ping_pong(2, 3);
    }

    fn ping_pong(producers: usize, consumers: usize) {
        const ROUNDS: usize = 5_000;
        let queue = Arc::new(ArrayQueue::<(usize, usize)>::new(64));
        let sleepers = Arc::new(Sleepers::default());
        let done = Arc::new(AtomicBool::new(false));
        let (acks, ack_rx): (Vec<_>, Vec<_>) = (0..producers).map(|_| mpsc::channel()).unzip();
        let threads: Vec<_> = (0..consumers)
            .map(|_| {
                let (queue, sleepers, done, acks) =
                    (queue.clone(), sleepers.clone(), done.clone(), acks.clone());
                std::thread::spawn(move || {
                    let mut pause = 0u32;
                    loop {
                        while let Some((p, i)) = queue.pop() {
                            let _ = acks[p].send(i);
                        }
                        if done.load(Ordering::SeqCst) {
                            return;
                        }
                        // A preemption between the last look and parking,
                        // of varying length: the producer's next push lands
                        // in that window often.
                        pause = (pause + 7) % 61;
                        for _ in 0..pause * 40 {
                            std::hint::spin_loop();
                        }
                        sleepers.wait(None, || !queue.is_empty() || done.load(Ordering::SeqCst));
                    }
                })
            })
            .collect();
        let producers: Vec<_> = ack_rx
            .into_iter()
            .enumerate()
            .map(|(p, acked)| {
                let (queue, sleepers) = (queue.clone(), sleepers.clone());
                std::thread::spawn(move || {
                    for i in 0..ROUNDS {
                        queue.push((p, i)).expect("one item per producer at a time");
                        sleepers.wake_one_after_publish();
                        match acked.recv_timeout(Duration::from_secs(30)) {
                            Ok(got) => assert_eq!(got, i),
                            Err(_) => {
                                return Err(format!(
                                    "producer {p}: item {i} never consumed, a wake-up was lost \
                                 ({} consumers parked, {} items queued)",
                                    sleepers.parked(),
                                    queue.len()
                                ))
                            }
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        let results: Vec<Result<(), String>> =
            producers.into_iter().map(|p| p.join().unwrap()).collect();
        done.store(true, Ordering::SeqCst);
        sleepers.wake_all();
        for c in threads {
            c.join().unwrap();
        }
        for r in results {
            r.unwrap();
        }
    }

    #[test]
    fn a_woken_worker_leaves_the_list_and_an_empty_list_wakes_nobody() {
        let sleepers = Arc::new(Sleepers::default());
        assert!(!sleepers.wake_one());
        let flag = Arc::new(AtomicBool::new(false));
        let t = {
            let (sleepers, flag) = (sleepers.clone(), flag.clone());
            std::thread::spawn(move || {
                while !flag.load(Ordering::SeqCst) {
                    sleepers.wait(None, || flag.load(Ordering::SeqCst));
                }
            })
        };
        // Wait until it is parked (registered), then wake it.
        while sleepers.parked() == 0 {
            std::thread::yield_now();
        }
        flag.store(true, Ordering::SeqCst);
        assert!(sleepers.wake_one_after_publish());
        t.join().unwrap();
        assert_eq!(sleepers.parked(), 0);
    }
}
