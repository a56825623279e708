//! Builds the eBPF programs with aya-build (nightly, -Z build-std=core, bpf-linker), so a plain
//! `cargo build` always carries fresh programs. `AYA_BUILD_SKIP=1` skips it for a quick check or
//! a fuzz build: the object is then empty (unless an earlier build left one), so the crate still
//! compiles but such a build cannot load programs.
use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let ebpf = Package {
        name: "overlay-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../overlay-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf], Toolchain::default())
        .context("building the eBPF programs failed; `cargo xtask setup` installs what they need")
        .map_err(|e| anyhow!("{e:#}"))?;
    // Skipped: dataplane's include_bytes_aligned! still needs the file.
    let object = std::path::Path::new(&std::env::var_os("OUT_DIR").context("OUT_DIR not set")?).join("overlay-ebpf");
    if !object.exists() {
        std::fs::write(&object, []).with_context(|| format!("writing {}", object.display()))?;
    }
    Ok(())
}
