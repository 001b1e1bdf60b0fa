//! What the agent tells every session, on one watch channel: the lifecycle phase and a tick
//! that paces idle checks. One channel, so that a relayed connection, which may sit idle
//! for hours among thousands, waits on one future and owns no timer.

use std::time::Duration;

use tokio::sync::watch;

/// The agent's lifecycle.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Phase {
    #[default]
    Running,
    /// SIGTERM: handshakes end now; relayed connections go on until `Closed`.
    Draining,
    /// The shutdown grace is over: relayed connections end.
    Closed,
}

/// The channel's value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pulse {
    /// Written by the agent on SIGTERM/SIGINT. Handshakes end on anything but `Running`,
    /// relayed connections on `Closed`.
    pub phase: Phase,
    /// Bumped by the agent every `idle_timeout / IDLE_TICKS` of the running config (never
    /// while it is zero). Relayed connections read their byte counts on each.
    pub tick: u32,
}

/// Ticks per `idle_timeout`: a connection is closed between `IDLE_TICKS` and
/// `IDLE_TICKS + 1` ticks after its last byte.
pub const IDLE_TICKS: u32 = 8;

/// The tick period for `idle_timeout`; `None` when it is zero (off).
pub fn tick_period(idle_timeout: Duration) -> Option<Duration> {
    (!idle_timeout.is_zero()).then(|| (idle_timeout / IDLE_TICKS).max(Duration::from_millis(1)))
}

/// A receiver that never changes, for relays outside the agent (no idle timeout, no
/// shutdown): its sender is gone, so waiting on it never ends.
pub fn never() -> watch::Receiver<Pulse> {
    watch::channel(Pulse::default()).1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_turns_the_tick_off() {
        assert_eq!(tick_period(Duration::ZERO), None);
        assert_eq!(
            tick_period(Duration::from_secs(8)),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            tick_period(Duration::from_nanos(3)),
            Some(Duration::from_millis(1))
        );
    }
}
