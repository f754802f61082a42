//! The environment variables that configure the stack of a program run under
//! `userspace exec` (the preload library reads them; a user of `LD_PRELOAD` may set
//! them by hand). Each is optional; unset means the builder's default.

/// Interface to attach to (default: the default route's).
pub const IFACE: &str = "USERSPACE_IFACE";
/// Owned-IP mode with this IPv4 address.
pub const IP: &str = "USERSPACE_IP";
/// Next hop for every destination.
pub const GATEWAY: &str = "USERSPACE_GATEWAY";
/// CPU to pin the poll loop to.
pub const CPU: &str = "USERSPACE_CPU";
/// RX queue to bind (default: every queue).
pub const QUEUE: &str = "USERSPACE_QUEUE";
/// XDP attach mode: `native` or `skb`.
pub const XDP_MODE: &str = "USERSPACE_XDP_MODE";
/// `1`: Nagle off on every connection.
pub const NODELAY: &str = "USERSPACE_NODELAY";
/// Bytes buffered between a socket and the stack each way.
pub const BUFFER: &str = "USERSPACE_BUFFER";
/// `1`: the poll loop sleeps at once when idle, without spinning first.
pub const NO_BUSY_POLL: &str = "USERSPACE_NO_BUSY_POLL";
/// `1`: say on stderr, for each socket, whether it went to the stack or the kernel and why.
pub const VERBOSE: &str = "USERSPACE_VERBOSE";
/// `1`: go through the interface's switch, shared with other programs (`--share`).
pub const SWITCH: &str = "USERSPACE_SWITCH";
/// The exit guard's table (`/proc/self/fd/N`): the stack lists its connections there
/// so that their peers are reset if the program dies with them open.
pub const PEER_TABLE: &str = "USERSPACE_PEER_TABLE";
/// `1`: the stack's poll loop runs on a thread of its own, as before the inline loop
/// (default: the program's threads turn it, with a background thread while they do not).
pub const LOOP_THREAD: &str = "USERSPACE_LOOP_THREAD";
