//! What can go wrong with one request on its way, in one vocabulary for
//! both places a test injects it: the in-process transport
//! ([`crate::TestHttp::plan`]) and the TCP proxy ([`crate::proxy`]). Also
//! the seeded generator the random fault runs draw from.

use std::time::Duration;

/// SplitMix64: a tiny seeded generator whose sequence never changes with a
/// dependency's version, so a printed seed replays a run.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// The generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
}

/// What happens to one request: the server never sees it, or sees it and
/// its answer is lost, or it is slow, or it never answers. The proxy does
/// it to the TCP connection; [`crate::TestHttp`] to the call, as noted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    /// The connection closes before anything is forwarded: the server
    /// never sees the request.
    DropBeforeRequest,
    /// This fraction (0..1) of the request's bytes is forwarded, then the
    /// connection closes: the server applies nothing (in process: as
    /// `DropBeforeRequest`).
    DropMidRequest(f64),
    /// The whole request is forwarded and answered, and the answer is lost:
    /// the server applied it, the client never hears.
    DropResponse,
    /// Wait, then go on as usual.
    Delay(Duration),
    /// A TCP reset (SO_LINGER 0): before forwarding or, with `applied`,
    /// after the server answered (in process: a failure before sending, or
    /// a lost answer).
    Reset { applied: bool },
    /// No answer, ever: the proxy keeps the connection open (in process:
    /// the call fails once the request's own timeout has passed).
    BlackHole,
}

impl Fault {
    /// The variant, without its parameters.
    pub fn kind(&self) -> FaultKind {
        match self {
            Fault::DropBeforeRequest => FaultKind::DropBeforeRequest,
            Fault::DropMidRequest(_) => FaultKind::DropMidRequest,
            Fault::DropResponse => FaultKind::DropResponse,
            Fault::Delay(_) => FaultKind::Delay,
            Fault::Reset { .. } => FaultKind::Reset,
            Fault::BlackHole => FaultKind::BlackHole,
        }
    }
}

/// A [`Fault`] without its parameters, for counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    DropBeforeRequest,
    DropMidRequest,
    DropResponse,
    Delay,
    Reset,
    BlackHole,
}

impl FaultKind {
    /// Every kind, in the order of [`crate::proxy::Proxy::counts`].
    pub const ALL: [FaultKind; 6] = [
        FaultKind::DropBeforeRequest,
        FaultKind::DropMidRequest,
        FaultKind::DropResponse,
        FaultKind::Delay,
        FaultKind::Reset,
        FaultKind::BlackHole,
    ];

    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::DropBeforeRequest => "drop_before_request",
            FaultKind::DropMidRequest => "drop_mid_request",
            FaultKind::DropResponse => "drop_response",
            FaultKind::Delay => "delay",
            FaultKind::Reset => "reset",
            FaultKind::BlackHole => "black_hole",
        }
    }
}
