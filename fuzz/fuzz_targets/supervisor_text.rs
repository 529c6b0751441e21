//! What supervisors say, as stopguard reads it: Patroni's YAML config,
//! `monit status`, `supervisorctl status`, supervise-style status lines
//! and command-line options. A user can write any of them.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let found = stopguard::supervisors::read_supervisor_text(text);
    // Deterministic, and never more values than the text has bytes and
    // lines to hold them.
    assert_eq!(found, stopguard::supervisors::read_supervisor_text(text));
    assert!(found <= text.len() + 8, "{found} values from {} bytes", text.len());
});
