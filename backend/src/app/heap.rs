//! How the process's heap treats the engine's activations.
//!
//! glibc serves each block above its mmap threshold (which adapts, but never past 32 MiB)
//! with fresh pages and unmaps it when freed; a thread other than the first allocates from
//! heaps of at most 64 MiB and maps anything larger afresh too. A CPU batch's activations
//! are tens of MB each (64 channels of 32 x 32 for 250 images: 65.5 MB), so every layer of
//! every batch paid page faults and the kernel's zeroing for its outputs. Kept in one heap,
//! freed blocks serve the next layer's.

/// Freed blocks of up to this size stay in the heap to be reused.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const KEPT_BLOCK_BYTES: libc::c_int = 1 << 30;

/// Keeps freed blocks for reuse, in one heap for every thread (the server's worker is not
/// the first). Call it first thing, before other threads start.
pub(crate) fn keep_freed_blocks() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes the allocator's parameters; glibc applies them under its
    // own lock.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_THRESHOLD, KEPT_BLOCK_BYTES);
        libc::mallopt(libc::M_TRIM_THRESHOLD, KEPT_BLOCK_BYTES);
    }
}

/// Gives the heap's free memory back to the system: after a job, so that an idle server
/// holds what it keeps, not what its last job used.
pub(crate) fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages; glibc takes its own lock.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    /// Minor page faults of the calling thread so far.
    fn page_faults() -> i64 {
        let mut usage = std::mem::MaybeUninit::<libc::rusage>::uninit();
        // SAFETY: getrusage writes a whole rusage into the pointer it is given.
        let usage = unsafe {
            assert_eq!(libc::getrusage(libc::RUSAGE_THREAD, usage.as_mut_ptr()), 0);
            usage.assume_init()
        };
        usage.ru_minflt
    }

    /// A block of 48 MiB (past glibc's own threshold, within a thread's heap), filled and
    /// freed twice by a new thread: the second time its pages are still there.
    #[test]
    fn a_freed_large_block_is_reused_without_faulting_its_pages_in_again() {
        const BYTES: usize = 48 << 20;
        keep_freed_blocks();
        std::thread::spawn(|| {
            let fill = |value: u8| std::hint::black_box(vec![value; BYTES]).len();
            fill(1);
            let before = page_faults();
            fill(2);
            let faults = page_faults() - before;
            let pages = (BYTES / 4096) as i64;
            assert!(faults < pages / 10, "{faults} page faults refilling a freed block of {pages} pages");
        })
        .join()
        .unwrap();
        release_free_memory();
    }
}
