//! Compiles src/bpf/tern.bpf.c with clang and generates its libbpf-rs skeleton
//! into OUT_DIR (needs clang, the kernel UAPI headers and libbpf's bpf_helpers.h:
//! tests/install-deps.sh installs them).

use std::env;
use std::path::PathBuf;

use libbpf_cargo::SkeletonBuilder;

const SRC: &str = "src/bpf/tern.bpf.c";

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo"));
    let arch = env::var("CARGO_CFG_TARGET_ARCH").expect("CARGO_CFG_TARGET_ARCH is set by cargo");
    // Debian keeps <asm/types.h> in the multiarch directory, which clang does
    // not search when it targets bpf.
    let multiarch = match arch.as_str() {
        "x86_64" => "x86_64-linux-gnu",
        "aarch64" => "aarch64-linux-gnu",
        other => panic!("tern-xdp: no multiarch include directory known for {other}"),
    };
    SkeletonBuilder::new()
        .source(SRC)
        .clang_args([
            "-O2".to_string(),
            "-Wall".to_string(),
            "-Werror".to_string(),
            format!("-I/usr/include/{multiarch}"),
        ])
        .build_and_generate(out.join("tern.skel.rs"))
        .unwrap_or_else(|e| panic!("tern-xdp: building {SRC} failed: {e:#}"));
    println!("cargo:rerun-if-changed={SRC}");
}
