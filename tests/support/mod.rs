//! Helpers shared by the integration tests: a pin-directory guard, the kernel's capture, and
//! frame builders.
#![allow(dead_code, reason = "each test file uses a different part of this module")]

use std::{
    net::Ipv4Addr,
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
};

use overlay::dataplane::{self, Dataplane};

pub const OVERLAY_BIN: &str = env!("CARGO_BIN_EXE_overlay");

pub fn require_root() {
    // SAFETY: getuid has no preconditions.
    assert_eq!(unsafe { libc::getuid() }, 0, "these tests load eBPF programs and need root (run `cargo xtask test`)");
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A freshly loaded datapath in a unique pin directory, removed on drop.
pub struct TestDataplane {
    pub dp: Dataplane,
    pub dir: PathBuf,
}

impl TestDataplane {
    pub fn new(tag: &str) -> Self {
        require_root();
        let root = dataplane::host_bpffs().expect("bpffs");
        let dir = root.join("overlay").join(format!("test-{tag}-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed)));
        let dp = Dataplane::load(&dir).unwrap_or_else(|e| panic!("loading the datapath into {}: {e}", dir.display()));
        TestDataplane { dp, dir }
    }
}

impl Drop for TestDataplane {
    fn drop(&mut self) {
        if let Err(e) = dataplane::remove_pins(&self.dir) {
            eprintln!("cleanup of {}: {e:?}", self.dir.display());
        }
    }
}

/// Frames of the kernel capture (tests/data/kernel-vxlan.pcap), in order.
pub fn kernel_frames() -> Vec<Vec<u8>> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/data/kernel-vxlan.pcap");
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut r = pcap_file::pcap::PcapReader::new(f).expect("a pcap file");
    let mut out = Vec::new();
    while let Some(p) = r.next_packet() {
        out.push(p.expect("a readable packet").data.into_owned());
    }
    out
}

pub fn outer_src(frame: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(frame[26], frame[27], frame[28], frame[29])
}

#[allow(unused_imports, reason = "not every test file builds frames")]
pub use overlay::lab::frames::*;

pub fn mac(s: &str) -> [u8; 6] {
    s.parse::<overlay::model::Mac>().expect("valid MAC").0
}


/// Runs `f` on a new thread inside network namespace `ns` (a thread's namespace is its own).
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> std::thread::JoinHandle<T> {
    let p = overlay::host::netlink::netns_path(ns);
    std::thread::spawn(move || {
        overlay::host::netlink::enter_netns(&p).expect("setns");
        f()
    })
}

/// A private certificate authority for the TLS store tests: its certificate and the
/// certificates it signs are written under one directory (keys with mode 0600).
pub struct TestCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    dir: PathBuf,
    /// The CA certificate (PEM).
    pub cert: PathBuf,
}

impl TestCa {
    pub fn new(dir: &std::path::Path, name: &str) -> Self {
        std::fs::create_dir_all(dir).expect("pki directory");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, format!("overlay test CA {name}"));
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign, rcgen::KeyUsagePurpose::DigitalSignature];
        let issuer = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().expect("CA key")).expect("CA certificate");
        let cert = dir.join(format!("{name}.pem"));
        std::fs::write(&cert, issuer.pem()).expect("write CA certificate");
        TestCa { issuer, dir: dir.to_path_buf(), cert }
    }

    /// A certificate with common name `cn` for `sans` (IP addresses or DNS names), good for
    /// server and client authentication, signed by this CA: (certificate, key) paths.
    pub fn issue(&self, cn: &str, sans: &[&str]) -> (PathBuf, PathBuf) {
        use std::os::unix::fs::PermissionsExt as _;
        let mut params = rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).expect("params");
        params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        let stem = format!("{}-{cn}", self.cert.file_stem().and_then(|s| s.to_str()).unwrap_or("ca"));
        let (cert_path, key_path) = (self.dir.join(format!("{stem}.pem")), self.dir.join(format!("{stem}-key.pem")));
        std::fs::write(&cert_path, cert.pem()).expect("write certificate");
        std::fs::write(&key_path, key.serialize_pem()).expect("write key");
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).expect("chmod key");
        (cert_path, key_path)
    }
}

/// Runs the simulation's store with TLS and client certificates from a fresh CA, and gives
/// every component of the simulation a valid client certificate (call before starting etcd).
pub fn secure_store(sim: &mut overlay::lab::sim::Sim) {
    let ca = TestCa::new(&sim.workdir.join("pki"), "ca");
    let (cert, key) = ca.issue("etcd", &[&sim.etcd_addr().ip().to_string()]);
    let (client_cert, client_key) = ca.issue("overlay", &[]);
    sim.secure_store(
        overlay::lab::sim::EtcdTls { cert, key, client_ca: ca.cert.clone() },
        overlay::source::store::Credentials { cacert: Some(ca.cert.clone()), cert: Some(client_cert), key: Some(client_key), ..Default::default() },
    );
}

/// A command's stdout and stderr, for messages.
pub fn text(o: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Runs the CLI on host `n` of `sim`; panics with its output unless it succeeds.
pub fn ok(sim: &overlay::lab::sim::Sim, n: usize, args: &[&str]) -> String {
    let o = sim.overlay(&sim.host_ns(n), args).expect("run overlay");
    assert!(o.status.success(), "overlay {} failed:\n{}", args.join(" "), text(&o));
    String::from_utf8_lossy(&o.stdout).to_string()
}
