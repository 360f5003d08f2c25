//! Allocator settings for training-sized tensors (glibc on Linux only; elsewhere nothing).
//!
//! Every step allocates and frees the same large activation buffers. By default glibc serves
//! blocks above a threshold (≤ 32 MiB) with fresh `mmap`s and gives freed memory at the top of
//! the heap back to the OS, so each step page-faults and zeroes gigabytes again (`perf`: ~6 % of
//! a SmolLM2 step in `clear_page`/`exc_page_fault`). Keeping freed memory in the process took
//! the step from 10.55 to 9.9 CPU-seconds, with the same peak RSS.

/// Serves all allocations from the heap and never trims it, so freed buffers are reused.
/// `BURN_LORA_KEEP_FREED_MEMORY=0` leaves glibc's defaults (for measuring what this costs).
pub fn keep_freed_memory() {
    if std::env::var_os("BURN_LORA_KEEP_FREED_MEMORY").is_some_and(|v| v == "0") {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // <malloc.h>: M_TRIM_THRESHOLD = -1, M_MMAP_MAX = -4.
        unsafe extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        // SAFETY: mallopt only changes allocator tunables; it is called once, before any
        // other thread exists. A trim threshold of -1 becomes SIZE_MAX (never trim).
        unsafe {
            mallopt(-4, 0);
            mallopt(-1, -1);
        }
    }
}
