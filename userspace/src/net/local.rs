//! Stacks whose poll loop the application turns itself, on its own thread.
//!
//! [`StackBuilder::build`] runs the poll loop on a thread of its own, and the handles
//! talk to it across threads. A server that wants every cycle can instead run its code
//! on the loop's thread: [`StackBuilder::build_local`] gives the [`Stack`] and its
//! [`StackLoop`], and the application calls [`StackLoop::turn`] between its own work.
//! The handles are the same; their wakers fire from `turn`, on this thread, so nothing
//! crosses a thread and no lock is ever contended. [`StackBuilder::run_per_queue`] does
//! the same with one stack per group of RX queues, each on its own pinned thread.
//!
//! On the loop's thread, use the async handles (`net::tokio`, or their `poll_*`
//! methods) or non-blocking ones: a blocking call there would wait for a turn that
//! only it could make.
use super::driver::Driver;
use super::runtime::Runtime;
use super::{Info, Stack, StackBuilder, io_error};
use crate::stack::StackStats;
use std::future::Future;
use std::io;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, mpsc};
use std::task::{Context, Poll, Waker};

/// The poll loop of a stack from [`StackBuilder::build_local`] or
/// [`StackBuilder::run_per_queue`], turned by the application on its own thread.
///
/// Dropping it (or [`StackLoop::finish`]) stops the stack as [`Stack::shutdown`] does.
///
/// ```no_run
/// # fn main() -> std::io::Result<()> {
/// let (stack, mut poll) = userspace::Stack::builder().build_local()?;
/// let listener = poll.block_on(userspace::net::tokio::TcpListener::bind(&stack, "0.0.0.0:80"))?;
/// while !poll.stopped() {
///     let busy = poll.turn();
///     // ... poll the listener and the connections that were woken ...
///     if !busy {
///         poll.idle();
///     }
/// }
/// # drop(listener); Ok(()) }
/// ```
pub struct StackLoop {
    driver: Option<Driver>,
}

impl std::fmt::Debug for StackLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StackLoop").finish_non_exhaustive()
    }
}

impl StackLoop {
    fn driver(&mut self) -> &mut Driver {
        self.driver.as_mut().expect("only finish takes the driver")
    }

    /// One turn of the loop: the handles' requests, a batch of frames received and
    /// sent, timers, and the handles woken whose connections have news. Returns
    /// whether there was any work.
    pub fn turn(&mut self) -> bool {
        self.driver().turn()
    }

    /// After a turn without work: spins for the builder's [`StackBuilder::idle_spin`]
    /// since the last frame, then sleeps in poll(2) until a frame comes or a timer is
    /// due, so an idle stack costs no CPU.
    pub fn idle(&mut self) {
        self.driver().rest();
    }

    /// Whether the stack was told to stop ([`Stack::shutdown`]) or every [`Stack`]
    /// handle is gone.
    pub fn stopped(&self) -> bool {
        self.driver.as_ref().is_none_or(Driver::stopping)
    }

    /// Runs `fut` to its end, turning the loop while it waits: for the set-up calls
    /// (a `bind`, a `connect`) of code that runs on the loop's thread.
    pub fn block_on<F: Future>(&mut self, fut: F) -> F::Output {
        let mut fut = pin!(fut);
        let mut cx = Context::from_waker(Waker::noop());
        loop {
            if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
                return v;
            }
            if !self.turn() {
                self.idle();
            }
        }
    }

    /// From now on, the stack's stop lingers ([`StackBuilder::linger`]) at most `within`
    /// from now: a server that spent part of its grace period finishing its clients
    /// gives the stack only the rest.
    pub fn linger_within(&mut self, within: std::time::Duration) {
        self.driver().linger_until(within);
    }

    /// A snapshot of the stack's counters.
    pub fn stats(&mut self) -> StackStats {
        self.driver().runtime().stack.stats.clone()
    }

    /// Connections the stack holds now, the closing ones and TIME-WAIT included.
    pub fn connection_count(&mut self) -> usize {
        self.driver().runtime().stack.connection_count()
    }

    /// Every counter, as [`Stack::report`] gives them.
    pub fn report(&mut self) -> String {
        super::setup::stats_report(self.driver().runtime())
    }

    /// What the stack lost that its user needed, as [`Stack::diagnose`] says it.
    pub fn diagnose(&mut self) -> Vec<String> {
        super::setup::diagnose(self.driver().runtime())
    }

    /// Stops the stack as [`Stack::shutdown`] does: listeners stop, connections whose
    /// handles were dropped get the linger time to deliver what was written to them,
    /// the others are closed, and the XDP program is detached.
    pub fn finish(mut self) {
        if let Some(driver) = self.driver.take() {
            driver.finish();
        }
    }
}

impl Drop for StackLoop {
    fn drop(&mut self) {
        if let Some(driver) = self.driver.take() {
            driver.finish();
        }
    }
}

/// One of the stacks [`StackBuilder::run_per_queue`] runs, as the application's code
/// on that stack's thread gets it.
#[derive(Debug)]
pub struct PerQueue<'a> {
    /// This stack's index, from 0.
    pub index: usize,
    /// How many stacks share the interface.
    pub stacks: usize,
    /// The handle to open listeners and connections on.
    pub stack: Stack,
    /// Its poll loop, for this thread to turn.
    pub poll: &'a mut StackLoop,
}

/// Counts a stack as running the application's code, or finishing its connections,
/// until dropped (on every way out).
struct Running<'a>(&'a AtomicUsize);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Release);
    }
}

impl StackBuilder {
    /// Attaches the XDP program and opens the AF_XDP sockets like
    /// [`StackBuilder::build`], but starts no thread: the application turns the
    /// returned [`StackLoop`] itself, on this thread (pinned here if
    /// [`StackBuilder::cpu`] is set).
    pub fn build_local(self) -> io::Result<(Stack, StackLoop)> {
        let rt = super::setup::open_runtime(&self.config, &[]).map_err(io_error)?;
        Ok(self.local(rt))
    }

    /// A stack around `rt` whose loop the caller turns.
    fn local(&self, rt: Runtime) -> (Stack, StackLoop) {
        let (commands, receiver) = mpsc::channel();
        let shutdown = Arc::new(AtomicBool::new(false));
        let info = Info::of(&rt);
        let mut options = self.loop_options();
        // The handles live on this thread too: the loop may sleep in poll(2) when idle
        // (no command can come while it does).
        options.busy_poll = true;
        let mut driver = Driver::new(rt, receiver, shutdown.clone(), options);
        driver.start();
        let stack = self.handle(commands, shutdown, None, info);
        (
            stack,
            StackLoop {
                driver: Some(driver),
            },
        )
    }

    /// Servers: several stacks share the interface, one per group of RX queues (queue
    /// q goes to stack q mod N, every queue gets an AF_XDP socket), each on a thread of
    /// its own pinned to its own CPU (from [`StackBuilder::cpu`] on, else from 0), and
    /// `app` runs on each of those threads with its stack and the loop to turn (see
    /// [`StackLoop`]). `stacks`: how many, at least 1 and at most the RX queue count
    /// (else an [`io::ErrorKind::InvalidInput`] error); `None` is one per RX queue, at
    /// most one per CPU. Steering starts once every queue has its socket. A flow whose
    /// segments move to another stack's queue is handed to the stack that owns it; a
    /// stack whose `app` has returned keeps doing that until every `app` has, then
    /// stops. Returns each `app`'s result, in stack order.
    pub fn run_per_queue<R: Send>(
        self,
        stacks: Option<u32>,
        app: impl Fn(PerQueue<'_>) -> R + Sync,
    ) -> io::Result<Vec<R>> {
        let (per_queue, mut shards) = super::setup::PerQueuePlan::new(&self.config, stacks)?;
        let count = per_queue.stacks;
        let bound = Barrier::new(count + 1);
        let failed = AtomicBool::new(false);
        let running = AtomicUsize::new(count);
        let (per_queue, bound, failed, running, app, builder) =
            (&per_queue, &bound, &failed, &running, &app, &self);
        std::thread::scope(|scope| {
            let threads: Vec<_> = (0..count)
                .map(|index| {
                    let member = shards.member(index);
                    scope.spawn(move || -> io::Result<R> {
                        let done = Running(running);
                        per_queue.pin(index);
                        let device = per_queue.bind(&member);
                        if device.is_err() {
                            failed.store(true, Ordering::Release);
                        }
                        bound.wait(); // every queue has its socket, or one failed
                        bound.wait(); // steering started, unless something failed
                        let device = device.map_err(io_error)?;
                        if failed.load(Ordering::Acquire) {
                            return Err(io::Error::other("another stack failed to start"));
                        }
                        let rt = per_queue.runtime(device, member).map_err(io_error)?;
                        let (stack, mut poll) = builder.local(rt);
                        let result = app(PerQueue {
                            index,
                            stacks: count,
                            stack,
                            poll: &mut poll,
                        });
                        // This stack's connections finish first (what their dropped
                        // handles still had to send): the others keep handing over
                        // their frames meanwhile.
                        poll.driver().linger();
                        drop(done);
                        // Frames of the other stacks' connections may still come to
                        // these queues: keep handing them over until all are done.
                        while running.load(Ordering::Acquire) > 0 {
                            if !poll.turn() {
                                poll.idle();
                            }
                        }
                        poll.finish();
                        Ok(result)
                    })
                })
                .collect();
            bound.wait();
            let enabled = if failed.load(Ordering::Acquire) {
                Ok(())
            } else {
                per_queue.enable()
            };
            if enabled.is_err() {
                failed.store(true, Ordering::Release);
            }
            bound.wait();
            let results: Vec<io::Result<R>> = threads
                .into_iter()
                .map(|t| {
                    t.join()
                        .unwrap_or_else(|_| Err(io::Error::other("a stack's thread panicked")))
                })
                .collect();
            enabled.map_err(io_error)?;
            results.into_iter().collect()
        })
    }
}
