//! What the agent does about a finding, given the service's configuration:
//! the one place where a respawn becomes a freeze, a kill or an alert. Pure:
//! no I/O, so every combination is tested without root.

use crate::{
    config::{InWindow, Service, UnexpectedRespawn},
    detect::{AtRisk, Finding},
};

/// The agent's response to one finding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Arm the kernel guard: the service's next exec stops before its first
    /// instruction, so a respawn can be frozen.
    Guard,
    /// Disarm the guard: the operator has the service back.
    Unguard,
    /// Hold the respawn frozen and alert.
    Freeze,
    /// End the respawn and alert.
    Kill,
    /// Let it run and alert.
    Alert,
    /// Record it (the audit log has every finding) and do nothing more.
    Nothing,
}

/// The decision for `finding` about `service`; `window_open` says whether a
/// maintenance window is open on it now.
pub fn decide(finding: &Finding, service: &Service, window_open: bool) -> Decision {
    match finding {
        Finding::OperatorStop(_) => match service.on_unexpected_respawn {
            UnexpectedRespawn::Freeze => Decision::Guard,
            UnexpectedRespawn::Alert | UnexpectedRespawn::Ignore => Decision::Nothing,
        },
        Finding::Respawn {
            window: Some(_), ..
        } => match service.on_respawn {
            InWindow::Freeze => Decision::Freeze,
            InWindow::Kill => Decision::Kill,
            InWindow::Alert => Decision::Alert,
        },
        Finding::Respawn { window: None, .. } => match service.on_unexpected_respawn {
            UnexpectedRespawn::Freeze => Decision::Freeze,
            UnexpectedRespawn::Alert => Decision::Alert,
            UnexpectedRespawn::Ignore => Decision::Nothing,
        },
        Finding::OperatorStart { .. } if !window_open => Decision::Unguard,
        Finding::EventsLost { .. } => Decision::Alert,
        Finding::OperatorStart { .. }
        | Finding::CrashRestart { .. }
        | Finding::Start { .. }
        | Finding::Exited { .. } => Decision::Nothing,
    }
}

/// The decision for the main process a resync found after lost records,
/// when nobody saw it start (`risk.started_unseen`); the loss is alerted
/// whatever it says. Held as a respawn would be where the policy freezes
/// one, since a freeze can be undone; never killed on a guess; and a
/// person's own start (it has a login) is theirs, as when seen.
pub fn decide_unseen_start(risk: &AtRisk, service: &Service) -> Decision {
    if risk.started_unseen.is_none() || risk.started_unseen_loginuid.is_some() {
        return Decision::Alert;
    }
    let freezes = match (&risk.window, &risk.stopped_by) {
        (Some(_), _) => service.on_respawn == InWindow::Freeze,
        (None, Some(_)) => service.on_unexpected_respawn == UnexpectedRespawn::Freeze,
        (None, None) => false,
    };
    if freezes {
        Decision::Freeze
    } else {
        Decision::Alert
    }
}

/// Whether opening a window on `service` arms the guard.
pub fn guards_in_window(service: &Service) -> bool {
    service.on_respawn == InWindow::Freeze
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        decide::tests::{service, started, stop, window},
        detect::AtRisk,
    };

    fn respawn(in_window: bool) -> Finding {
        Finding::Respawn {
            started: Box::new(started()),
            stopped_by: Box::new(stop()),
            window: in_window.then(window),
        }
    }

    /// A service at risk at a loss, with pid 42 found started unseen.
    fn unseen_start(in_window: bool, stopped: bool) -> AtRisk {
        AtRisk {
            service: "db".into(),
            window: in_window.then(window),
            stopped_by: stopped.then(stop),
            started_unseen: Some(42),
            started_unseen_loginuid: None,
        }
    }

    const IN_WINDOW: [InWindow; 3] = [InWindow::Freeze, InWindow::Alert, InWindow::Kill];
    const UNEXPECTED: [UnexpectedRespawn; 3] = [
        UnexpectedRespawn::Alert,
        UnexpectedRespawn::Freeze,
        UnexpectedRespawn::Ignore,
    ];

    #[test]
    fn policy_inside_a_window_follows_on_respawn_whatever_on_unexpected_respawn_says() {
        for on_respawn in IN_WINDOW {
            for unexpected in UNEXPECTED {
                let expected = match on_respawn {
                    InWindow::Freeze => Decision::Freeze,
                    InWindow::Alert => Decision::Alert,
                    InWindow::Kill => Decision::Kill,
                };
                let got = decide(&respawn(true), &service(on_respawn, unexpected), true);
                assert_eq!(
                    got, expected,
                    "in a window, {on_respawn:?} / {unexpected:?}"
                );
            }
        }
    }

    #[test]
    fn policy_outside_a_window_follows_on_unexpected_respawn_whatever_on_respawn_says() {
        for on_respawn in IN_WINDOW {
            for unexpected in UNEXPECTED {
                let expected = match unexpected {
                    UnexpectedRespawn::Freeze => Decision::Freeze,
                    UnexpectedRespawn::Alert => Decision::Alert,
                    UnexpectedRespawn::Ignore => Decision::Nothing,
                };
                let got = decide(&respawn(false), &service(on_respawn, unexpected), false);
                assert_eq!(got, expected, "no window, {on_respawn:?} / {unexpected:?}");
            }
        }
    }

    #[test]
    fn policy_arms_the_guard_at_an_operator_stop_only_when_an_unexpected_respawn_freezes() {
        for on_respawn in IN_WINDOW {
            for unexpected in UNEXPECTED {
                let got = decide(
                    &Finding::OperatorStop(stop()),
                    &service(on_respawn, unexpected),
                    false,
                );
                let expected = if unexpected == UnexpectedRespawn::Freeze {
                    Decision::Guard
                } else {
                    Decision::Nothing
                };
                assert_eq!(got, expected, "{on_respawn:?} / {unexpected:?}");
            }
        }
        assert!(guards_in_window(&service(
            InWindow::Freeze,
            UnexpectedRespawn::Alert
        )));
        assert!(!guards_in_window(&service(
            InWindow::Alert,
            UnexpectedRespawn::Freeze
        )));
    }

    #[test]
    fn policy_disarms_the_guard_when_the_operator_starts_it_outside_a_window() {
        let start = Finding::OperatorStart {
            started: started(),
            loginuid: 1000,
        };
        let freezing = service(InWindow::Freeze, UnexpectedRespawn::Freeze);
        assert_eq!(decide(&start, &freezing, false), Decision::Unguard);
        assert_eq!(decide(&start, &freezing, true), Decision::Nothing);
        let crash = Finding::CrashRestart { started: started() };
        assert_eq!(decide(&crash, &freezing, false), Decision::Nothing);
        let lost = Finding::EventsLost {
            count: 3,
            at_risk: Vec::new(),
        };
        assert_eq!(decide(&lost, &freezing, true), Decision::Alert);
    }

    #[test]
    fn policy_holds_a_start_nobody_saw_where_a_respawn_would_be_frozen() {
        for on_respawn in IN_WINDOW {
            for unexpected in UNEXPECTED {
                let service = service(on_respawn, unexpected);
                let in_window = if on_respawn == InWindow::Freeze {
                    Decision::Freeze
                } else {
                    Decision::Alert
                };
                let stopped = if unexpected == UnexpectedRespawn::Freeze {
                    Decision::Freeze
                } else {
                    Decision::Alert
                };
                let case = format!("{on_respawn:?} / {unexpected:?}");
                for stopped_too in [false, true] {
                    let risk = unseen_start(true, stopped_too);
                    assert_eq!(decide_unseen_start(&risk, &service), in_window, "{case}");
                }
                let risk = unseen_start(false, true);
                assert_eq!(decide_unseen_start(&risk, &service), stopped, "{case}");
            }
        }
    }

    #[test]
    fn policy_only_alerts_a_loss_with_no_unseen_start_or_a_persons_own() {
        let freezing = service(InWindow::Freeze, UnexpectedRespawn::Freeze);
        let nothing_new = AtRisk {
            started_unseen: None,
            ..unseen_start(true, true)
        };
        assert_eq!(
            decide_unseen_start(&nothing_new, &freezing),
            Decision::Alert
        );
        let theirs = AtRisk {
            started_unseen_loginuid: Some(1000),
            ..unseen_start(true, true)
        };
        assert_eq!(decide_unseen_start(&theirs, &freezing), Decision::Alert);
    }
}
