//! The agent's heap: what starting needed, given back once running.

/// Loading the probes parses the kernel's BTF (aya reads all of it) and
/// the /proc scan reads every process: megabytes in small blocks, freed by
/// the time the agent runs, that the allocator would otherwise keep in the
/// heap for the agent's lifetime.
pub fn release_startup() {
    // SAFETY: malloc_trim only hands free heap pages back to the kernel.
    unsafe { libc::malloc_trim(0) };
}
