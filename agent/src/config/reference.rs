//! The configuration reference (docs/src/reference/configuration.md) held
//! to the real types: every key and every value they accept is named
//! there, and every TOML example there loads.

use super::Config;

const REFERENCE: &str = include_str!("../../../docs/src/reference/configuration.md");

/// What serde says a table or a value accepts, from the error a probe
/// with an unknown key or value gets: "expected one of `a`, `b`".
fn accepted(probe: &str) -> Vec<String> {
    expected(&format!("{:#}", Config::parse(probe, "probe").unwrap_err()))
}

/// The names serde's error for an unknown field or variant says it
/// expected ("expected one of `a`, `b`", or "expected `a`").
pub(crate) fn expected(err: &str) -> Vec<String> {
    let list = err
        .split("expected one of ")
        .nth(1)
        .or_else(|| err.split("expected ").nth(1))
        .unwrap_or_else(|| panic!("no list of what is expected in: {err}"));
    let names: Vec<String> = list
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect();
    assert!(!names.is_empty(), "nothing named in: {err}");
    names
}

#[test]
fn the_reference_names_every_key_and_value() {
    let probes = [
        ("top level", "zz_unknown = 1\n"),
        ("[agent]", "[agent]\nzz_unknown = 1\n"),
        ("[[service]]", "[[service]]\nzz_unknown = 1\n"),
        ("[[sink]]", "[[sink]]\nzz_unknown = 1\n"),
        ("[fleet]", "[fleet]\nzz_unknown = 1\n"),
        ("freezer", "[agent]\nfreezer = \"zz\"\n"),
        (
            "on_respawn",
            "[[service]]\nname = \"a\"\non_respawn = \"zz\"\n",
        ),
        (
            "on_unexpected_respawn",
            "[[service]]\nname = \"a\"\non_unexpected_respawn = \"zz\"\n",
        ),
        ("kind", "[[sink]]\nkind = \"zz\"\nurl = \"http://x\"\n"),
        (
            "min_severity",
            "[[sink]]\nkind = \"webhook\"\nurl = \"http://x\"\nmin_severity = \"zz\"\n",
        ),
    ];
    let mut missing = Vec::new();
    for (place, probe) in probes {
        for name in accepted(probe) {
            let written = [
                format!("`{name}`"),
                format!("\"{name}\""),
                format!("{name} ="),
                format!("[{name}]"),
            ];
            if !written.iter().any(|w| REFERENCE.contains(w.as_str())) {
                missing.push(format!("{place}: `{name}`"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "docs/src/reference/configuration.md does not name:\n{}",
        missing.join("\n")
    );
}

#[test]
fn every_toml_example_in_the_reference_loads() {
    let mut blocks = Vec::new();
    let mut block: Option<String> = None;
    for line in REFERENCE.lines() {
        match (&mut block, line.trim_start().strip_prefix("```")) {
            (None, Some("toml")) => block = Some(String::new()),
            (Some(_), Some(_)) => blocks.extend(block.take()),
            (Some(text), None) => {
                text.push_str(line);
                text.push('\n');
            }
            (None, _) => {}
        }
    }
    assert!(!blocks.is_empty(), "no TOML example in the reference");
    for text in blocks {
        if let Err(err) = Config::parse(&text, "the reference") {
            panic!("{err:#}\nin:\n{text}");
        }
    }
}
