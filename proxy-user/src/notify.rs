//! systemd readiness, sd_notify(3): what `sockgate run` tells a `Type=notify` service
//! manager. Without `NOTIFY_SOCKET` every call does nothing.
//!
//! A notification that cannot be sent is logged and otherwise ignored: the proxy keeps
//! relaying, and systemd's own timeouts report a service that never became ready.

use std::future::Future;

use sd_notify::NotifyState;

/// `READY=1`: every listener is bound and the datapath is loaded.
pub fn ready() {
    send(&[NotifyState::Ready]);
}

/// `RELOADING=1` with `MONOTONIC_USEC` (systemd 253+ requires the timestamp in the same
/// datagram) while `reload` runs, then `READY=1`, whatever `reload` decided: a refused
/// reload leaves the old config running, which is ready too.
pub async fn reloading<F: Future>(reload: F) -> F::Output {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(err) => {
            log::warn!("sd_notify: reading CLOCK_MONOTONIC: {err}");
            send(&[NotifyState::Reloading]);
        }
    }
    let out = reload.await;
    ready();
    out
}

/// `STOPPING=1`: SIGTERM or SIGINT, before listeners close.
pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

fn send(states: &[NotifyState]) {
    if let Err(err) = sd_notify::notify(states) {
        log::warn!("sd_notify {states:?}: {err}");
    }
}
