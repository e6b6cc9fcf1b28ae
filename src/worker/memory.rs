//! Handing a worker's freed heap memory back to the system.

use std::time::Duration;

/// How often a worker hands freed heap memory back to the system.
const TRIM_EVERY: Duration = Duration::from_secs(2);

/// Returns the heap's free pages to the system. jemalloc purges unused pages
/// as the program allocates; an idle worker allocates nothing, so after a
/// burst (thousands of connections whose buffers were freed when they went
/// idle) the burst's peak would stay resident.
#[allow(unsafe_code)]
fn purge() -> Result<(), i32> {
    // 4096 is MALLCTL_ARENAS_ALL: every arena.
    const PURGE_ALL: &[u8] = b"arena.4096.purge\0";
    // SAFETY: the name is NUL-terminated, and purging takes and returns no
    // value (all pointers null); it touches no memory the program holds.
    let code = unsafe {
        tikv_jemalloc_sys::mallctl(
            PURGE_ALL.as_ptr().cast(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        )
    };
    if code == 0 { Ok(()) } else { Err(code) }
}

/// Ticks every [`TRIM_EVERY`], skipping ticks missed while busy.
pub fn trim_interval() -> tokio::time::Interval {
    let mut trim = tokio::time::interval(TRIM_EVERY);
    trim.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    trim
}

/// Returns free pages now; a failure only costs memory, so it is logged.
pub fn return_free() {
    if let Err(code) = purge() {
        tracing::debug!(code, "returning free memory failed");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn free_memory_goes_back_to_the_system() {
        // jemalloc refuses a purge given any value pointer (EPERM); this
        // checks the call is one it accepts.
        assert_eq!(super::purge(), Ok(()));
    }
}
