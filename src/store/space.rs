//! A full filesystem: telling "no space" from other write errors, collecting what the
//! failed writes needed, and how much an emergency eviction frees for them.
//!
//! The budget and its watermarks assume the filesystem has room for the whole budget;
//! when it does not (a smaller disk, other tenants, quotas), writes fail with ENOSPC or
//! EDQUOT long before the high mark. Then `disk` evicts right away rather than waiting for
//! a watermark that will never be reached. No I/O here.

use std::io;
use std::sync::Mutex;

/// Whether a write failed for want of space (ENOSPC) or quota (EDQUOT), the errors that
/// removing cached objects can cure.
pub fn is_out_of_space(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}

/// Emergency eviction requests not yet served, merged: failures that arrive while one
/// eviction runs or waits for its turn add up to one eviction, not one each.
#[derive(Default)]
pub struct Requests {
    /// Bytes the failed writes were for; `None` when nothing is asked.
    wanted: Mutex<Option<u64>>,
}

impl Requests {
    /// Asks for room for a write of `bytes` (0 when its size is unknown).
    pub fn add(&self, bytes: u64) {
        let mut wanted = self.wanted.lock().expect("space lock");
        *wanted = Some(wanted.unwrap_or(0).saturating_add(bytes));
    }

    pub fn pending(&self) -> bool {
        self.wanted.lock().expect("space lock").is_some()
    }

    /// The bytes asked for since the last call, if anything was asked.
    pub fn take(&self) -> Option<u64> {
        self.wanted.lock().expect("space lock").take()
    }
}

/// Bytes an emergency eviction should free: room for what failed plus a sixteenth of the
/// store (for the fills running beside it, so the next one does not fail at once), less
/// what the filesystem has free by now (a fill's temp file or a sweep may have freed some).
pub fn to_free(failed: u64, stored: u64, free: u64) -> u64 {
    failed.saturating_add(stored / 16).saturating_sub(free)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_os = "linux")]
    fn only_space_and_quota_errors_call_for_eviction() {
        assert!(is_out_of_space(&io::Error::from_raw_os_error(28))); // ENOSPC
        assert!(is_out_of_space(&io::Error::from_raw_os_error(122))); // EDQUOT
        assert!(!is_out_of_space(&io::Error::from_raw_os_error(5))); // EIO
        assert!(!is_out_of_space(&io::Error::from_raw_os_error(30))); // EROFS
    }

    #[test]
    fn requests_merge_until_taken() {
        let requests = Requests::default();
        assert_eq!(requests.take(), None);
        requests.add(0);
        assert!(requests.pending());
        requests.add(10);
        requests.add(5);
        assert_eq!(requests.take(), Some(15));
        assert!(!requests.pending());
        assert_eq!(requests.take(), None);
    }

    #[test]
    fn frees_what_failed_and_some_slack_less_what_is_free() {
        assert_eq!(to_free(100, 1600, 0), 200);
        assert_eq!(to_free(100, 1600, 50), 150);
        assert_eq!(to_free(100, 1600, 500), 0, "room came back meanwhile");
        assert_eq!(to_free(0, 0, 0), 0);
        assert_eq!(to_free(u64::MAX, 16, 0), u64::MAX);
    }
}
