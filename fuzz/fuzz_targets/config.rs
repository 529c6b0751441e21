//! The configuration file as `stopguard run` and `check-config` read it:
//! TOML text to checked, typed values.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stopguard::config::{Config, RingBytes};

fuzz_target!(|text: &str| {
    match Config::parse(text, "fuzz.toml") {
        Ok(config) => {
            // Reading is deterministic, and what it accepted is in range.
            let again = Config::parse(text, "fuzz.toml").expect("parses twice");
            assert_eq!(config, again);
            let ring = config.agent.ring_bytes.get();
            assert_eq!(RingBytes::new(ring), Some(config.agent.ring_bytes));
            // The globs are matched against every exec's path.
            for service in &config.services {
                for glob in &service.exe {
                    let _ = glob.matches(glob.as_str());
                    let _ = glob.matches("/usr/lib/postgresql/15/bin/postgres");
                }
            }
        }
        Err(err) => {
            // Errors name the file.
            let message = format!("{err:#}");
            assert!(message.starts_with("reading fuzz.toml"), "{message}");
        }
    }
});
