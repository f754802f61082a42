//! SYN cookies (RFC 4987 section 3.6): when the SYN queue is full, the SYN-ACK's
//! sequence number encodes the connection (a keyed hash of the 4-tuple and the client's
//! ISN, a 64-second counter and an MSS index), and the ACK completing the handshake
//! rebuilds it. Options the cookie cannot hold ride in the TSval, as in Linux.
use super::Stack;
use crate::tcp::seq::SeqNum;
use crate::tcp::{self, Instant};
use crate::wire::{MacAddr, TcpFlags, TcpOptions, TcpRepr};
use std::net::SocketAddr;

/// The low TSval bits of a cookie SYN-ACK that carry options, as in Linux.
const COOKIE_TS_MASK: u32 = 0x3f;
const COOKIE_WS_MASK: u32 = 0x0f;
/// Window scale bits meaning "no window scale" (valid shifts end at 14).
const COOKIE_NO_WS: u8 = 0x0f;
const COOKIE_SACK: u32 = 0x10;

/// Segment sizes encodable in a SYN cookie (RFC 4987 section 3.6).
const COOKIE_MSS: [u16; 4] = [536, 1220, 1440, 1460];

impl Stack {
    /// The cookie: 5 bits of the counter, 2 of the MSS index, 24 of a keyed hash.
    fn cookie(
        &self,
        counter: u64,
        local: SocketAddr,
        remote: SocketAddr,
        client_isn: u32,
        mss_index: u32,
    ) -> u32 {
        let hash = self
            .isn
            .hash(local, remote, counter << 32 | u64::from(client_isn)) as u32;
        ((counter as u32 & 0x1f) << 27) | (mss_index << 24) | (hash & 0x00ff_ffff)
    }

    /// The cookie counter, one step every 64 seconds.
    fn cookie_counter(now: Instant) -> u64 {
        now.micros() / 64_000_000 // 64-second steps
    }

    /// Answers a SYN with a cookie SYN-ACK, keeping no state.
    pub(super) fn send_cookie(
        &mut self,
        now: Instant,
        eth_src: MacAddr,
        local: SocketAddr,
        remote: SocketAddr,
        seg: &TcpRepr<'_>,
    ) {
        let ours = if remote.is_ipv6() {
            tcp::ipv6_mss(self.cfg.tcp.mss)
        } else {
            self.cfg.tcp.mss
        };
        let peer_mss = seg.options.mss.unwrap_or(536).min(ours);
        let index = COOKIE_MSS.iter().rposition(|&m| m <= peer_mss).unwrap_or(0) as u32;
        let isn = self.cookie(Self::cookie_counter(now), local, remote, seg.seq.0, index);
        let tcp = &self.cfg.tcp;
        let mut options = TcpOptions {
            mss: Some(COOKIE_MSS[index as usize]),
            ..Default::default()
        };
        // Like Linux (cookie_init_timestamp): with timestamps, the options the cookie
        // cannot hold ride in the low 6 bits of our TSval, which the peer echoes:
        // bits 0-3 its window scale (15: none), bit 4 SACK permitted.
        if tcp.timestamps
            && let Some((peer_tsval, _)) = seg.options.timestamps
        {
            let peer_ws = seg.options.window_scale.filter(|_| tcp.window_scaling);
            let sack = tcp.sack && seg.options.sack_permitted;
            let bits = u32::from(peer_ws.map_or(COOKIE_NO_WS, |w| w.min(14)))
                | if sack { COOKIE_SACK } else { 0 };
            let ts = (now.millis() as u32).wrapping_add(self.timestamp_offset(local, remote));
            let mut tsval = (ts & !COOKIE_TS_MASK) | bits;
            if tsval > ts {
                tsval = tsval.wrapping_sub(COOKIE_TS_MASK + 1); // never ahead of our clock
            }
            options.timestamps = Some((tsval, peer_tsval));
            options.sack_permitted = sack;
            options.window_scale = peer_ws.map(|_| tcp::receive_window_scale(tcp));
        }
        let repr = TcpRepr {
            src_port: local.port(),
            dst_port: remote.port(),
            seq: SeqNum(isn),
            ack: Some(seg.seq + 1u32),
            flags: TcpFlags::SYN_ACK,
            window: tcp.recv_buffer.min(65535) as u16,
            options,
            payload: &[],
        };
        self.stats.syn_cookies_sent += 1;
        self.queue_tcp(remote, eth_src, repr);
    }

    /// The SYN options a cookie ACK stands for: the MSS from the cookie, and window
    /// scale, SACK and timestamps from the echoed TSval (see `send_cookie`).
    pub(super) fn cookie_options(&self, seg: &TcpRepr<'_>, mss: u16) -> TcpOptions {
        let mut options = TcpOptions {
            mss: Some(mss),
            ..Default::default()
        };
        if let Some((tsval, tsecr)) = seg.options.timestamps
            && self.cfg.tcp.timestamps
        {
            let ws = (tsecr & COOKIE_WS_MASK) as u8;
            options.window_scale = (ws != COOKIE_NO_WS).then_some(ws);
            options.sack_permitted = tsecr & COOKIE_SACK != 0;
            options.timestamps = Some((tsval, 0));
        }
        options
    }

    /// The MSS of the SYN a cookie ACK completes, if its cookie is one of ours from the
    /// current or the previous 64-second step.
    pub(super) fn check_cookie(
        &self,
        now: Instant,
        local: SocketAddr,
        remote: SocketAddr,
        seg: &TcpRepr<'_>,
    ) -> Option<u16> {
        let cookie = seg.ack.unwrap_or_default().0.wrapping_sub(1);
        let client_isn = seg.seq.0.wrapping_sub(1);
        let index = (cookie >> 24) & 0x3;
        let current = Self::cookie_counter(now);
        (0..2u64)
            .filter_map(|age| current.checked_sub(age))
            .any(|counter| self.cookie(counter, local, remote, client_isn, index) == cookie)
            .then_some(COOKIE_MSS[index as usize])
    }
}
