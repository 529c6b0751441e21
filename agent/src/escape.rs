//! Text a process or a person wrote (argv, comms, paths, reasons), escaped
//! for where it goes: a terminal, Slack's mrkdwn, a Teams card's markdown.
//! The JSON of alerts and the audit log needs nothing more than JSON's own
//! escapes.

use std::borrow::Cow;

/// `text` safe to print on a terminal: control characters (C0, DEL, C1)
/// and the Unicode controls that reorder text shown as escapes (`\e`,
/// `\n`, `\x07`, `\u{202e}`), as `ls` and `ps` refuse to print them raw.
pub fn terminal(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut shown = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => shown.push_str("\\n"),
            '\r' => shown.push_str("\\r"),
            '\t' => shown.push_str("\\t"),
            '\x1b' => shown.push_str("\\e"),
            c if (c as u32) < 0x80 && needs_escape(c) => {
                shown.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if needs_escape(c) => shown.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => shown.push(c),
        }
    }
    Cow::Owned(shown)
}

/// `text` (lines of our own making) safe on a terminal: control characters
/// escaped as [`terminal`] does, line breaks kept.
pub fn terminal_lines(text: &str) -> String {
    text.split('\n')
        .map(terminal)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Whether `c` acts on a terminal instead of showing: a control character
/// (C0, DEL, C1) or a Unicode control that reorders text.
pub fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `text` for Slack's mrkdwn and plain text: `&`, `<` and `>` as entities,
/// as Slack requires, so that `<!channel>` or `<https://x|click>` in a
/// command line is shown, not obeyed.
pub fn slack(text: &str) -> Cow<'_, str> {
    if !text.contains(['&', '<', '>']) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(
        text.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;"),
    )
}

/// `text` for markdown that renders it (a Teams card's TextBlock and
/// FactSet): its punctuation that makes links, emphasis, code and
/// headings backslash-escaped, so `[x](https://evil)` shows as written.
pub fn markdown(text: &str) -> Cow<'_, str> {
    const SPECIAL: &[char] = &[
        '\\', '`', '*', '_', '[', ']', '(', ')', '<', '>', '#', '~', '|', '!',
    ];
    if !text.contains(SPECIAL) {
        return Cow::Borrowed(text);
    }
    let mut escaped = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if SPECIAL.contains(&c) {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    Cow::Owned(escaped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_controls_are_shown_not_obeyed() {
        assert_eq!(terminal("postgres -D /srv/pg"), "postgres -D /srv/pg");
        assert_eq!(
            terminal("a\x1b]0;owned\x07b\nc\x7f\u{9b}"),
            "a\\e]0;owned\\x07b\\nc\\x7f\\u{9b}"
        );
        assert_eq!(terminal("x\u{202e}gnp.exe"), "x\\u{202e}gnp.exe");
        assert_eq!(terminal("ünïcode"), "ünïcode");
        assert_eq!(terminal_lines("one\x1b[2J\ntwo"), "one\\e[2J\ntwo");
    }

    #[test]
    fn slack_markup_is_escaped() {
        assert_eq!(
            slack("<!channel> @here <https://evil|click> a&b"),
            "&lt;!channel&gt; @here &lt;https://evil|click&gt; a&amp;b"
        );
        assert_eq!(slack("sh <- monit"), "sh &lt;- monit");
    }

    #[test]
    fn markdown_links_and_emphasis_are_escaped() {
        assert_eq!(
            markdown("[x](https://evil) **b**"),
            "\\[x\\]\\(https://evil\\) \\*\\*b\\*\\*"
        );
        assert_eq!(markdown("pg_ctl -D /srv"), "pg\\_ctl -D /srv");
        assert_eq!(markdown("plain words"), "plain words");
    }
}
