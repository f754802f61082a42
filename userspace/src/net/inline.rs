//! Stacks whose poll loop the program's own threads turn, Onload-style, with a
//! background thread that takes the loop over while none of them does.
//!
//! [`StackBuilder::build_inline`] keeps the driver (device, sans-IO stack, handles'
//! state) behind a mutex that any thread may try to take: [`Stack::turn`] turns it if no
//! other thread is (a try-lock; a thread never waits for another's turn: the one
//! holding the loop turns again for it, see `wanted`). A program that calls into its
//! sockets turns the loop itself, so with one busy thread nothing crosses a thread.
//!
//! A thread about to block in a wait of its own (epoll_wait) may instead wait on the
//! device's sockets beside its fds ([`Stack::watch_fds`], [`Stack::watch`]): it wakes
//! for a frame or the stack's next timer, and turns the loop itself.
//!
//! The background thread costs nothing while the program covers the loop: it sleeps on
//! a timer until no program thread has asked for a turn for `TAKEOVER` (or past the
//! end of a watched wait), or until a thread says it is about to block without
//! watching ([`Stack::park`]). Then it turns the loop as the loop thread of
//! [`StackBuilder::build`] does, sleeping in poll(2) on the device, the handles'
//! commands and the stack's next timer, without holding the mutex, so a program thread
//! that comes back takes the loop at once; seeing that, the background thread goes
//! back to its timer.
use super::driver::Driver;
use crate::device::wake::{WakeFd, sleep_on};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::Duration;

/// How long the program may go without asking for a turn before the background
/// thread takes the loop over (ACKs, retransmits, timers, new connections).
const TAKEOVER: Duration = Duration::from_millis(1);

/// The loop of an inline stack, shared by the program's threads and the background
/// thread.
pub(crate) struct InlineLoop {
    driver: Mutex<Option<Driver>>,
    /// Set by a thread that wanted a turn and found the loop taken: the holder turns
    /// again before it lets go.
    wanted: AtomicBool,
    /// Until when the program's threads see to the loop, in ns since `origin`: a turn
    /// asked for covers `TAKEOVER`, a watched wait its length; 0 once one parked.
    covered: AtomicU64,
    /// The device's sockets a thread may wait on itself (none through a switch).
    watch_fds: Vec<std::os::fd::RawFd>,
    origin: std::time::Instant,
    /// Wakes the background thread from its sleep on the device (a handle's command).
    pub(crate) commands: Arc<WakeFd>,
    /// Wakes the background thread from its timer (a program thread parked).
    parked: WakeFd,
    shutdown: Arc<AtomicBool>,
}

impl InlineLoop {
    pub(crate) fn new(
        driver: Driver,
        commands: Arc<WakeFd>,
        shutdown: Arc<AtomicBool>,
    ) -> std::io::Result<Arc<Self>> {
        let watch_fds = driver.watch_fds();
        Ok(Arc::new(InlineLoop {
            watch_fds,
            driver: Mutex::new(Some(driver)),
            wanted: AtomicBool::new(false),
            covered: AtomicU64::new(0),
            origin: std::time::Instant::now(),
            commands,
            parked: WakeFd::new()?,
            shutdown,
        }))
    }

    fn now_ns(&self) -> u64 {
        // Never 0, which means "parked".
        self.origin.elapsed().as_nanos() as u64 | 1
    }

    fn try_driver(&self) -> Option<MutexGuard<'_, Option<Driver>>> {
        match self.driver.try_lock() {
            Ok(g) => Some(g),
            Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    fn lock_driver(&self) -> MutexGuard<'_, Option<Driver>> {
        self.driver.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A program thread's turn: `Some(busy)`, or `None` when another thread holds the
    /// loop (it turns again for us) or the stack stopped.
    pub(crate) fn turn(&self) -> Option<bool> {
        let until = self.now_ns() + TAKEOVER.as_nanos() as u64;
        self.covered.store(until, Ordering::Relaxed);
        self.wanted.store(true, Ordering::SeqCst);
        let mut result = None;
        while let Some(mut guard) = self.try_driver() {
            self.wanted.store(false, Ordering::SeqCst);
            let driver = guard.as_mut()?;
            if driver.stopping() {
                return result;
            }
            let busy = driver.turn();
            result = Some(result.unwrap_or(false) | busy);
            drop(guard);
            // Another thread asked while we turned: its turn is ours to make.
            if !self.wanted.load(Ordering::SeqCst) {
                break;
            }
        }
        result
    }

    /// A program thread is about to block: the background thread takes over now.
    pub(crate) fn park(&self) {
        self.covered.store(0, Ordering::SeqCst);
        self.parked.notify();
    }

    /// The device's sockets a thread may wait on itself.
    pub(crate) fn watch_fds(&self) -> &[std::os::fd::RawFd] {
        &self.watch_fds
    }

    /// A program thread will wait on the device's sockets beside its own fds: how
    /// long it may (the stack needs a turn after that whatever comes), the background
    /// thread staying away meanwhile; `None` when it must turn the loop now (frames
    /// or output wait, or another thread holds the loop).
    pub(crate) fn watch(&self) -> Option<Duration> {
        if self.watch_fds.is_empty() {
            return None;
        }
        let mut guard = self.try_driver()?;
        let wait = guard.as_mut()?.watch_plan()?;
        let until = self.now_ns() + wait.as_nanos() as u64;
        self.covered.store(until, Ordering::SeqCst);
        Some(wait)
    }

    /// A watched wait ended (on the program's own fd, perhaps long before its time):
    /// the thread sees to the loop only for `TAKEOVER` more, as after a turn.
    pub(crate) fn unwatch(&self) {
        let until = self.now_ns() + TAKEOVER.as_nanos() as u64;
        self.covered.fetch_min(until, Ordering::SeqCst);
    }

    /// Ends the background thread's sleeps (the stack stops).
    pub(crate) fn wake_all(&self) {
        self.commands.notify();
        self.parked.notify();
    }

    /// The background thread: turns the loop while the program does not, and finishes
    /// the stack when it stops.
    pub(crate) fn background(self: Arc<Self>) {
        let Some(mut fds) = self.lock_driver().as_ref().map(Driver::sleep_fds) else {
            return;
        };
        fds.push(libc::pollfd {
            fd: self.commands.raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        });
        let mut timer = [libc::pollfd {
            fd: self.parked.raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        loop {
            if self.shutdown.load(Ordering::SeqCst) {
                break;
            }
            let covered = self.covered.load(Ordering::SeqCst);
            let now = self.now_ns();
            if covered > now {
                // The program sees to the loop: sleep until it may have stopped, or parks.
                self.parked.set_sleeping(true);
                if self.covered.load(Ordering::SeqCst) == covered
                    && !self.shutdown.load(Ordering::SeqCst)
                {
                    sleep_on(&mut timer, Duration::from_nanos(covered - now));
                }
                self.parked.set_sleeping(false);
                self.parked.clear();
                continue;
            }
            let mut guard = self.lock_driver();
            let Some(driver) = guard.as_mut() else {
                return;
            };
            if driver.stopping() {
                break;
            }
            if driver.turn() {
                continue;
            }
            let Some(sleep) = driver.sleep_plan(&self.commands) else {
                continue;
            };
            drop(guard);
            sleep_on(&mut fds, sleep);
            self.commands.set_sleeping(false);
            self.commands.clear();
            if let Some(driver) = self.lock_driver().as_mut() {
                driver.woke();
            }
        }
        // Stopped: the loop finishes here (linger, FINs, the XDP program detached).
        let driver = self.lock_driver().take();
        if let Some(driver) = driver {
            driver.finish();
        }
    }
}
