//! The kernel records' clock (ns since boot) and its conversion to wall time.

use std::time::{Duration, SystemTime};

/// Converts the kernel's boot-time stamps to wall-clock time.
#[derive(Clone, Copy)]
pub struct Clock {
    boot: SystemTime,
}

/// Now, in the kernel records' clock: ns since boot (CLOCK_BOOTTIME).
pub fn boot_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec to write into.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl Clock {
    pub fn now() -> Clock {
        Clock {
            boot: SystemTime::now() - Duration::from_nanos(boot_ns()),
        }
    }

    pub fn wall(&self, boot_ns: u64) -> SystemTime {
        self.boot + Duration::from_nanos(boot_ns)
    }
}
