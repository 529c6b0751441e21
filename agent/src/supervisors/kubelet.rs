//! kubelet: brings back the containers of a pod.

use super::Supervisor;

pub const KUBELET: Supervisor = Supervisor {
    name: "kubelet",
    comms: &["kubelet"],
    control: &[],
    watching: None,
};

#[cfg(test)]
mod tests {
    use crate::supervisors::{control, is_supervisor};

    #[test]
    fn kubelet_supervises_and_has_no_control_command() {
        assert!(is_supervisor("kubelet"));
        assert!(control("kubelet").is_none());
    }
}
