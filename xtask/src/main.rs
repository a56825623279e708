//! Project tasks cargo cannot do alone. Every task runs `setup` first, so the README's commands
//! work on a fresh machine.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "overlay project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need: nightly rust-src, bpf-linker (against the
    /// nightly's own libLLVM), and the Debian tools the tests and demo use. Idempotent.
    Setup,
    /// Build everything, then run all tests (unit, BPF_PROG_TEST_RUN, network namespaces) as
    /// root, serially: they share kernel state.
    Test {
        /// Extra arguments for the test binaries (e.g. a test name filter).
        args: Vec<String>,
    },
    /// Build in release mode and run `overlay demo` (a simulated 3-host cluster).
    Demo,
    /// Build in release mode and install the `overlay` binary as PREFIX/bin/overlay (the
    /// README's commands call it by name).
    Install {
        /// Where to install.
        #[arg(long, default_value = "/usr/local")]
        prefix: PathBuf,
    },
    /// Build in release mode and run `overlay bench` (native vs kernel-vxlan vs eBPF), passing
    /// the arguments on (e.g. `cargo xtask bench --quick --json bench.json`).
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// Debian packages and a binary (or, as an absolute path, a file) each provides; checked to
/// skip apt when all are present.
const PACKAGES: &[(&str, &str)] = &[
    ("iproute2", "ip"),
    ("iputils-ping", "ping"),
    ("tcpdump", "tcpdump"),
    ("tshark", "tshark"),
    ("iperf3", "iperf3"),
    ("procps", "sysctl"),
    // curl: the README's service example fetches a page through a VIP with it.
    ("curl", "curl"),
    // promtool: the metrics test checks `overlay agent --metrics` output with `promtool check metrics`.
    ("prometheus", "promtool"),
    // nft: the agent sets up the way out's NAT table through its JSON interface.
    ("nftables", "nft"),
    // dnsmasq: the standard DNS server `overlay bench --dns` compares the datapath's answers with.
    ("dnsmasq-base", "/usr/sbin/dnsmasq"),
    // The etcd v3 server the store tests and the control-plane benchmark start.
    ("etcd-server", "etcd"),
    // etcdctl and openssl: the README's TLS and user set-up (the tests make their own
    // certificates with rcgen and manage users through the etcd API).
    ("etcd-client", "etcdctl"),
    ("openssl", "openssl"),
    // etcd-client's build script compiles etcd's .proto files: protoc and the well-known types.
    ("protobuf-compiler", "protoc"),
    ("libprotobuf-dev", "/usr/include/google/protobuf/descriptor.proto"),
    // The CNI reference plugins (host-local, bandwidth) the CNI tests chain with ours.
    ("containernetworking-plugins", "/usr/lib/cni/host-local"),
    // Docker 20.10 (dockerd, containerd, runc) and a static busybox for the image the Docker
    // plugin test imports (nothing can be pulled here).
    ("docker.io", "dockerd"),
    ("busybox-static", "/bin/busybox"),
    // Podman 4.3 with its CNI backend (no netavark here), for one container through our plugin.
    ("podman", "podman"),
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask sits in the workspace").to_path_buf()
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("+ {cmd:?}");
    let st = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !st.success() {
        bail!("{cmd:?} failed: {st}");
    }
    Ok(())
}

fn have(bin: &str) -> bool {
    if bin.starts_with('/') {
        return Path::new(bin).exists();
    }
    Command::new("sh").args(["-c", &format!("command -v {bin} >/dev/null 2>&1")]).status().is_ok_and(|s| s.success())
}

fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let o = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    if !o.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    }
    Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
}

fn cargo_home_bin() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cargo"))
        .join("bin")
}

fn setup() -> anyhow::Result<()> {
    // 1. rust-src for the nightly that builds the eBPF crate with -Z build-std=core.
    let installed = output(Command::new("rustup").args(["component", "list", "--toolchain", "nightly", "--installed"]))?;
    if !installed.lines().any(|l| l.starts_with("rust-src")) {
        run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))?;
    }
    // 2. bpf-linker linked against the nightly's own libLLVM (no LLVM 22 package exists here).
    let linker = cargo_home_bin().join("bpf-linker");
    let works = Command::new(&linker).arg("--version").output().is_ok_and(|o| o.status.success());
    if !works {
        let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
        let lib = Path::new(&sysroot).join("lib");
        let llvm = std::fs::read_dir(&lib)?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("libLLVM.so.")))
            .with_context(|| format!("no libLLVM.so.* in {}", lib.display()))?;
        let prefix = root().join("target").join("llvm-prefix");
        std::fs::create_dir_all(prefix.join("lib"))?;
        let link = prefix.join("lib").join("libLLVM.so");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&llvm, &link)?;
        run(Command::new("cargo")
            .args(["install", "bpf-linker", "--locked", "--no-default-features", "--features", "llvm-22"])
            .env("LLVM_PREFIX", &prefix)
            .env("RUSTFLAGS", format!("-C link-arg=-Wl,-rpath,{}", lib.display())))?;
    }
    // 3. Tools the tests and the demo run.
    let missing: Vec<&str> = PACKAGES.iter().filter(|(_, bin)| !have(bin)).map(|(p, _)| *p).collect();
    if !missing.is_empty() {
        run(Command::new("apt-get").args(["update", "-q"]))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // SAFETY: getuid has no preconditions.
    let is_root = unsafe { libc_getuid() } == 0;
    match cli.task {
        Task::Setup => setup(),
        Task::Test { args } => {
            setup()?;
            if !is_root {
                bail!("the tests load eBPF programs and create network namespaces: run as root");
            }
            run(Command::new("cargo").current_dir(root()).args(["build"]))?;
            run(Command::new("cargo")
                .current_dir(root())
                .args(["test", "--no-fail-fast", "--", "--test-threads=1"])
                .args(&args))
        }
        Task::Demo => {
            setup()?;
            if !is_root {
                bail!("the demo creates network namespaces and loads eBPF programs: run as root");
            }
            run(Command::new("cargo").current_dir(root()).args(["build", "--release", "-p", "overlay-userspace"]))?;
            run(Command::new(root().join("target/release/overlay")).arg("demo"))
        }
        Task::Install { prefix } => {
            setup()?;
            run(Command::new("cargo").current_dir(root()).args(["build", "--release", "-p", "overlay-userspace"]))?;
            let dir = prefix.join("bin");
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let to = dir.join("overlay");
            // Copy to a temporary name and rename: a running agent keeps its old binary.
            let tmp = dir.join(".overlay.new");
            std::fs::copy(root().join("target/release/overlay"), &tmp).with_context(|| format!("copying to {}", tmp.display()))?;
            std::fs::rename(&tmp, &to).with_context(|| format!("installing {}", to.display()))?;
            println!("installed {}", to.display());
            Ok(())
        }
        Task::Bench { args } => {
            setup()?;
            if !is_root {
                bail!("the benchmark creates network namespaces and loads eBPF programs: run as root");
            }
            run(Command::new("cargo").current_dir(root()).args(["build", "--release", "-p", "overlay-userspace"]))?;
            run(Command::new(root().join("target/release/overlay")).arg("bench").args(&args))
        }
    }
}

unsafe extern "C" {
    #[link_name = "getuid"]
    fn libc_getuid() -> u32;
}
