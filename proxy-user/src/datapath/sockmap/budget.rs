//! The one budget all catch-ups share, so many connections catching up at once cannot take
//! gigabytes.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Bytes all catch-ups together may buffer; past it they give up (to 64 KiB reads).
pub(super) const CATCH_UP_BUDGET: u64 = 256 << 20;

/// Bytes of [`CATCH_UP_BUDGET`] held now.
static CATCH_UP_HELD: AtomicU64 = AtomicU64::new(0);

/// The bytes of [`CATCH_UP_BUDGET`] one catch-up's buffer holds, returned when dropped.
#[derive(Default)]
pub(super) struct BufferShare(u64);

impl BufferShare {
    /// Grows the share to `bytes`; false (and unchanged) if the budget has no room.
    pub(super) fn grow(&mut self, bytes: u64) -> bool {
        let more = bytes.saturating_sub(self.0);
        if CATCH_UP_HELD.fetch_add(more, Relaxed) + more > CATCH_UP_BUDGET {
            CATCH_UP_HELD.fetch_sub(more, Relaxed);
            return false;
        }
        self.0 += more;
        true
    }
}

impl Drop for BufferShare {
    fn drop(&mut self) {
        CATCH_UP_HELD.fetch_sub(self.0, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catch_ups_share_one_budget() {
        let mut first = BufferShare(0);
        assert!(first.grow(CATCH_UP_BUDGET - 10));
        let mut second = BufferShare(0);
        assert!(!second.grow(11), "over the budget");
        assert!(second.grow(10));
        assert!(
            !first.grow(CATCH_UP_BUDGET - 9),
            "a share grows only while the budget lasts"
        );
        drop(first);
        assert!(second.grow(CATCH_UP_BUDGET));
        drop(second);
        assert_eq!(CATCH_UP_HELD.load(Relaxed), 0);
    }
}
