//! Finds the eBPF object that `sg-ctl` embeds. `cargo xtask build-ebpf`
//! builds it; the userspace build needs nothing else of the eBPF toolchain.
use std::{env, path::PathBuf};

fn main() {
    println!("cargo::rerun-if-env-changed=SG_EBPF_OBJECT");
    let object = env::var_os("SG_EBPF_OBJECT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../target/ebpf/bpfel-unknown-none/release/sg-ebpf")
        });
    println!("cargo::rerun-if-changed={}", object.display());
    if !object.exists() {
        eprintln!(
            "sg-ctl embeds sg's eBPF datapath, which is not built yet ({} is missing).\n\
             Build it with `cargo xtask build-ebpf` (it sets up the eBPF toolchain on first use), \
             or point SG_EBPF_OBJECT at a built sg-ebpf object.",
            object.display()
        );
        std::process::exit(1);
    }
    println!("cargo::rustc-env=SG_EBPF_OBJECT={}", object.display());
}
