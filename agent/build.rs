//! Embeds the kernel programs built by `cargo xtask build-ebpf`.
use std::path::PathBuf;

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let object = manifest.join("..").join(agent_common::OBJECT_PATH);
    println!("cargo::rerun-if-changed={}", object.display());
    if !object.exists() {
        println!(
            "cargo::error=the kernel programs are not built: run `cargo xtask build-ebpf` first"
        );
        return;
    }
    println!(
        "cargo::rustc-env=STOPGUARD_EBPF_OBJECT={}",
        object.display()
    );
}
