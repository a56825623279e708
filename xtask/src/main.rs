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
    /// nightly's own libLLVM), cargo-fuzz, and the Debian tools the tests and demo use.
    /// Idempotent.
    Setup,
    /// Build everything, then run all tests (unit, BPF_PROG_TEST_RUN, network namespaces) as
    /// root, serially: they share kernel state. Then a short smoke run of each fuzz target.
    Test {
        /// Extra arguments for the test binaries (e.g. a test name filter); with any, the fuzz
        /// smoke run is left out.
        args: Vec<String>,
    },
    /// Run each fuzz target (the parsers of outside input, overlay-userspace/fuzz) for a bounded
    /// time, starting from its seeds; fails if one panics, hangs or runs out of memory.
    /// Then (as root) the programs against the reference model with many random cases.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Random cases of the datapath against its reference model (tests/model.rs), with a
        /// seed of its own each run; 0 leaves it out. Needs root (BPF_PROG_TEST_RUN).
        #[arg(long, default_value_t = 1_000_000)]
        model_cases: u64,
        /// Targets to run [default: all].
        #[arg(value_parser = clap::builder::PossibleValuesParser::new(FUZZ_TARGETS))]
        targets: Vec<String>,
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

/// The fuzz targets of overlay-userspace/fuzz, each a parser of outside input.
const FUZZ_TARGETS: &[&str] = &["cluster_file", "cni_config", "docker_request", "store_records", "dns_question"];
/// Seconds per target of the smoke run in `test`.
const FUZZ_SMOKE_SECONDS: u64 = 10;
/// An input taking longer than this is a hang.
const FUZZ_INPUT_TIMEOUT_SECONDS: u64 = 10;
/// An input making the process hold more than this is unbounded allocation.
const FUZZ_RSS_LIMIT_MB: u64 = 2048;

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
    // 3. cargo-fuzz for the fuzz targets (it drives the nightly's libFuzzer instrumentation).
    let works = Command::new(cargo_home_bin().join("cargo-fuzz")).arg("--version").output().is_ok_and(|o| o.status.success());
    if !works {
        run(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))?;
    }
    // 4. Tools the tests and the demo run.
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

/// Builds the fuzz targets once, then runs each of `targets` for `seconds` from its committed
/// seeds (overlay-userspace/fuzz/corpus/TARGET, read only) and what earlier runs found
/// (target/fuzz/corpus/TARGET). Runs them all; fails naming every target that found a problem.
/// `dev`: an unoptimised build (the smoke run: building is most of its time, and a few seconds
/// of inputs need no speed).
fn fuzz(targets: &[String], seconds: u64, dev: bool) -> anyhow::Result<()> {
    let crate_dir = root().join("overlay-userspace");
    let target_dir = root().join("target").join("fuzz");
    // No sanitizer: the parsers are safe Rust, and ASan would double the build and slow every
    // run; debug assertions (-a) turn overflows into crashes. AYA_BUILD_SKIP: the targets
    // need no eBPF programs (build.rs then embeds an empty object).
    let cargo_fuzz = |sub: &str| {
        let mut c = Command::new("cargo");
        c.current_dir(&crate_dir)
            .args(["+nightly", "fuzz", sub, "--sanitizer", "none", "--debug-assertions"])
            .args(if dev { &["--dev"][..] } else { &[] })
            .arg("--target-dir")
            .arg(&target_dir)
            .env("AYA_BUILD_SKIP", "1");
        c
    };
    run(&mut cargo_fuzz("build"))?;
    let mut failed = Vec::new();
    for t in targets {
        let found = target_dir.join("corpus").join(t);
        std::fs::create_dir_all(&found).with_context(|| format!("creating {}", found.display()))?;
        let r = run(cargo_fuzz("run")
            .arg(t)
            .arg(&found)
            .arg(crate_dir.join("fuzz").join("corpus").join(t))
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .arg(format!("-timeout={FUZZ_INPUT_TIMEOUT_SECONDS}"))
            .arg(format!("-rss_limit_mb={FUZZ_RSS_LIMIT_MB}"))
            .arg("-print_final_stats=1"));
        if let Err(e) = r {
            eprintln!("fuzz target {t}: {e:#}");
            failed.push(t.as_str());
        }
    }
    if !failed.is_empty() {
        bail!("fuzz targets {} found problems; the inputs are in overlay-userspace/fuzz/artifacts/", failed.join(", "));
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
            let tests = run(Command::new("cargo")
                .current_dir(root())
                .args(["test", "--no-fail-fast", "--", "--test-threads=1"])
                .args(&args));
            // The fuzz smoke run, even after a failed test: its result is worth having too.
            let smoke = if args.is_empty() {
                fuzz(&FUZZ_TARGETS.iter().map(|t| t.to_string()).collect::<Vec<_>>(), FUZZ_SMOKE_SECONDS, true)
            } else {
                Ok(())
            };
            match (tests, smoke) {
                (Err(t), Err(s)) => bail!("{t:#}; and the fuzz smoke run: {s:#}"),
                (t, s) => t.and(s),
            }
        }
        Task::Fuzz { seconds, model_cases, targets } => {
            setup()?;
            let targets = if targets.is_empty() { FUZZ_TARGETS.iter().map(|t| t.to_string()).collect() } else { targets };
            let parsers = fuzz(&targets, seconds, false);
            let model = if model_cases == 0 {
                Ok(())
            } else if !is_root {
                eprintln!("the datapath against its reference model left out: it loads eBPF programs, run as root");
                Ok(())
            } else {
                // A new seed each run, printed by the test: a longer run explores new cases.
                let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64);
                println!("the datapath against its reference model: {model_cases} cases, seed {seed}");
                run(Command::new("cargo")
                    .current_dir(root())
                    .args(["test", "-p", "overlay-userspace", "--test", "model", "--", "--nocapture"])
                    .env("OVERLAY_MODEL_CASES", model_cases.to_string())
                    .env("OVERLAY_MODEL_SEED", seed.to_string()))
            };
            match (parsers, model) {
                (Err(p), Err(m)) => bail!("{p:#}; and the model: {m:#}"),
                (p, m) => p.and(m),
            }
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
