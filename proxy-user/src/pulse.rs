//! What the agent tells every session, on one watch channel: the lifecycle phase and a tick
//! that paces idle checks. One channel, so that a relayed connection, which may sit idle
//! for hours among thousands, waits on one future and owns no timer.

use std::time::Duration;

use tokio::{
    sync::{Notify, watch},
    time::Instant,
};

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
    /// Bumped by [`tick`] every `idle_timeout / IDLE_TICKS` of the running config (never
    /// while it is zero). Relayed connections read their byte counts on each.
    pub tick: u32,
    /// Bumped by [`tick`] when a reload changes the tick period. Relayed connections then
    /// count quiet ticks afresh, so a longer timeout is not cut short by ticks counted at
    /// the old period.
    pub epoch: u32,
}

/// Ticks per `idle_timeout`: a connection is closed between `IDLE_TICKS` and
/// `IDLE_TICKS + 1` ticks after its last byte (or after the reload that changed the period).
pub const IDLE_TICKS: u32 = 8;

/// The tick period for `idle_timeout`; `None` when it is zero (off).
pub fn tick_period(idle_timeout: Duration) -> Option<Duration> {
    (!idle_timeout.is_zero()).then(|| (idle_timeout / IDLE_TICKS).max(Duration::from_millis(1)))
}

/// Bumps `pulse`'s tick every period of `idle_timeout()`, read again after every tick and
/// every `reloaded` notification, so one timer paces the idle checks of every relayed
/// connection and a reload's `idle_timeout` applies to open connections too. A reload
/// never delays a tick past the new period.
pub async fn tick(
    pulse: &watch::Sender<Pulse>,
    reloaded: &Notify,
    idle_timeout: impl Fn() -> Duration,
) {
    let mut last = Instant::now();
    let mut current = tick_period(idle_timeout());
    loop {
        let period = tick_period(idle_timeout());
        if period != current {
            current = period;
            pulse.send_modify(|p| p.epoch = p.epoch.wrapping_add(1));
        }
        match period {
            Some(period) => tokio::select! {
                _ = tokio::time::sleep_until(last + period) => {
                    last = Instant::now();
                    pulse.send_modify(|p| p.tick = p.tick.wrapping_add(1));
                }
                _ = reloaded.notified() => {}
            },
            None => {
                reloaded.notified().await;
                last = Instant::now();
            }
        }
    }
}

/// A receiver that never changes, for relays outside the agent (no idle timeout, no
/// shutdown): its sender is gone, so waiting on it never ends.
pub fn never() -> watch::Receiver<Pulse> {
    watch::channel(Pulse::default()).1
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Lets the ticker run until it waits again.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn ticks_follow_the_running_timeout_and_a_change_starts_an_epoch() {
        let (tx, rx) = watch::channel(Pulse::default());
        let reloaded = Notify::new();
        let timeout = Mutex::new(Duration::from_secs(8));
        let ticker = tick(&tx, &reloaded, || *timeout.lock().unwrap());
        let seen = || *rx.borrow();
        let test = async {
            settle().await;
            tokio::time::advance(Duration::from_millis(999)).await;
            settle().await;
            assert_eq!(seen().tick, 0);
            tokio::time::advance(Duration::from_millis(1)).await;
            settle().await;
            assert_eq!((seen().tick, seen().epoch), (1, 0));
            // Longer: a new epoch at once, the next tick a new period after the last one.
            *timeout.lock().unwrap() = Duration::from_secs(80);
            reloaded.notify_one();
            settle().await;
            assert_eq!((seen().tick, seen().epoch), (1, 1));
            tokio::time::advance(Duration::from_millis(9_999)).await;
            settle().await;
            assert_eq!(seen().tick, 1);
            tokio::time::advance(Duration::from_millis(1)).await;
            settle().await;
            assert_eq!(seen().tick, 2);
            // Off: no ticks; a reload with the same value is not a new epoch.
            *timeout.lock().unwrap() = Duration::ZERO;
            reloaded.notify_one();
            settle().await;
            reloaded.notify_one();
            tokio::time::advance(Duration::from_secs(3600)).await;
            settle().await;
            assert_eq!((seen().tick, seen().epoch), (2, 2));
        };
        tokio::select! {
            () = ticker => unreachable!("the ticker never ends"),
            () = test => {}
        }
    }

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
