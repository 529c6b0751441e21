//! What the fleet keeps in etcd, and where: a cluster window, a host's
//! acknowledgement of it, a host's presence (under its lease) and its
//! membership (no lease: what is left of a host that went down). Pure:
//! records are checked here before anything acts on them.
//!
//! ```text
//! PREFIX/CLUSTER/windows/ID        a cluster window, under a lease as long as it
//! PREFIX/CLUSTER/acks/ID/HOST      HOST applied it (or could not), under HOST's lease
//! PREFIX/CLUSTER/hosts/HOST        HOST's presence, under HOST's lease
//! PREFIX/CLUSTER/members/HOST      HOST is a member; when it was seen last
//! ```

use serde::{Deserialize, Serialize};

use super::super::config::fleet::check_name;
use crate::detect::{SwitchedOff, Window};

/// The longest text a record may carry in one field.
const MAX_TEXT: usize = 1024;
/// The longest a cluster window lasts, as a local one.
const MAX_LENGTH_SECS: u64 = 30 * 24 * 3600;

/// The keys of one cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keys {
    root: String,
}

impl Keys {
    /// `root`: PREFIX/CLUSTER.
    pub fn new(root: String) -> Keys {
        Keys { root }
    }

    pub fn windows(&self) -> String {
        format!("{}/windows/", self.root)
    }

    pub fn window(&self, id: &str) -> String {
        format!("{}{id}", self.windows())
    }

    pub fn acks(&self, id: &str) -> String {
        format!("{}/acks/{id}/", self.root)
    }

    pub fn ack(&self, id: &str, host: &str) -> String {
        format!("{}{host}", self.acks(id))
    }

    pub fn hosts(&self) -> String {
        format!("{}/hosts/", self.root)
    }

    pub fn host(&self, host: &str) -> String {
        format!("{}{host}", self.hosts())
    }

    pub fn members(&self) -> String {
        format!("{}/members/", self.root)
    }

    pub fn member(&self, host: &str) -> String {
        format!("{}{host}", self.members())
    }

    /// The last segment of `key` under `under` (an id or a host).
    pub fn name_in<'k>(key: &'k str, under: &str) -> Option<&'k str> {
        key.strip_prefix(under).filter(|rest| !rest.contains('/'))
    }
}

/// Who asked: the control client and the host it asked on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Who {
    pub uid: u32,
    pub loginuid: Option<u32>,
    /// The login user's name, when known on the host asked.
    pub user: Option<String>,
    pub host: String,
}

impl Who {
    /// Who, in words: the login user's name, else their login uid (a
    /// login with no account on the host asked), else the process's uid.
    pub fn name(&self) -> String {
        match (&self.user, self.loginuid) {
            (Some(user), _) => user.clone(),
            (None, Some(loginuid)) => format!("login uid {loginuid}"),
            (None, None) => format!("uid {}", self.uid),
        }
    }
}

/// A cluster window: one record, applied by every matching host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowRecord {
    pub id: String,
    pub service: String,
    /// A glob of host names (`*` for every host of the cluster).
    pub hosts: String,
    pub reason: String,
    pub by: Who,
    /// Unix seconds.
    pub opened_at: u64,
    pub expires_at: u64,
    /// Set by `window close --cluster` just before the record goes: how.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closing: Option<Closing>,
    /// The etcd lease it lives under, which `close` revokes.
    #[serde(default)]
    pub lease: i64,
    /// What `stop --and-pause --cluster` switched off once for every host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switch: Option<ClusterSwitch>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Closing {
    pub by: Who,
    pub thaw: bool,
    pub kill: bool,
    /// The closing host switches the window's `switch` back on itself;
    /// when false (it cannot: no such user or program there) the host
    /// that switched it off does.
    #[serde(default)]
    pub switches_on: bool,
}

/// The supervisor `stop --and-pause --cluster` switched off once for the
/// whole cluster (Patroni's maintenance mode), carried in the window
/// record so that whoever ends the window can switch it back on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterSwitch {
    #[serde(flatten)]
    pub switch: SwitchedOff,
    /// The name of the user it runs as on the host that switched it off;
    /// another host runs it as its own user of that name. None for root,
    /// or a user with no name there (`run_as` holds the ids).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

impl ClusterSwitch {
    /// Only Patroni's maintenance mode is carried (`patronictl [-c FILE]
    /// pause --wait`, and `resume --wait` with the same config): a record
    /// is no way to have the hosts run any other command.
    fn check(&self) -> Result<(), String> {
        let SwitchedOff {
            supervisor,
            off,
            on,
            ..
        } = &self.switch;
        let config = |argv: &[String], verb: &str| match argv {
            [ctl, c, file, v, w] if ctl == "patronictl" && c == "-c" && !file.is_empty() => {
                (v == verb && w == "--wait").then(|| Some(file.clone()))
            }
            [ctl, v, w] if ctl == "patronictl" => (v == verb && w == "--wait").then_some(None),
            _ => None,
        };
        if supervisor != "patroni" {
            return Err(format!(
                "only patroni's switch is carried, not `{supervisor}`'s"
            ));
        }
        match (config(off, "pause"), config(on, "resume")) {
            (Some(a), Some(b)) if a == b => {}
            _ => return Err("expected `patronictl [-c FILE] pause|resume --wait`".into()),
        }
        if let Some(user) = &self.user
            && (user.is_empty() || user.len() > 64 || user.contains(['/', ':', '\0']))
        {
            return Err(format!("user `{user}`: not a user name"));
        }
        Ok(())
    }
}

/// A host's answer to a cluster window.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub host: String,
    /// The local window it opened (`w4`), or why it could not.
    pub window: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Unix seconds.
    pub at: u64,
}

/// A host as it says itself, under its lease.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    pub host: String,
    pub version: String,
    /// Whether its guard holds while its agent is down (pinned probes).
    pub pinned: bool,
    pub services: Vec<ServiceBrief>,
    pub windows: Vec<WindowBrief>,
    /// Processes it holds frozen.
    pub held: Vec<u32>,
    pub last_alert: Option<AlertBrief>,
    /// Unix seconds of this record.
    pub seen_at: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceBrief {
    pub name: String,
    /// `running`, `stopped_by_operator` or `not_running` (as `status`).
    pub state: String,
    pub pid: Option<u32>,
    pub frozen: Vec<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowBrief {
    pub id: String,
    pub service: String,
    /// The cluster window it applies, if any.
    pub cluster: Option<String>,
}

impl WindowBrief {
    pub fn of(window: &Window) -> WindowBrief {
        WindowBrief {
            id: window.id.clone(),
            service: window.service.clone(),
            cluster: window.cluster.clone(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertBrief {
    pub kind: String,
    pub service: Option<String>,
    pub at: u64,
}

/// A member of the cluster; outlives the host's lease.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub host: String,
    pub version: String,
    /// Unix seconds it was last seen up (refreshed every 15 s).
    pub last_seen: u64,
    pub pinned: bool,
}

/// What a host does with a cluster window record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Apply,
    /// Its `hosts` glob does not match this host.
    NotHere,
    /// Malformed, or from a host that is not a member: refused, audited.
    Refuse(String),
}

impl WindowRecord {
    /// Whether it is well-formed, stored under its own id, and for a
    /// window no longer than a local one may be.
    pub fn check(&self, id_in_key: &str) -> Result<(), String> {
        if self.id != id_in_key {
            return Err(format!(
                "record id `{}` is not its key's `{id_in_key}`",
                self.id
            ));
        }
        check_name("id", &self.id)?;
        check_name("host", &self.by.host)?;
        if self.service.is_empty() || self.service.len() > 256 {
            return Err("service: expected a service name".into());
        }
        if self.reason.len() > MAX_TEXT || self.hosts.len() > MAX_TEXT {
            return Err(format!("reason or hosts longer than {MAX_TEXT} bytes"));
        }
        glob::Pattern::new(&self.hosts).map_err(|e| format!("hosts `{}`: {e}", self.hosts))?;
        if self.expires_at <= self.opened_at || self.expires_at - self.opened_at > MAX_LENGTH_SECS {
            return Err("expires_at: expected after opened_at, within 30 days".into());
        }
        if let Some(switch) = &self.switch {
            switch.check().map_err(|e| format!("switch: {e}"))?;
        }
        Ok(())
    }

    /// Whether `host`, of a cluster whose members include the window's
    /// host when `origin_member`, applies it.
    pub fn verdict(&self, id_in_key: &str, host: &str, origin_member: bool) -> Verdict {
        if let Err(why) = self.check(id_in_key) {
            return Verdict::Refuse(why);
        }
        if !origin_member {
            return Verdict::Refuse(format!(
                "opened on `{}`, which is not a member of the cluster",
                self.by.host
            ));
        }
        if self.matches(host) {
            Verdict::Apply
        } else {
            Verdict::NotHere
        }
    }

    pub fn matches(&self, host: &str) -> bool {
        glob::Pattern::new(&self.hosts).is_ok_and(|p| p.matches(host))
    }
}

/// A new cluster window's id: unique across the cluster's hosts.
pub fn new_id(host: &str, now_unix_ms: u64) -> String {
    format!("c{now_unix_ms:x}-{host}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> WindowRecord {
        WindowRecord {
            id: "c1-db-1".into(),
            service: "postgres".into(),
            hosts: "db-*".into(),
            reason: "upgrade".into(),
            by: Who {
                uid: 0,
                loginuid: Some(1000),
                user: Some("alice".into()),
                host: "db-1".into(),
            },
            opened_at: 100,
            expires_at: 7300,
            closing: None,
            lease: 0,
            switch: None,
        }
    }

    fn patroni(off: &[&str], on: &[&str], user: &str) -> ClusterSwitch {
        let words = |w: &[&str]| w.iter().map(|s| s.to_string()).collect();
        ClusterSwitch {
            switch: SwitchedOff {
                supervisor: "patroni".into(),
                off: words(off),
                on: words(on),
                run_as: None,
            },
            user: Some(user.into()),
        }
    }

    #[test]
    fn a_record_carries_patronis_switch_and_no_other_command() {
        let mut r = record();
        let c = ["patronictl", "-c", "/etc/patroni.yml"];
        r.switch = Some(patroni(
            &[&c[..], &["pause", "--wait"]].concat(),
            &[&c[..], &["resume", "--wait"]].concat(),
            "postgres",
        ));
        assert_eq!(r.check("c1-db-1"), Ok(()));
        let text = serde_json::to_string(&r).unwrap();
        assert!(text.contains(r#""supervisor":"patroni""#), "{text}");
        assert_eq!(serde_json::from_str::<WindowRecord>(&text).unwrap(), r);
        let bad = [
            patroni(
                &["rm", "-rf", "/"],
                &["patronictl", "resume", "--wait"],
                "postgres",
            ),
            patroni(
                &["patronictl", "pause", "--wait"],
                &["patronictl", "-c", "/x", "resume", "--wait"],
                "postgres",
            ),
            patroni(
                &["patronictl", "pause", "--wait"],
                &["patronictl", "resume", "--wait"],
                "../root",
            ),
        ];
        for switch in bad {
            r.switch = Some(switch);
            assert!(
                matches!(r.check("c1-db-1"), Err(w) if w.starts_with("switch: ")),
                "{:?}",
                r.switch
            );
        }
    }

    #[test]
    fn records_from_before_switches_still_parse() {
        let old = r#"{"id":"c1-db-1","service":"postgres","hosts":"*","reason":"x",
            "by":{"uid":0,"loginuid":null,"user":null,"host":"db-1"},"opened_at":1,"expires_at":2,
            "closing":{"by":{"uid":0,"loginuid":null,"user":null,"host":"db-2"},"thaw":false,"kill":false}}"#;
        let r: WindowRecord = serde_json::from_str(old).unwrap();
        assert_eq!(r.switch, None);
        assert!(!r.closing.unwrap().switches_on);
    }

    #[test]
    fn a_matching_host_applies_a_well_formed_record_from_a_member() {
        let r = record();
        assert_eq!(r.verdict("c1-db-1", "db-2", true), Verdict::Apply);
        assert_eq!(r.verdict("c1-db-1", "web-1", true), Verdict::NotHere);
        assert!(
            matches!(r.verdict("c1-db-1", "db-2", false), Verdict::Refuse(w) if w.contains("not a member"))
        );
    }

    #[test]
    fn malformed_records_are_refused_with_the_reason() {
        type Spoil = fn(&mut WindowRecord);
        let cases: [(&str, Spoil); 5] = [
            ("key", |r| r.id = "c2-db-1".into()),
            ("host", |r| r.by.host = "db/1".into()),
            ("hosts", |r| r.hosts = "[".into()),
            ("expires_at", |r| r.expires_at = r.opened_at),
            ("expires_at", |r| {
                r.expires_at = r.opened_at + 31 * 24 * 3600
            }),
        ];
        for (says, spoil) in cases {
            let mut r = record();
            spoil(&mut r);
            let key = if says == "key" {
                "c1-db-1".to_string()
            } else {
                r.id.clone()
            };
            let verdict = r.verdict(&key, "db-2", true);
            assert!(
                matches!(&verdict, Verdict::Refuse(w) if w.contains(says)),
                "{says}: {verdict:?}"
            );
        }
    }

    #[test]
    fn names_are_read_back_from_keys() {
        let keys = Keys::new("/stopguard/pg".into());
        assert_eq!(keys.ack("c1", "db-2"), "/stopguard/pg/acks/c1/db-2");
        assert_eq!(
            Keys::name_in(&keys.host("db-2"), &keys.hosts()),
            Some("db-2")
        );
        assert_eq!(
            Keys::name_in("/stopguard/pg/hosts/a/b", &keys.hosts()),
            None
        );
    }
}
