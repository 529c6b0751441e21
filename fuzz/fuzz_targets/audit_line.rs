//! The audit log as `stopguard audit` reads it: lines to a timeline (filtered
//! by age and service), sent to the client as JSON, each entry described.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use stopguard::audit::{self, Timeline};

fuzz_target!(|log: &[u8]| {
    // A log in memory always reads: a line that is not an entry (torn by a
    // crash, or damaged) is counted, not fatal.
    let all = audit::read_from(log, None, None).expect("an in-memory log reads");
    let lines = log
        .split(|&b| b == b'\n')
        .filter(|l| !String::from_utf8_lossy(l).trim().is_empty())
        .count();
    assert_eq!(all.entries.len() + all.left_out + all.unreadable, lines);
    let recent = audit::read_from(log, Some(Duration::from_secs(3600)), Some("pg"))
        .expect("an in-memory log reads");
    assert!(recent.entries.len() <= all.entries.len());
    for timeline in [all, recent] {
        // The agent answers with the timeline; the client reads it back.
        let text = serde_json::to_string(&timeline).expect("timelines serialize");
        let back: Timeline = serde_json::from_str(&text).expect("the client reads the answer");
        assert_eq!(back.entries.len(), timeline.entries.len());
        for (a, b) in back.entries.iter().zip(&timeline.entries) {
            assert_eq!(a.get(), b.get());
            let _ = audit::describe(a);
        }
    }
});
