//! One raw record from the kernel's ring buffer, decoded as the agent's ring
//! reader does, then applied to the process table and printed as `trace`
//! prints it.
#![no_main]

use std::sync::LazyLock;

use agent_common::{ExecRecord, ExitRecord, ForkRecord, Header, SignalRecord, kind};
use libfuzzer_sys::fuzz_target;
use stopguard::{
    sys::clock::Clock,
    events::{DecodeError, Event},
    process::ProcessTable,
    trace,
};

static CLOCK: LazyLock<Clock> = LazyLock::new(Clock::now);

fuzz_target!(|bytes: &[u8]| {
    // SAFETY: the length is checked; Header is plain repr(C) data.
    let header = (bytes.len() >= size_of::<Header>())
        .then(|| unsafe { bytes.as_ptr().cast::<Header>().read_unaligned() });
    let want = header.map(|h| match h.kind {
        kind::EXEC => Some(size_of::<ExecRecord>()),
        kind::EXIT => Some(size_of::<ExitRecord>()),
        kind::FORK => Some(size_of::<ForkRecord>()),
        kind::SIGNAL => Some(size_of::<SignalRecord>()),
        _ => None,
    });
    match Event::decode(bytes) {
        Ok(event) => {
            // Only a known kind of full length decodes.
            let header = header.expect("a decoded record has a header");
            let want = want.flatten().expect("a decoded record has a known kind");
            assert!(bytes.len() >= want);
            assert_eq!(event.kind().map(|k| k.wire()), Some(header.kind));
            assert_eq!(event.time_ns(), Some(header.time_ns));
            let mut table = ProcessTable::default();
            table.apply(&event);
            let json = trace::json_line(&event, &table, &CLOCK);
            let value: serde_json::Value =
                serde_json::from_str(&json).expect("trace --json is JSON");
            assert!(value["kind"].is_string(), "{json}");
            let _ = trace::human_line(&event, &table, &CLOCK);
        }
        Err(DecodeError::Short {
            len, want: need, ..
        }) => {
            assert_eq!(len, bytes.len());
            assert!(len < need);
        }
        Err(DecodeError::UnknownKind(k)) => {
            assert_eq!(want, Some(None));
            assert_eq!(Some(k), header.map(|h| h.kind));
        }
    }
});
