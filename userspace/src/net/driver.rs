//! The poll loop: one thread owns the device and the sans-IO [`crate::stack::Stack`],
//! turns the loop, and keeps the handles' shared state in step with the stack.
use super::runtime::Runtime;
use super::shared::{Command, Conn, ConnOption, Failure, Listener, Phase};
use crate::device::netinfo::{
    self, RouteRefusal, kernel_neighbour_ip as kernel_neighbour,
    kernel_neighbour_ip_failed as kernel_neighbour_failed, provoke_kernel_resolve,
};
use crate::device::startup;
use crate::device::wake::WakeFd;
use crate::stack::{AddressMode, ConnId, StackError};
use crate::tcp::{Instant, State, TcpError};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::Duration;

/// How often the loop looks at connect deadlines and next hops being resolved.
const CHECK_EVERY: Duration = Duration::from_millis(10);
/// How often the kernel is asked again to resolve a next hop (shared-IP mode).
const PROVOKE_EVERY: Duration = Duration::from_millis(300);
/// How long the loop keeps turning after a shutdown, so that RSTs and FINs leave.
const SHUTDOWN_DRAIN: Duration = Duration::from_millis(100);

/// A bulk transfer's bytes go to a waiting reader in larger hand-overs: while a
/// connection's unread in-order bytes are at least `HOLD_MIN` and below `HOLD_MAX`
/// (and half its window), and grew since the loop last looked, the hand-over (and the
/// reader's wake-up) waits, for `HOLD_FOR` at most. A smaller reply goes at once.
const HOLD_MIN: usize = 32 * 1024;
const HOLD_MAX: usize = 256 * 1024;
const HOLD_FOR: Duration = Duration::from_micros(200);

/// A connection's hand-over that waits: its unread bytes when last looked at, when,
/// and since when it waits.
#[derive(Debug, Clone, Copy)]
struct Held {
    available: usize,
    looked: Instant,
    since: Instant,
}

impl Held {
    /// Still worth waiting at `now` with `available` bytes: they grew since the last
    /// look (or it was this turn), and `HOLD_FOR` has not passed.
    fn still_coming(&self, available: usize, now: Instant) -> bool {
        (available > self.available || self.looked == now) && now < self.since + HOLD_FOR
    }
}

/// How the loop serves its handles.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LoopOptions {
    /// Bound of each connection's receive and send buffer in the shared state.
    pub cap: usize,
    /// Nagle off on new connections.
    pub nodelay: bool,
    /// Spin for the idle-spin budget after the last frame before sleeping in poll(2)
    /// (else sleep at once).
    pub busy_poll: bool,
    /// At shutdown, how long connections whose handles were dropped may take to send
    /// what they still have.
    pub linger: Duration,
}

/// How long a SYN goes unanswered before the kernel is asked to confirm a next hop
/// it knows (shared-IP mode), and how often after that.
const NEIGHBOUR_CHECK_AFTER: Duration = Duration::from_secs(1);
const NEIGHBOUR_CHECK_EVERY: Duration = Duration::from_millis(500);

/// A connect in progress.
struct Connecting {
    id: ConnId,
    /// When it fails with `TimedOut`.
    deadline: Instant,
    /// Its next hop, and when the kernel is next asked whether that neighbour is alive.
    hop: IpAddr,
    neighbour_check: Instant,
}

/// A next hop whose MAC the stack does not know yet.
struct Resolving {
    hop: IpAddr,
    last_provoke: Instant,
    give_up: Instant,
}

pub(crate) struct Driver {
    rt: Runtime,
    commands: Receiver<Command>,
    shutdown: Arc<AtomicBool>,
    conns: HashMap<ConnId, Arc<Conn>>,
    listeners: HashMap<u16, Arc<Listener>>,
    ready: Vec<ConnId>,
    accepted: Vec<Arc<Conn>>,
    resolving: Vec<Resolving>,
    connecting: Vec<Connecting>,
    /// Connections whose handles are gone and whose FIN is queued: the stack finishes
    /// them on its own, and a shutdown waits for them (up to the linger time).
    lingering: Vec<ConnId>,
    /// Ports no longer listened on, still steered while connections on them remain.
    draining_ports: Vec<u16>,
    next_check: Instant,
    /// When the loop last had work.
    last_busy: Instant,
    options: LoopOptions,
    /// Wakes a loop on its own thread from poll(2) when a handle sends a command
    /// (none for a loop the application turns: its handles are on its thread).
    wake: Option<Arc<WakeFd>>,
    /// The latest a stop may linger until (see [`Driver::linger_until`]).
    linger_deadline: Option<Instant>,
    /// Connections whose hand-over waits for more bytes (see `HOLD_MIN`).
    held: Vec<(ConnId, Held)>,
}

impl Driver {
    pub(crate) fn new(
        rt: Runtime,
        commands: Receiver<Command>,
        shutdown: Arc<AtomicBool>,
        options: LoopOptions,
    ) -> Self {
        Driver {
            rt,
            commands,
            shutdown,
            conns: HashMap::new(),
            listeners: HashMap::new(),
            ready: Vec::with_capacity(1024),
            accepted: Vec::new(),
            resolving: Vec::new(),
            connecting: Vec::new(),
            lingering: Vec::new(),
            draining_ports: Vec::new(),
            next_check: Instant::ZERO,
            last_busy: Instant::ZERO,
            options,
            wake: None,
            linger_deadline: None,
            held: Vec::with_capacity(64),
        }
    }

    /// A stop lingers at most `within` from now, whatever the linger time: the
    /// application spent the rest of its grace period already.
    pub(crate) fn linger_until(&mut self, within: std::time::Duration) {
        self.linger_deadline = Some(self.rt.now() + within);
    }

    /// Lets the handles wake this loop from its sleep in poll(2) through `wake`.
    pub(crate) fn wake_on(mut self, wake: Arc<WakeFd>) -> Self {
        self.rt.also_wake_on(wake.raw_fd());
        self.wake = Some(wake);
        self
    }

    /// Turns until the last handle is gone or [`super::Stack::shutdown`] is called.
    pub(crate) fn run(mut self) {
        self.start();
        if !self.options.busy_poll {
            self.rt.busy_poll = Duration::ZERO;
        }
        while !self.stopping() {
            if !self.turn() {
                self.rest();
            }
        }
        self.finish();
    }

    /// Before the first turn: the gateway's address from the kernel, if it has it.
    pub(crate) fn start(&mut self) {
        if let Some(gateway) = self.rt.stack.config().gateway {
            self.learn_from_kernel(gateway.into());
        }
        if let Some(gateway) = self.rt.stack.config().gateway6 {
            self.learn_from_kernel(gateway.into());
        }
    }

    /// Whether the loop was told to stop, or every handle is gone.
    pub(crate) fn stopping(&self) -> bool {
        self.shutdown.load(Ordering::SeqCst)
    }

    /// One turn: the handles' commands, a batch received and sent, the handles told;
    /// true if there was work.
    pub(crate) fn turn(&mut self) -> bool {
        let mut busy = self.commands();
        busy |= self.rt.turn() > 0;
        busy |= self.sync_ready();
        busy |= self.accept();
        let now = self.rt.turn_time();
        if now >= self.next_check {
            self.next_check = now + CHECK_EVERY;
            self.check(now);
        }
        if busy {
            self.last_busy = now;
        }
        busy
    }

    /// After a turn without work: the loop's idle policy.
    /// The runtime spins for its budget after the last frame, then sleeps in poll(2)
    /// until a frame, a timer, or (for a loop on its own thread) a handle's command.
    pub(crate) fn rest(&mut self) {
        let Some(wake) = self.wake.clone() else {
            self.rt.idle();
            return;
        };
        // A command sent before the flag is set is seen by this look; one sent after it
        // writes the eventfd, which ends the sleep.
        wake.set_sleeping(true);
        if !self.commands() && !self.stopping() {
            self.rt.idle();
        }
        wake.set_sleeping(false);
        wake.clear();
    }

    /// A loop that sleeps without holding the driver (see `net::inline`), after a turn
    /// without work: how long it may sleep, or `None` (turn again). `wake` is the
    /// eventfd handles write when they send a command while it sleeps; after `Some`,
    /// [`Driver::woke`] once awake.
    pub(crate) fn sleep_plan(&mut self, wake: &WakeFd) -> Option<Duration> {
        // As in `rest`: a command sent before the flag is set is seen by this look.
        wake.set_sleeping(true);
        let plan = if self.commands() || self.stopping() {
            None
        } else {
            self.rt.sleep_plan()
        };
        if plan.is_none() {
            wake.set_sleeping(false);
        }
        plan
    }

    /// How long a thread waiting on the device's sockets itself may wait before the
    /// loop needs a turn (see [`Runtime::watch_plan`]); `None`: turn now.
    pub(crate) fn watch_plan(&mut self) -> Option<Duration> {
        // A held hand-over goes out at a turn in which no more bytes came: turn again
        // (for `HOLD_FOR` at most) rather than sleep on frames that may not come.
        if !self.held.is_empty() {
            return None;
        }
        let checks = !(self.connecting.is_empty()
            && self.resolving.is_empty()
            && self.lingering.is_empty()
            && self.draining_ports.is_empty());
        self.rt.watch_plan(checks.then_some(self.next_check))
    }

    /// The device's sockets a thread may wait on itself.
    pub(crate) fn watch_fds(&self) -> Vec<std::os::fd::RawFd> {
        self.rt.device.xdp().watch_fds()
    }

    /// After a sleep [`Driver::sleep_plan`] allowed.
    pub(crate) fn woke(&mut self) {
        self.rt.woke();
    }

    /// The fds a loop sleeping without the driver sleeps on (the device's).
    pub(crate) fn sleep_fds(&self) -> Vec<libc::pollfd> {
        self.rt.device.xdp().sleep_fds()
    }

    /// The runtime, between two turns.
    pub(crate) fn runtime(&mut self) -> &mut Runtime {
        &mut self.rt
    }

    /// Syncs the connections the stack has news for; true if there were any.
    fn sync_ready(&mut self) -> bool {
        self.rt.stack.drain_news(&mut self.ready);
        let any = !self.ready.is_empty();
        let mut ready = std::mem::take(&mut self.ready);
        for id in ready.drain(..) {
            if let Some(conn) = self.conns.get(&id).cloned() {
                self.sync(&conn);
            }
        }
        // Held hand-overs not looked at this turn: released unless bytes still come.
        let now = self.rt.turn_time();
        for i in (0..self.held.len()).rev() {
            let Some(&(id, held)) = self.held.get(i) else {
                continue;
            };
            if held.looked == now {
                continue;
            }
            if let Some(conn) = self.conns.get(&id).cloned() {
                self.sync(&conn);
            }
            // Not looked at by the sync (the connection ended): nothing to hold.
            if self
                .held
                .get(i)
                .is_some_and(|&(at, h)| at == id && h.looked != now)
            {
                self.held.swap_remove(i);
            }
        }
        ready.extend(self.held.iter().map(|&(id, _)| id));
        let holding = !ready.is_empty();
        ready.clear();
        self.ready = ready;
        any || holding
    }

    /// Whether the hand-over to connection `id`'s waiting reader waits for more bytes
    /// (see `HOLD_MIN`): `available` in-order bytes, `window` the receive window left.
    fn hold(&mut self, id: ConnId, available: usize, window: usize, open: bool) -> bool {
        let now = self.rt.turn_time();
        let bulk = open && (HOLD_MIN..HOLD_MAX).contains(&available) && available <= window;
        match self.held.iter().position(|&(at, _)| at == id) {
            None if bulk => {
                let held = Held {
                    available,
                    looked: now,
                    since: now,
                };
                self.held.push((id, held));
                true
            }
            None => false,
            Some(i) if bulk && self.held[i].1.still_coming(available, now) => {
                self.held[i].1 = Held {
                    available,
                    looked: now,
                    ..self.held[i].1
                };
                true
            }
            Some(i) => {
                self.held.swap_remove(i);
                false
            }
        }
    }

    /// Carries out the handles' commands; true if there were any.
    fn commands(&mut self) -> bool {
        let mut any = false;
        loop {
            let command = match self.commands.try_recv() {
                Ok(c) => c,
                Err(TryRecvError::Empty) => return any,
                Err(TryRecvError::Disconnected) => {
                    self.shutdown.store(true, Ordering::Relaxed);
                    return any;
                }
            };
            any = true;
            match command {
                Command::Wake(conn) => {
                    conn.queued.store(false, Ordering::Release);
                    self.sync(&conn);
                }
                Command::Connect {
                    conn,
                    remote,
                    timeout,
                    from_port,
                } => self.connect(conn, remote, timeout, from_port),
                Command::Listen(listener) => self.listen(listener),
                Command::Unlisten(listener) => self.unlisten(&listener),
                Command::Set(conn, option) => self.set(&conn, option),
                Command::Run(f) => f(&mut self.rt),
                Command::Export(conn, answer) => drop(answer.send(self.export(&conn))),
                Command::Import(bytes, answer) => drop(answer.send(self.import(&bytes))),
            }
        }
    }

    /// Takes `conn` out of the stack for another process (see `TcpStream::export`,
    /// [`super::moves::export_conn`]): its handle fails with [`Failure::Moved`].
    fn export(&mut self, conn: &Arc<Conn>) -> std::io::Result<Vec<u8>> {
        let mut st = conn.shared.lock();
        let (id, bytes) = super::moves::export_conn(&mut self.rt.stack, &mut st)?;
        conn.shared.notify(&mut st);
        drop(st);
        self.conns.remove(&id);
        self.held.retain(|&(at, _)| at != id);
        Ok(bytes)
    }

    /// Takes in a connection [`Driver::export`] gave (see `TcpStream::import`,
    /// [`super::moves::import_conn`]), and has the interface's switch, if the frames
    /// go through one, send its segments here.
    fn import(&mut self, bytes: &[u8]) -> std::io::Result<Arc<Conn>> {
        let now = self.rt.now();
        let (cap, nodelay) = (self.options.cap, self.options.nodelay);
        let (id, conn) = super::moves::import_conn(&mut self.rt.stack, now, bytes, cap, nodelay)?;
        if let Some(switch) = self.rt.device.xdp().switch() {
            let (local, remote) = {
                let st = conn.shared.lock();
                (st.local, st.remote)
            };
            let steered = match (local, remote) {
                (SocketAddr::V4(local), SocketAddr::V4(remote)) => {
                    switch.steer_moved(*remote.ip(), remote.port(), local.port())
                }
                _ => Err(std::io::Error::new(
                    std::io::ErrorKind::Unsupported,
                    "the switch steers IPv4 only",
                )),
            };
            if let Err(e) = steered {
                // Nobody could carry it on: the peer hears a RST, never silence.
                self.rt.stack.abort(id);
                self.rt.stack.release(id);
                return Err(e);
            }
        }
        self.conns.insert(id, conn.clone());
        self.sync(&conn);
        Ok(conn)
    }

    /// Applies a socket option a handle changed.
    fn set(&mut self, conn: &Conn, option: ConnOption) {
        let Some(id) = conn.shared.lock().id else {
            return;
        };
        let stack = &mut self.rt.stack;
        match option {
            ConnOption::Nodelay(on) => stack.set_nodelay(id, on),
            ConnOption::Keepalive(every) => {
                // RFC 1122 4.2.3.6; 9 probes, as Linux.
                if let Some(every) = every {
                    stack.set_keepalive_params(id, every, every, 9);
                }
                stack.set_keepalive(id, every.is_some());
            }
        }
    }

    fn connect(
        &mut self,
        conn: Arc<Conn>,
        remote: SocketAddr,
        timeout: Duration,
        from_port: Option<u16>,
    ) {
        let routing = startup::step("connect: route and neighbour from the kernel");
        let now = self.rt.now();
        let mut st = conn.shared.lock();
        let hop = match learn_route(&mut self.rt.stack, &self.rt.iface, remote.ip()) {
            Ok(hop) => hop,
            Err(refusal) => {
                st.failure = Some(Failure::NoRoute(refusal));
                st.phase = Phase::Closed;
                conn.shared.notify(&mut st);
                return;
            }
        };
        self.learn_from_kernel(hop);
        drop(routing);
        let mut opened = match from_port {
            Some(port) => self.rt.stack.connect_from(now, port, remote),
            None => self.rt.stack.connect(now, remote),
        };
        let (lo, hi) = self.rt.stack.config().port_range;
        if let (Ok(id), Some(port)) = (&opened, from_port)
            && self.rt.stack.config().mode == AddressMode::Shared
            && !(lo..=hi).contains(&port)
            && !self.listeners.contains_key(&port)
            && !self.draining_ports.contains(&port)
        {
            // Shared-IP mode: the port is not the stack's; its segments come to us
            // while the connection lasts, as a listener's that still has connections.
            // A port the XDP program cannot steer fails the connect now (EADDRNOTAVAIL),
            // never a connection whose segments would go to the kernel.
            self.draining_ports.push(port);
            if self.steer_listeners().is_err() {
                tracing::warn!(
                    "connect from port {port} (bound outside the stack's range {lo}-{hi}): no room to steer it; EADDRNOTAVAIL"
                );
                self.draining_ports.retain(|&p| p != port);
                let _ = self.steer_listeners();
                self.rt.stack.abort(*id);
                self.rt.stack.release(*id);
                opened = Err(StackError::NoFreePort);
            }
        }
        match opened {
            Ok(id) => {
                st.id = Some(id);
                if let Some(c) = self.rt.stack.connection(id) {
                    st.local = c.local();
                }
                self.conns.insert(id, conn.clone());
                self.connecting.push(Connecting {
                    id,
                    deadline: now + timeout,
                    hop,
                    neighbour_check: now + NEIGHBOUR_CHECK_AFTER,
                });
                if self.rt.stack.neighbour_mac(hop).is_none()
                    && self.rt.stack.config().mode == AddressMode::Shared
                    && !self.resolving.iter().any(|r| r.hop == hop)
                {
                    provoke_kernel_resolve(&self.rt.iface, hop);
                    self.resolving.push(Resolving {
                        hop,
                        last_provoke: now,
                        give_up: now + timeout,
                    });
                }
            }
            Err(e) => {
                st.failure = Some(Failure::Stack(e));
                st.phase = Phase::Closed;
            }
        }
        conn.shared.notify(&mut st);
    }

    /// Puts the kernel's neighbour entry for `hop`, if it has one, in the stack's cache.
    fn learn_from_kernel(&mut self, hop: IpAddr) {
        if self.rt.stack.neighbour_mac(hop).is_none()
            && let Some(mac) = kernel_neighbour(&self.rt.iface, hop)
        {
            self.rt.stack.add_neighbour(hop, mac);
        }
    }

    fn listen(&mut self, listener: Arc<Listener>) {
        let port = listener.port;
        let result = if port == 0 {
            Err(Failure::BadAddress)
        } else {
            self.rt
                .stack
                .listen_families(
                    port,
                    listener.backlog,
                    listener.families.0,
                    listener.families.1,
                )
                .map_err(Failure::Stack)
        };
        let result = result.and_then(|()| {
            self.draining_ports.retain(|&p| p != port);
            self.listeners.insert(port, listener.clone());
            self.steer_listeners().inspect_err(|_| {
                self.rt.stack.unlisten(port);
                self.listeners.remove(&port);
            })
        });
        let mut st = listener.shared.lock();
        st.bound = Some(result);
        listener.shared.notify(&mut st);
    }

    /// Shared-IP mode: the XDP program steers the listening ports to us, and the ports
    /// no longer listened on that still have connections (their segments must keep
    /// coming to us, or the kernel would reset them).
    fn steer_listeners(&mut self) -> Result<(), Failure> {
        if self.rt.stack.config().mode != AddressMode::Shared {
            return Ok(());
        }
        let mut ports: Vec<u16> = self.listeners.keys().copied().collect();
        ports.extend(&self.draining_ports);
        self.rt.device.xdp().set_listen_ports(&ports).map_err(|e| {
            tracing::warn!("steering listening ports {ports:?}: {e:#}");
            Failure::Steering
        })
    }

    fn unlisten(&mut self, listener: &Arc<Listener>) {
        let port = listener.port;
        if !self
            .listeners
            .get(&port)
            .is_some_and(|l| Arc::ptr_eq(l, listener))
        {
            return;
        }
        self.listeners.remove(&port);
        self.rt.stack.unlisten(port);
        if !self.draining_ports.contains(&port) {
            self.draining_ports.push(port);
        }
        let _ = self.steer_listeners();
        let queued: Vec<Arc<Conn>> = listener.shared.lock().queue.drain(..).collect();
        for conn in queued {
            if let Some(id) = conn.shared.lock().id {
                self.rt.stack.abort(id);
                self.rt.stack.release(id);
                self.conns.remove(&id);
            }
        }
    }

    /// Moves established connections from the stack's accept queues to the listeners';
    /// true if there were any.
    fn accept(&mut self) -> bool {
        for listener in self.listeners.values() {
            let mut room = listener
                .backlog
                .saturating_sub(listener.queued.load(Ordering::Relaxed));
            while room > 0
                && let Some(id) = self.rt.stack.accept(listener.port)
            {
                room -= 1;
                let Some(c) = self.rt.stack.connection(id) else {
                    continue;
                };
                let conn = Conn::new(
                    c.remote(),
                    self.options.cap,
                    self.options.nodelay,
                    Phase::Open,
                    Some(id),
                );
                conn.shared.lock().local = c.local();
                self.conns.insert(id, conn.clone());
                self.accepted.push(conn);
            }
            if !self.accepted.is_empty() {
                let mut st = listener.shared.lock();
                st.queue.extend(self.accepted.iter().cloned());
                listener.queued.store(st.queue.len(), Ordering::Relaxed);
                listener.shared.notify(&mut st);
                drop(st);
                // Data may have come with the handshake: hand it over now.
                let accepted = std::mem::take(&mut self.accepted);
                for conn in &accepted {
                    self.sync(conn);
                }
                self.accepted = accepted;
                self.accepted.clear();
                return true;
            }
        }
        false
    }

    /// Connect deadlines, next hops being resolved, lingering connections, ports no
    /// longer listened on whose last connection is gone.
    fn check(&mut self, now: Instant) {
        self.prune_lingering();
        if !self.draining_ports.is_empty() {
            let before = self.draining_ports.len();
            let (stack, conns, lingering) = (&self.rt.stack, &self.conns, &self.lingering);
            self.draining_ports.retain(|&port| {
                conns.values().any(|c| c.shared.lock().local.port() == port)
                    || lingering.iter().any(|&id| {
                        stack
                            .connection(id)
                            .is_some_and(|c| c.local().port() == port)
                    })
            });
            if self.draining_ports.len() != before {
                let _ = self.steer_listeners();
            }
        }
        let iface = self.rt.iface.clone();
        let stack = &mut self.rt.stack;
        let shared_ip = stack.config().mode == AddressMode::Shared;
        let conns = &self.conns;
        self.connecting.retain_mut(|c| {
            let Some(conn) = conns.get(&c.id) else {
                return false;
            };
            let mut st = conn.shared.lock();
            if st.phase != Phase::Connecting {
                return false;
            }
            let failure = if now >= c.deadline {
                if stack.neighbour_mac(c.hop).is_none() {
                    // The SYN never left: the next hop did not answer ARP in time.
                    Failure::NoArpReply(c.hop)
                } else {
                    Failure::ConnectTimeout
                }
            } else if shared_ip && now >= c.neighbour_check && stack.state(c.id) == State::SynSent {
                // Shared-IP mode takes next hops from the kernel's neighbour table,
                // which may hold a host that went away. Using the entry makes the
                // kernel confirm it; once it has failed, the connect ends as the
                // kernel's own does, "host unreachable", instead of timing out.
                c.neighbour_check = now + NEIGHBOUR_CHECK_EVERY;
                provoke_kernel_resolve(&iface, c.hop);
                if !kernel_neighbour_failed(&iface, c.hop) {
                    return true;
                }
                Failure::Tcp(TcpError::HostUnreachable)
            } else {
                return true;
            };
            stack.abort(c.id);
            st.failure = Some(failure);
            st.phase = Phase::Closed;
            conn.shared.notify(&mut st);
            false
        });
        let stack = &mut self.rt.stack;
        self.resolving.retain_mut(|r| {
            if stack.neighbour_mac(r.hop).is_some() {
                return false;
            }
            if let Some(mac) = kernel_neighbour(&iface, r.hop) {
                stack.add_neighbour(r.hop, mac);
                return false;
            }
            if now.saturating_since(r.last_provoke) >= PROVOKE_EVERY {
                provoke_kernel_resolve(&iface, r.hop);
                r.last_provoke = now;
            }
            now < r.give_up
        });
    }

    /// Brings one connection's shared state in step with the stack: the handle's bytes
    /// into the send buffer, received bytes out, FIN, and the events; then wakes the
    /// handle if anything changed.
    fn sync(&mut self, conn: &Arc<Conn>) {
        let stack = &mut self.rt.stack;
        let mut st = conn.shared.lock();
        let Some(id) = st.id else {
            return;
        };
        let mut changed = false;
        if st.abort {
            stack.abort(id);
            stack.release(id);
            st.failure.get_or_insert(Failure::Tcp(TcpError::Closed));
            st.phase = Phase::Closed;
            st.id = None;
            conn.shared.notify(&mut st);
            drop(st);
            self.conns.remove(&id);
            return;
        }
        // Full, or failed: the events below say which. Room made in a ring that was
        // not full changes no readiness and wakes nobody (no writer waits then), so it
        // is not news: a watcher's eventfd write per response would be wasted.
        if !st.tx.is_empty() {
            let was_full = st.tx.len() >= st.cap;
            if stack.send_ring(id, &mut st.tx) > 0 && was_full {
                changed = true;
            }
        }
        if (st.write_shut || st.dropped) && st.tx.is_empty() && !st.fin_queued {
            stack.close(id);
            st.fin_queued = true;
        }
        // Received bytes: the room of those the handle read goes back to the window,
        // and once it has read them all, the TCP's in-order bytes are handed over whole.
        if st.read_shut || st.dropped {
            st.discard_rx();
        }
        let read = std::mem::take(&mut st.rx_read);
        stack.returned(id, read);
        // While a zero-copy reader holds the handed-over bytes, the next hand-over
        // waits for them to come back (the reader then tells the loop: stalled).
        let facts = stack.connection(id).map(|c| {
            let open = c.state() == State::Established;
            (c.recv_available(), c.recv_window(), open)
        });
        let held = !st.rx_lent
            && st.rx.is_empty()
            && !st.read_shut
            && !st.dropped
            && facts
                .is_some_and(|(available, window, open)| self.hold(id, available, window, open));
        let stack = &mut self.rt.stack;
        if !held && !st.rx_lent && stack.take_readable(id, &mut st.rx) > 0 {
            if st.read_shut || st.dropped {
                st.discard_rx();
                stack.returned(id, std::mem::take(&mut st.rx_read));
            }
            changed = true;
        }
        // The handle tells the loop of its reads only when the window waits for them: the
        // stack holds bytes behind the handed-over ones, or these take most of the room.
        st.rx_stalled = st.rx_lent
            || !st.rx.is_empty()
                && stack
                    .connection(id)
                    .is_none_or(|c| c.recv_available() > 0 || c.recv_window() < st.rx.len());
        let ev = stack.events(id);
        if st.phase == Phase::Connecting && ev.connected {
            st.phase = Phase::Open;
            changed = true;
        }
        if ev.read_closed && !st.read_closed {
            st.read_closed = true;
            changed = true;
        }
        if ev.fin_received && !st.peer_fin {
            st.peer_fin = true;
            changed = true;
        }
        if let Some(e) = ev.error
            && st.failure.is_none()
        {
            let hop = stack.next_hop_ip(st.remote.ip());
            st.failure = Some(match e {
                // The stack gave up on ARP for the next hop while connecting.
                TcpError::HostUnreachable
                    if st.phase == Phase::Connecting && stack.neighbour_mac(hop).is_none() =>
                {
                    Failure::NoArpReply(hop)
                }
                e => Failure::Tcp(e),
            });
            changed = true;
        }
        if ev.closed && st.phase != Phase::Closed {
            st.phase = Phase::Closed;
            changed = true;
        }
        if changed {
            conn.shared.notify(&mut st);
        }
        // A dropped handle: once our FIN is queued (or the connection is gone), the
        // stack finishes the close on its own and frees the slot.
        if st.dropped && (st.fin_queued || st.phase == Phase::Closed) {
            stack.release(id);
            if st.phase != Phase::Closed {
                self.lingering.push(id);
            }
            st.id = None;
            drop(st);
            self.conns.remove(&id);
        }
    }

    /// Forgets the lingering connections that are done (closed or in TIME-WAIT).
    fn prune_lingering(&mut self) {
        let stack = &self.rt.stack;
        self.lingering
            .retain(|&id| !matches!(stack.state(id), State::Closed | State::TimeWait));
    }

    /// True while a connection whose handle is gone still has bytes or a FIN to send.
    /// One in FIN-WAIT-2 has had all it wrote, FIN included, acknowledged (RFC 9293
    /// 3.3.2); what is left is the peer's side, which no handle reads, so a stop does
    /// not wait for the peer's FIN (as an exiting process does not on the kernel).
    fn lingers(&mut self) -> bool {
        self.prune_lingering();
        let stack = &self.rt.stack;
        self.lingering
            .iter()
            .any(|&id| stack.state(id) != State::FinWait2)
            || self.conns.values().any(|c| c.shared.lock().dropped)
    }

    /// Listeners stop, and connections whose handles were dropped get up to the linger
    /// time to send what they still have (as the kernel keeps sending for a closed
    /// socket).
    pub(crate) fn linger(&mut self) {
        for (port, listener) in self.listeners.drain() {
            self.rt.stack.unlisten(port);
            let mut st = listener.shared.lock();
            st.stopped = true;
            listener.shared.notify(&mut st);
        }
        let mut deadline = self.rt.now() + self.options.linger;
        if let Some(latest) = self.linger_deadline {
            deadline = deadline.min(latest);
        }
        while self.lingers() && self.rt.now() < deadline {
            while let Ok(command) = self.commands.try_recv() {
                match command {
                    Command::Wake(conn) => {
                        conn.queued.store(false, Ordering::Release);
                        self.sync(&conn);
                    }
                    Command::Set(conn, option) => self.set(&conn, option),
                    other => stopped(other),
                }
            }
            self.rt.turn();
            self.sync_ready();
            self.rt.idle();
        }
    }

    /// The loop stops. First [`Driver::linger`]; then the connections still open are
    /// closed with FIN if they have nothing left to send, reset otherwise, and their
    /// handles woken with an error.
    pub(crate) fn finish(mut self) {
        self.linger();
        for (id, conn) in self.conns.drain() {
            let mut st = conn.shared.lock();
            if st.failure.is_none() && st.tx.is_empty() {
                self.rt.stack.close(id);
            } else {
                self.rt.stack.abort(id);
            }
            self.rt.stack.release(id);
            st.failure.get_or_insert(Failure::Stopped);
            st.phase = Phase::Closed;
            st.id = None;
            conn.shared.notify(&mut st);
        }
        // The RSTs and FINs just queued leave (the device may take a few turns).
        let end = self.rt.now() + SHUTDOWN_DRAIN;
        while self.rt.now() < end {
            self.rt.turn();
            if !self.rt.stack.has_pending_output() {
                break;
            }
        }
        // Commands that arrive from now on find the channel closed.
        while let Ok(command) = self.commands.try_recv() {
            stopped(command);
        }
    }
}

/// Answers a command the loop will never carry out.
pub(crate) fn stopped(command: Command) {
    match command {
        Command::Connect { conn, .. } | Command::Wake(conn) => {
            let mut st = conn.shared.lock();
            st.failure.get_or_insert(Failure::Stopped);
            st.phase = Phase::Closed;
            conn.shared.notify(&mut st);
        }
        Command::Listen(listener) | Command::Unlisten(listener) => {
            let mut st = listener.shared.lock();
            st.stopped = true;
            st.bound.get_or_insert(Err(Failure::Stopped));
            listener.shared.notify(&mut st);
        }
        // Nothing to apply it to any more.
        Command::Set(..) => {}
        // Its answer channel closes: the caller learns the loop is gone.
        Command::Run(f) => drop(f),
        Command::Export(_, answer) => drop(answer.send(Err(Failure::Stopped.io()))),
        Command::Import(_, answer) => drop(answer.send(Err(Failure::Stopped.io()))),
    }
}

/// The next hop towards `dst` from the kernel's route to it (longest prefix match,
/// metrics, policy rules, on-link routes), told to the stack the first time `dst` comes
/// up; the stack on interface `iface` keeps it. A gateway the user chose serves instead.
pub(crate) fn learn_route(
    stack: &mut crate::stack::Stack,
    iface: &str,
    dst: IpAddr,
) -> Result<IpAddr, RouteRefusal> {
    // No IPv6 address on the stack: as the kernel's connect(2) on a host without an
    // IPv6 route, ENETUNREACH.
    if dst.is_ipv6() && stack.ipv6().is_none() {
        return Err(RouteRefusal::Errno(libc::ENETUNREACH));
    }
    let fixed = stack.config().gateway_fixed && dst.is_ipv4();
    if !fixed && !stack.has_route(dst) {
        let ifindex = netinfo::interface_index(iface).ok_or(RouteRefusal::Errno(libc::ENODEV))?;
        let hop = match dst {
            IpAddr::V4(d) => netinfo::next_hop_on(ifindex, d).map(IpAddr::V4),
            IpAddr::V6(d) => netinfo::next_hop6_on(ifindex, d).map(IpAddr::V6),
        }
        .inspect_err(|refusal| tracing::debug!(%dst, "no route: {refusal}"))?;
        tracing::debug!(%dst, %hop, "next hop from the kernel's route");
        stack.set_route(dst, hop);
    }
    Ok(stack.next_hop_ip(dst))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn a_held_hand_over_waits_while_bytes_come_and_not_past_its_limit() {
        let at = |us: u64| Instant::from_micros(1_000 + us);
        let held = Held {
            available: 40_000,
            looked: at(0),
            since: at(0),
        };
        assert!(held.still_coming(40_000, at(0)), "the same turn");
        assert!(held.still_coming(80_000, at(5)), "more came");
        assert!(!held.still_coming(40_000, at(5)), "nothing came: hand over");
        let limit = 1_000 + HOLD_FOR.as_micros() as u64;
        assert!(
            !held.still_coming(80_000, Instant::from_micros(limit)),
            "waited enough"
        );
    }

    /// A stack without an IPv6 address answers an IPv6 connect as the kernel does on a
    /// host with no IPv6 route: ENETUNREACH (curl's exit 7), before any netlink query.
    #[test]
    fn an_ipv6_peer_of_a_stack_without_ipv6_is_unreachable() {
        let cfg = crate::stack::StackConfig::new([2; 6], Ipv4Addr::new(10, 0, 0, 1), 24);
        let mut stack = crate::stack::Stack::new(cfg);
        let dst: IpAddr = "2001:db8::1".parse().unwrap();
        let refusal = learn_route(&mut stack, "nosuch-if0", dst).unwrap_err();
        assert_eq!(refusal, RouteRefusal::Errno(libc::ENETUNREACH));
        let e = Failure::NoRoute(refusal).io();
        assert_eq!(e.raw_os_error(), Some(libc::ENETUNREACH));
        assert_eq!(e.kind(), std::io::ErrorKind::NetworkUnreachable);
        // With an address, the route is asked for (here: no such interface).
        let mut cfg = crate::stack::StackConfig::new([2; 6], Ipv4Addr::new(10, 0, 0, 1), 24);
        cfg.ipv6 = Some("fd00::1".parse().unwrap());
        let mut stack = crate::stack::Stack::new(cfg);
        let refusal = learn_route(&mut stack, "nosuch-if0", dst).unwrap_err();
        assert_eq!(refusal, RouteRefusal::Errno(libc::ENODEV));
    }
}
