//! containerd: a container's processes descend from its shim, so one that
//! a restart policy brings back names the shim as its supervisor. The
//! shim's comm carries its runtime (`containerd-shim-runc-v2`, which the
//! kernel cuts to 15 bytes).

use super::Supervisor;

pub const CONTAINERD: Supervisor = Supervisor {
    name: "containerd",
    comms: &["containerd-shim*"],
    control: &[],
    watching: None,
};

#[cfg(test)]
mod tests {
    use crate::supervisors::is_supervisor;

    #[test]
    fn any_shim_is_containerds() {
        assert!(is_supervisor("containerd-shim"));
        assert!(is_supervisor("containerd-shim-runc-v2"));
        assert!(!is_supervisor("containerd"));
    }
}
