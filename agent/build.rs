//! Embeds the kernel programs built by `cargo xtask build-ebpf`, or the
//! object $STOPGUARD_EBPF_OBJECT_PATH names (absolute, or from the
//! workspace root), as `cargo xtask build-next` passes its variant.
use std::path::PathBuf;

fn main() {
    println!("cargo::rerun-if-env-changed=STOPGUARD_EBPF_OBJECT_PATH");
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let chosen = std::env::var_os("STOPGUARD_EBPF_OBJECT_PATH").map(PathBuf::from);
    // An absolute path replaces the workspace root in the join.
    let object = manifest.join("..").join(
        chosen
            .as_deref()
            .unwrap_or(agent_common::OBJECT_PATH.as_ref()),
    );
    println!("cargo::rerun-if-changed={}", object.display());
    if !object.exists() {
        if chosen.is_some() {
            println!(
                "cargo::error=STOPGUARD_EBPF_OBJECT_PATH names {}, which does not exist",
                object.display()
            );
        } else {
            println!(
                "cargo::error=the kernel programs are not built: run `cargo xtask build-ebpf` first"
            );
        }
        return;
    }
    println!(
        "cargo::rustc-env=STOPGUARD_EBPF_OBJECT={}",
        object.display()
    );
}
