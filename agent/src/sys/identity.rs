//! Who a uid is, in words: the one place that turns login uids into names.

/// The login name of a uid, when the host knows one.
pub fn user_name(uid: u32) -> Option<String> {
    nix::unistd::User::from_uid(uid.into())
        .ok()
        .flatten()
        .map(|u| u.name)
}

/// Who, in words: "alice (uid 1000)" or "uid 1000"; "someone" without a login.
pub fn person(loginuid: Option<u32>) -> String {
    match loginuid {
        Some(uid) => match user_name(uid) {
            Some(name) => format!("{name} (uid {uid})"),
            None => format!("uid {uid}"),
        },
        None => "someone".into(),
    }
}
