//! The TCP test kit, smoltcp style: the peer's segments go in with `send!`, and `recv!`
//! checks every segment that comes out, whole (flags, seq, ack, window, options,
//! payload), and that nothing else does. Each test module names its own templates,
//! `SEND_TEMPL` (the peer's segment) and `RECV_TEMPL` (ours), that the macros fill in.
#![allow(unused_macros)]
use super::{Connection, Instant};
use crate::wire::TcpRepr;

/// Everything the connection wants to send now, with payloads.
pub(super) fn sent(c: &mut Connection, now: Instant) -> Vec<(TcpRepr<'static>, Vec<u8>)> {
    let mut out = Vec::new();
    while let Some(t) = c.poll_transmit(now) {
        let mut payload = vec![0; t.payload_len];
        c.copy_payload(t.payload_offset, &mut payload);
        out.push((t.repr, payload));
        assert!(out.len() < 10_000);
    }
    out
}

/// Feeds one segment from the peer: the template with the given fields.
macro_rules! send {
    ($c:expr, $now:expr, TcpRepr { $($field:ident : $value:expr),* $(,)? }) => {
        $c.handle_segment($now, &TcpRepr { $($field: $value,)* ..SEND_TEMPL })
    };
    ($c:expr, $now:expr, $seg:expr) => {
        $c.handle_segment($now, &$seg)
    };
}

/// Checks that exactly these segments come out now: each is `TcpRepr { fields }` over
/// the template, or any `TcpRepr` expression.
macro_rules! recv {
    ($c:expr, $now:expr, [$($items:tt)*]) => {{
        #[allow(unused_mut)]
        let mut want: Vec<TcpRepr<'static>> = Vec::new();
        push_out!(want; $($items)*);
        $crate::tcp::testkit::check_out(&mut $c, $now, &want);
    }};
}

macro_rules! push_out {
    ($w:ident;) => {};
    ($w:ident; TcpRepr { $($field:ident : $value:expr),* $(,)? } $(, $($rest:tt)*)?) => {
        $w.push(TcpRepr { $($field: $value,)* ..RECV_TEMPL });
        push_out!($w; $($($rest)*)?);
    };
    ($w:ident; $e:expr $(, $($rest:tt)*)?) => {
        $w.push($e);
        push_out!($w; $($($rest)*)?);
    };
}

/// Checks that nothing comes out now.
macro_rules! recv_nothing {
    ($c:expr, $now:expr) => {
        recv!($c, $now, [])
    };
}

#[track_caller]
pub(super) fn check_out(c: &mut Connection, now: Instant, want: &[TcpRepr<'static>]) {
    let got = sent(c, now);
    let got_headers: Vec<TcpRepr<'static>> = got.iter().map(|(r, _)| *r).collect();
    let want_headers: Vec<TcpRepr<'static>> = want
        .iter()
        .map(|w| TcpRepr { payload: &[], ..*w })
        .collect();
    assert_eq!(got_headers, want_headers, "segments sent at {now:?}");
    for ((_, payload), w) in got.iter().zip(want) {
        assert_eq!(
            payload.as_slice(),
            w.payload,
            "payload of segment {}",
            w.seq.0
        );
    }
}

pub(super) fn t(ms: u64) -> Instant {
    Instant::from_millis(ms)
}
