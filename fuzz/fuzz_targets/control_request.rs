//! One request line on the control socket, as the agent reads it: JSON to a
//! checked `Request`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stopguard::control::{MAX_REQUEST, Request};

fuzz_target!(|data: &[u8]| {
    // The server reads one line of at most MAX_REQUEST bytes, as UTF-8.
    let line = match data.iter().position(|&b| b == b'\n') {
        Some(end) => &data[..=end],
        None => data,
    };
    if line.len() as u64 > MAX_REQUEST {
        return;
    }
    let Ok(line) = std::str::from_utf8(line) else {
        return;
    };
    let Ok(request) = Request::from_line(line) else {
        return;
    };
    // What the client sends, the agent reads back as the same request.
    let text = serde_json::to_string(&request).expect("requests serialize");
    assert!(!text.contains('\n'), "a request is one line: {text}");
    let again = Request::from_line(&text).expect("a checked request round-trips");
    assert_eq!(request, again);
    assert_eq!(request.changes_state(), again.changes_state());
});
