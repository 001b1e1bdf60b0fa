//! What the agent tells every session, on one watch channel: the lifecycle phase and a tick
//! that paces idle checks. One channel, so that a relayed connection, which may sit idle
//! for hours among thousands, waits on one future ([`idle_or_closed`]) and owns no timer.

use std::{future::Future, time::Duration};

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

/// Why [`idle_or_closed`] resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// No byte moved either way for [`IDLE_TICKS`] ticks.
    Idle,
    /// The agent said [`Phase::Closed`].
    Closed,
}

/// Waits until a relayed connection is idle or the agent closes it: resolves with
/// [`Stop::Closed`] once `pulse` says `Closed`, or with [`Stop::Idle`] once `activity` (bytes
/// moved either way, by userspace or the verdict) has not changed for [`IDLE_TICKS`] ticks.
/// It reads `activity` only on ticks, so a short connection pays no map lookups here.
/// Without an agent (the sender is gone) it never resolves.
pub(crate) fn idle_or_closed<'a>(
    pulse: &'a mut watch::Receiver<Pulse>,
    activity: impl Fn() -> u64 + 'a,
) -> impl Future<Output = Stop> + 'a {
    async move {
        let (mut last, mut quiet) = (u64::MAX, 0);
        let first = *pulse.borrow_and_update();
        let (mut tick, mut epoch) = (first.tick, first.epoch);
        loop {
            let now = *pulse.borrow_and_update();
            if now.phase == Phase::Closed {
                return Stop::Closed;
            }
            if now.epoch != epoch {
                // A reload changed the period: count afresh, in ticks of the new one.
                (epoch, tick, quiet) = (now.epoch, now.tick, 0);
            } else if now.tick != tick {
                // Ticks missed while this task was busy count too.
                let ticks = now.tick.wrapping_sub(tick);
                tick = now.tick;
                let moved = activity();
                if moved != last {
                    (last, quiet) = (moved, 0);
                } else {
                    quiet += ticks;
                    if quiet >= IDLE_TICKS {
                        return Stop::Idle;
                    }
                }
            }
            if pulse.changed().await.is_err() {
                // The agent is gone (or this is a plain relay): nothing ends the connection.
                return std::future::pending().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{cell::Cell, future::poll_fn, pin::Pin, sync::Mutex, task::Poll};

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

    /// Polls `fut` once, without blocking.
    async fn poll_once<F: Future + Unpin>(fut: &mut F) -> Option<F::Output> {
        poll_fn(|cx| {
            Poll::Ready(match Pin::new(&mut *fut).poll(cx) {
                Poll::Ready(v) => Some(v),
                Poll::Pending => None,
            })
        })
        .await
    }

    fn bump(tx: &watch::Sender<Pulse>, ticks: u32) {
        tx.send_modify(|p| p.tick = p.tick.wrapping_add(ticks));
    }

    #[tokio::test]
    async fn quiet_ticks_time_out_and_bytes_restart_the_count() {
        let (tx, mut rx) = watch::channel(Pulse::default());
        let moved = Cell::new(0u64);
        let mut idle = Box::pin(idle_or_closed(&mut rx, || moved.get()));
        assert_eq!(poll_once(&mut idle).await, None);
        // The first tick only takes the count.
        bump(&tx, 1);
        assert_eq!(poll_once(&mut idle).await, None);
        for _ in 1..IDLE_TICKS {
            bump(&tx, 1);
            assert_eq!(poll_once(&mut idle).await, None);
        }
        moved.set(1);
        bump(&tx, 1);
        assert_eq!(poll_once(&mut idle).await, None);
        // Missed ticks count: the task saw one change for seven ticks.
        bump(&tx, IDLE_TICKS - 1);
        assert_eq!(poll_once(&mut idle).await, None);
        bump(&tx, 1);
        assert_eq!(poll_once(&mut idle).await, Some(Stop::Idle));
    }

    #[tokio::test]
    async fn closed_ends_and_a_draining_agent_does_not() {
        let (tx, mut rx) = watch::channel(Pulse::default());
        let mut idle = Box::pin(idle_or_closed(&mut rx, || 0));
        tx.send_modify(|p| p.phase = Phase::Draining);
        assert_eq!(poll_once(&mut idle).await, None);
        tx.send_modify(|p| p.phase = Phase::Closed);
        assert_eq!(poll_once(&mut idle).await, Some(Stop::Closed));
    }

    #[tokio::test]
    async fn a_new_epoch_restarts_the_count() {
        let (tx, mut rx) = watch::channel(Pulse::default());
        let mut idle = Box::pin(idle_or_closed(&mut rx, || 0));
        assert_eq!(poll_once(&mut idle).await, None);
        // The first tick takes the count, the next ones are quiet.
        bump(&tx, 1);
        assert_eq!(poll_once(&mut idle).await, None);
        bump(&tx, IDLE_TICKS - 1);
        assert_eq!(poll_once(&mut idle).await, None);
        tx.send_modify(|p| p.epoch += 1);
        assert_eq!(poll_once(&mut idle).await, None);
        bump(&tx, IDLE_TICKS - 1);
        assert_eq!(poll_once(&mut idle).await, None);
        bump(&tx, 1);
        assert_eq!(poll_once(&mut idle).await, Some(Stop::Idle));
    }

    #[tokio::test(start_paused = true)]
    async fn without_an_agent_nothing_ends_it() {
        let mut rx = never();
        let idle = idle_or_closed(&mut rx, || 0);
        let waited = tokio::time::timeout(Duration::from_secs(3600), idle).await;
        assert!(waited.is_err(), "ended with {waited:?}");
    }
}
