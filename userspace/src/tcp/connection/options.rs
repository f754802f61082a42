//! Options the SYNs negotiate (RFC 9293 3.7.1, RFC 7323, RFC 2018), and the segment
//! size path MTU discovery lowers (RFC 1191).
use super::*;

impl Connection {
    /// Path MTU discovery (RFC 1191 section 6.1): lower the segment size to fit the MTU
    /// the router reported, and resend what was sent too large (as Linux's
    /// tcp_simple_retransmit: no congestion response, nothing was lost to congestion).
    pub(super) fn path_mtu(&mut self, mtu: u16) {
        // RFC 1191 section 5 lets a host guess when MTU is 0; like Linux we never go
        // below a 552-byte path (min_pmtu), nor below IPv6's 1280 (RFC 8201 section 4).
        if mtu == 0 {
            return;
        }
        let floor = if self.remote.is_ipv6() { 1280 } else { 552 };
        let room = usize::from(mtu.max(floor)) - self.ip_overhead();
        if room >= self.opts.peer_mss {
            return;
        }
        let ts = if self.opts.ts_enabled { 12 } else { 0 };
        self.opts.peer_mss = room;
        self.opts.snd_mss = room - ts;
        self.snd.nxt = self.snd.una;
        self.rtx.rtt_probe = None;
        self.cong.loss.scoreboard.clear();
    }

    /// IP and TCP header bytes without options: 40 over IPv4, 60 over IPv6.
    pub(super) fn ip_overhead(&self) -> usize {
        if self.remote.is_ipv6() { 60 } else { 40 }
    }

    pub(super) fn negotiate(&mut self, opts: &TcpOptions) {
        // RFC 9293 3.7.1: 536 when no MSS option.
        let peer_mss = usize::from(opts.mss.unwrap_or(536)).max(64);
        match (self.cfg.window_scaling, opts.window_scale) {
            (true, Some(ws)) => self.opts.snd_wscale = ws.min(14), // RFC 7323 2.3
            _ => {
                self.opts.snd_wscale = 0;
                self.opts.rcv_wscale = 0;
            }
        }
        self.opts.ts_enabled = self.cfg.timestamps && opts.timestamps.is_some();
        if let Some((val, _)) = opts.timestamps {
            self.opts.ts_recent = val;
        }
        self.opts.sack_enabled = self.cfg.sack && opts.sack_permitted;
        let mut mss = peer_mss.min(usize::from(self.cfg.mss));
        self.opts.peer_mss = mss;
        if self.opts.ts_enabled {
            mss -= 12; // timestamps take 12 bytes of every segment
        }
        self.opts.snd_mss = mss;
    }
}
