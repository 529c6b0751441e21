//! The kernel records' clock (ns since boot) and its conversion to wall time.

use std::time::{Duration, SystemTime};

/// Converts the kernel's boot-time stamps to wall-clock time.
#[derive(Clone, Copy)]
pub struct Clock {
    boot: SystemTime,
}

pub use agent_common::boot_ns;

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
