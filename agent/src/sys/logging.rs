//! The agent's own log lines, on stderr. On a terminal or a pipe: time,
//! level, target, message. When stderr is systemd's journal stream
//! (systemd.exec(5), `$JOURNAL_STREAM`): no time (the journal stamps each
//! line) and no colours, and a `<N>` syslog priority prefix that the journal
//! turns into the entry's priority, so `journalctl -p warning` finds warnings.

use std::{
    fmt,
    os::{fd::AsFd, unix::fs::MetadataExt},
};

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::{
    EnvFilter,
    fmt::{FmtContext, FormatEvent, FormatFields, format::Writer},
    registry::LookupSpan,
};

/// Sets up the log for the whole process (`RUST_LOG`, default info).
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if stderr_is_journal() {
        let format = tracing_subscriber::fmt::format()
            .without_time()
            .with_level(false);
        builder
            .with_ansi(false)
            .event_format(Prioritised(format))
            .init();
    } else {
        use std::io::IsTerminal;
        builder.with_ansi(std::io::stderr().is_terminal()).init();
    }
}

/// The line that ends the process on an error, with the priority prefix
/// when the journal reads it.
pub fn fatal(err: &anyhow::Error) -> String {
    let line = format!("stopguard: {err:#}");
    if stderr_is_journal() {
        format!("<3>{line}")
    } else {
        line
    }
}

/// Whether stderr is the journal stream systemd connected, not merely a
/// descendant's inherited `$JOURNAL_STREAM` over a redirected stderr.
pub fn stderr_is_journal() -> bool {
    let Ok(stream) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(stderr) = std::io::stderr().as_fd().try_clone_to_owned() else {
        return false;
    };
    std::fs::File::from(stderr)
        .metadata()
        .is_ok_and(|m| names_stream(&stream, m.dev(), m.ino()))
}

/// Whether a `$JOURNAL_STREAM` value ("DEVICE:INODE", in decimal) names the
/// file with this device and inode.
fn names_stream(value: &str, dev: u64, ino: u64) -> bool {
    value
        .split_once(':')
        .is_some_and(|(d, i)| d.parse() == Ok(dev) && i.parse() == Ok(ino))
}

/// The syslog priority of a level: err, warning, info, debug.
fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// A line format with the event's syslog priority in front.
struct Prioritised<F>(F);

impl<S, N, F> FormatEvent<S, N> for Prioritised<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write!(writer, "<{}>", priority(event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[test]
    fn journal_stream_must_name_stderr_itself() {
        assert!(names_stream("8:1234", 8, 1234));
        assert!(!names_stream("8:1234", 8, 1235), "another inode");
        assert!(!names_stream("9:1234", 8, 1234), "another device");
        assert!(!names_stream("", 8, 1234));
        assert!(!names_stream("8", 8, 1234));
        assert!(!names_stream("x:y", 8, 1234));

        // A real file's device and inode, as systemd would write them.
        let file = std::fs::File::open("/proc/self/exe").unwrap();
        let meta = file.metadata().unwrap();
        assert!(names_stream(
            &format!("{}:{}", meta.dev(), meta.ino()),
            meta.dev(),
            meta.ino()
        ));
    }

    /// Collects what the subscriber writes.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn journal_lines_carry_their_priority_and_no_time() {
        let lines = Lines::default();
        let out = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(EnvFilter::new("trace"))
            .with_ansi(false)
            .with_writer(move || out.clone())
            .event_format(Prioritised(
                tracing_subscriber::fmt::format()
                    .without_time()
                    .with_level(false)
                    .with_target(false),
            ))
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::error!("refused");
            tracing::warn!(pid = 4121, "held");
            tracing::info!("running");
            tracing::debug!("detail");
            tracing::trace!("more detail");
        });
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        assert_eq!(
            text,
            "<3>refused\n<4>held pid=4121\n<6>running\n<7>detail\n<7>more detail\n"
        );
    }
}
