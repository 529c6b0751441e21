//! PostgreSQL's own control tools: they stop and start the server, and
//! nothing of PostgreSQL's restarts it behind the operator's back.
//! Debian's `pg_ctlcluster VERSION NAME stop|start|restart` hands the
//! request to systemd (`systemctl stop postgresql@VERSION-NAME`) when
//! systemd runs, unless told `--skip-systemctl-redirect` (as the unit's own
//! ExecStart= and ExecStop= do).

use super::{Control, Supervisor, systemd::unit_name, verb};

pub const POSTGRESQL: Supervisor = Supervisor {
    name: "postgresql",
    comms: &[],
    control: &[
        Control {
            comm: "pg_ctl",
            intent: verb,
            units: None,
        },
        Control {
            comm: "pg_ctlcluster",
            intent: verb,
            units: Some(pg_ctlcluster_units),
        },
    ],
    watching: None,
};

/// pg_ctlcluster's options that take the next argument as their value.
const PG_CTLCLUSTER_VALUE_OPTIONS: [&str; 4] = ["-m", "--mode", "-o", "--options"];

/// The unit `pg_ctlcluster VERSION NAME ACTION` (or `VERSION-NAME ACTION`)
/// asks systemd to stop, start or restart: `postgresql@VERSION-NAME.service`.
/// Empty when it runs pg_ctl itself (`--skip-systemctl-redirect`) or asks
/// nothing of the server's running state.
fn pg_ctlcluster_units(args: &[String]) -> Vec<String> {
    let mut positional = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--skip-systemctl-redirect" => return Vec::new(),
            option if PG_CTLCLUSTER_VALUE_OPTIONS.contains(&option) => {
                args.next();
            }
            option if option.starts_with('-') => {}
            word => positional.push(word),
        }
    }
    let (cluster, action) = match positional[..] {
        [version, name, action, ..] if version.bytes().all(|b| b.is_ascii_digit() || b == b'.') => {
            (format!("{version}-{name}"), action)
        }
        [cluster, action, ..] if cluster.contains('-') => (cluster.to_string(), action),
        _ => return Vec::new(),
    };
    match action {
        "start" | "stop" | "restart" => vec![unit_name(&format!("postgresql@{cluster}"))],
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervisors::{Intent, args};

    #[test]
    fn pg_ctl_verbs_among_options() {
        let [pg_ctl, pg_ctlcluster] = POSTGRESQL.control else {
            panic!("pg_ctl and pg_ctlcluster");
        };
        let of = |c: &Control, a: &[&str]| (c.intent)(&args(a));
        // -o passes options, -t is a timeout: neither is a verb.
        assert_eq!(
            of(
                pg_ctl,
                &["-D", "/srv/pg", "-o", "-p 5433", "-t", "60", "stop"]
            ),
            Intent::Stop
        );
        assert_eq!(of(pg_ctl, &["start", "-D", "/srv/pg"]), Intent::Start);
        assert_eq!(of(pg_ctl, &["restart", "-m", "fast"]), Intent::Restart);
        assert_eq!(of(pg_ctl, &["status"]), Intent::Other);
        assert_eq!(of(pg_ctlcluster, &["15", "main", "stop"]), Intent::Stop);
        assert_eq!(of(pg_ctlcluster, &["15", "main", "start"]), Intent::Start);
    }

    #[test]
    fn pg_ctlcluster_names_the_unit_it_redirects_to() {
        let units = |a: &[&str]| pg_ctlcluster_units(&args(a));
        assert_eq!(
            units(&["15", "main", "stop"]),
            ["postgresql@15-main.service"]
        );
        assert_eq!(
            units(&["-m", "fast", "16", "main", "restart"]),
            ["postgresql@16-main.service"]
        );
        assert_eq!(units(&["15-main", "start"]), ["postgresql@15-main.service"]);
        assert!(units(&["15", "main", "reload"]).is_empty());
        assert!(units(&["15", "main", "status"]).is_empty());
        // The unit's own ExecStart= and ExecStop=: pg_ctl, not systemd.
        assert!(units(&["--skip-systemctl-redirect", "15-main", "start"]).is_empty());
        assert!(units(&["--skip-systemctl-redirect", "-m", "fast", "15-main", "stop"]).is_empty());
    }
}
