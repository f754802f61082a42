//! `getsockopt(IPPROTO_TCP, TCP_INFO)` on a stack socket: Linux's `struct tcp_info`
//! filled from the stack's snapshot of the connection (`TcpStream::info`). Fields the
//! stack does not keep (pacing, delivery rate, the times of the last segments) are 0,
//! as Linux leaves what a socket has not measured. Sizes and counts in segments are
//! Linux's: `snd_cwnd`, `snd_ssthresh`, `unacked` and `sacked` in full-sized segments.
use userspace::tcp::{ConnectionInfo, RecoveryPhase, State};

/// Linux's `TCP_*` state numbers (include/net/tcp_states.h).
fn linux_state(state: State) -> u8 {
    match state {
        State::Established => 1,
        State::SynSent => 2,
        State::SynReceived => 3,
        State::FinWait1 => 4,
        State::FinWait2 => 5,
        State::TimeWait => 6,
        State::Closed => 7,
        State::CloseWait => 8,
        State::LastAck => 9,
        State::Closing => 11,
    }
}

pub const TCP_LISTEN: u8 = 10;
pub const TCP_CLOSE: u8 = 7;
pub const TCP_SYN_SENT: u8 = 2;

/// `struct tcp_info` for a connection, or for a socket without one in `state`
/// (`TCP_LISTEN`, `TCP_CLOSE`), as its bytes.
pub fn tcp_info(conn: Option<&ConnectionInfo>, state: u8) -> Vec<u8> {
    // SAFETY: tcp_info is plain integers, for which all-zero is valid.
    let mut t: libc::tcp_info = unsafe { std::mem::zeroed() };
    t.tcpi_state = state;
    t.tcpi_max_pacing_rate = u64::MAX;
    if let Some(c) = conn {
        fill(&mut t, c);
    }
    // SAFETY: reads the struct's own bytes (repr(C), no padding read as uninit: it was
    // zeroed whole first).
    unsafe {
        std::slice::from_raw_parts(
            (&t as *const libc::tcp_info).cast::<u8>(),
            std::mem::size_of::<libc::tcp_info>(),
        )
    }
    .to_vec()
}

fn fill(t: &mut libc::tcp_info, c: &ConnectionInfo) {
    let us = |d: std::time::Duration| d.as_micros().min(u32::MAX as u128) as u32;
    let mss = c.send_mss.max(1);
    let segments = |bytes: usize| bytes.div_ceil(mss).min(u32::MAX as usize) as u32;
    let clamp = |v: u64| v.min(u32::MAX as u64) as u32;
    t.tcpi_state = linux_state(c.state);
    // Linux's TCP_CA_Open, TCP_CA_Recovery, TCP_CA_Loss.
    t.tcpi_ca_state = match c.recovery {
        RecoveryPhase::Open => 0,
        RecoveryPhase::Recovery => 3,
        RecoveryPhase::Loss => 4,
    };
    t.tcpi_retransmits = c.retries.min(255) as u8;
    t.tcpi_backoff = c.retries.min(255) as u8;
    t.tcpi_probes = c.unanswered_probes.min(255) as u8;
    // TCPI_OPT_TIMESTAMPS, TCPI_OPT_SACK, TCPI_OPT_WSCALE.
    t.tcpi_options = u8::from(c.timestamps) | u8::from(c.sack) << 1;
    if let Some((snd, rcv)) = c.window_scale {
        t.tcpi_options |= 4;
        t.tcpi_snd_rcv_wscale = (snd & 0xf) | (rcv & 0xf) << 4;
    }
    t.tcpi_rto = us(c.rto);
    t.tcpi_snd_mss = mss as u32;
    t.tcpi_rcv_mss = c.receive_mss.max(1) as u32;
    t.tcpi_unacked = segments(c.unacked);
    t.tcpi_sacked = segments(c.sacked);
    t.tcpi_rtt = us(c.srtt);
    t.tcpi_rttvar = us(c.rttvar);
    // Linux's TCP_INFINITE_SSTHRESH before the first loss.
    t.tcpi_snd_ssthresh = if c.ssthresh >= 0x7fff_ffff {
        0x7fff_ffff
    } else {
        segments(c.ssthresh)
    };
    t.tcpi_snd_cwnd = segments(c.cwnd);
    t.tcpi_advmss = c.advertised_mss as u32;
    // The duplicate-ACK threshold (RFC 5681 3.2), Linux's initial `reordering`.
    t.tcpi_reordering = 3;
    t.tcpi_rcv_space = c.receive_window;
    t.tcpi_rcv_ssthresh = c.receive_window;
    t.tcpi_total_retrans = clamp(c.stats.retransmits);
    t.tcpi_bytes_acked = c.stats.bytes_acked;
    t.tcpi_bytes_received = c.stats.bytes_received;
    t.tcpi_bytes_sent = c.stats.bytes_out;
    t.tcpi_segs_out = clamp(c.stats.segments_out);
    t.tcpi_segs_in = clamp(c.stats.segments_in);
    t.tcpi_notsent_bytes = c.not_sent.min(u32::MAX as usize) as u32;
    t.tcpi_snd_wnd = c.send_window;
    t.tcpi_rcv_wnd = c.receive_window;
    t.tcpi_rcv_ooopack = clamp(c.stats.out_of_order_segments);
    t.tcpi_total_rto = c.stats.timeouts.min(u16::MAX as u64) as u16;
}

/// `TCP_CONGESTION`'s value: a controller's name (`cubic`, `newreno`) as Linux spells
/// it, NUL-padded to `TCP_CA_NAME_MAX` (16) bytes.
pub fn congestion_name(name: &str) -> Vec<u8> {
    let name = match name {
        "newreno" => "reno",
        other => other,
    };
    let mut bytes = name.as_bytes().to_vec();
    bytes.resize(16, 0);
    bytes
}

/// The name of the controller a stack's new connections run.
pub fn default_congestion(kind: userspace::net::CongestionKind) -> &'static str {
    match kind {
        userspace::net::CongestionKind::NewReno => "newreno",
        userspace::net::CongestionKind::Cubic => "cubic",
    }
}
