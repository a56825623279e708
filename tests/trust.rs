//! The store with TLS and client certificates, and with etcd's own users: every component
//! reaches it with valid credentials, and a client without them is refused with a message that
//! names the file and the check (never a bare transport error). Real etcd, certificates made
//! inside the test (rcgen). The Docker and CNI plugins run over TLS in their own tests
//! (tests/docker.rs, tests/cni.rs).
mod support;

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use overlay::{
    lab::sim::{EtcdTls, Sim, wait_for},
    source::store::Credentials,
};
use support::*;

const TTL: u32 = 3;



/// The CLI on host 1 with exactly `creds` (no OVERLAY_STORE_* from the simulation): its error
/// output, asserting it failed.
fn refused(sim: &Sim, args: &[&str]) -> String {
    let o = Command::new("ip")
        .args(["netns", "exec", &sim.host_ns(1), OVERLAY_BIN])
        .args(args)
        .args(["--store", &sim.etcd_url()])
        .env_remove("OVERLAY_STORE")
        .env("OVERLAY_PIN_ROOT", &sim.pin_root)
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .output()
        .expect("run overlay");
    assert!(!o.status.success(), "overlay {} should have been refused:\n{}", args.join(" "), text(&o));
    String::from_utf8_lossy(&o.stderr).to_string()
}

fn attach(sim: &mut Sim, name: &str, n: usize, network: &str) -> (String, Ipv4Addr) {
    let ns = sim.add_ns(name).expect("namespace");
    let out = ok(sim, n, &["endpoint", "add", "--network", network, "--netns", &ns]);
    (ns, out.split_whitespace().nth(3).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("endpoint add prints the IP: {out}")))
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn every_component_reaches_a_tls_store_and_clients_without_valid_certificates_are_refused() {
    require_root();
    let mut sim = Sim::new("tls", Path::new(OVERLAY_BIN)).expect("simulation");
    let pki = sim.workdir.join("pki");
    let ca = TestCa::new(&pki, "ca");
    let etcd_ip = sim.etcd_addr().ip().to_string();
    let (server_cert, server_key) = ca.issue("etcd", &[&etcd_ip]);
    let (client_cert, client_key) = ca.issue("overlay", &[]);
    // Another CA, and a client certificate it signed: neither is trusted by the store.
    let other = TestCa::new(&pki, "other");
    let (rogue_cert, rogue_key) = other.issue("overlay", &[]);
    // A server certificate of the right CA for another address.
    let (misnamed_cert, misnamed_key) = ca.issue("elsewhere", &["192.0.2.1"]);
    sim.secure_store(
        EtcdTls { cert: server_cert, key: server_key, client_ca: ca.cert.clone() },
        Credentials { cacert: Some(ca.cert.clone()), cert: Some(client_cert.clone()), key: Some(client_key.clone()), ..Default::default() },
    );
    // CLI (network create), agents (register, watch) over TLS with client certificates.
    sim.start_store_cluster(2, TTL, "web").expect("a store cluster over TLS");
    let (c1, _) = attach(&mut sim, "c1", 1, "web");
    let (_c2, ip2) = attach(&mut sim, "c2", 2, "web");
    assert!(wait_for(Duration::from_secs(10), || sim.ping(&c1, ip2, 1, None)), "endpoints added over TLS reach each other:\n{}", sim.agent_logs(2));
    // Least privilege: the pins and the files the agent writes for containers.
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = |p: &Path| std::fs::metadata(p).map(|m| m.permissions().mode() & 0o777).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert_eq!(mode(&sim.pin_dir("node1")), 0o700, "a node's pin directory is root's only");
        let resolv = Path::new("/etc/netns").join(&c1).join("resolv.conf");
        assert!(wait_for(Duration::from_secs(10), || resolv.exists()), "the agent writes {}", resolv.display());
        assert_eq!(mode(&resolv), 0o644, "resolv.conf: readable by the container, written by root");
    }
    let log = std::fs::read_to_string(sim.workdir.join("etcd.log")).unwrap_or_default();
    assert!(log.contains("ClientTLS") || log.contains("client-cert-auth = true"), "etcd runs with client certificate authentication:\n{log}");

    let (ca_s, cert_s, key_s) = (path(&ca.cert), path(&client_cert), path(&client_key));
    // A plain client.
    let e = refused(&sim, &["network", "ls"]);
    assert!(e.contains("refused the connection") && e.contains("serves TLS and this client does not use it") && e.contains("pass --store-cacert"), "plain client: {e}");
    // The wrong CA.
    let e = refused(&sim, &["network", "ls", "--store-cacert", &path(&other.cert), "--store-cert", &cert_s, "--store-key", &key_s]);
    assert!(e.contains(&format!("not signed by the CA in --store-cacert {}", path(&other.cert))) && e.contains("unknown issuer"), "wrong CA: {e}");
    // No client certificate.
    let e = refused(&sim, &["network", "ls", "--store-cacert", &ca_s]);
    assert!(e.contains("etcd requires a client certificate: pass --store-cert and --store-key"), "no client certificate: {e}");
    // A client certificate from an untrusted CA.
    let e = refused(&sim, &["network", "ls", "--store-cacert", &ca_s, "--store-cert", &path(&rogue_cert), "--store-key", &path(&rogue_key)]);
    assert!(e.contains(&format!("etcd refused the client certificate --store-cert {}", path(&rogue_cert))), "untrusted client certificate: {e}");
    // Files that are not there, or not what they should be.
    let e = refused(&sim, &["network", "ls", "--store-cacert", "/nonexistent/ca.pem"]);
    assert!(e.contains("--store-cacert /nonexistent/ca.pem: cannot be read"), "{e}");
    let e = refused(&sim, &["network", "ls", "--store-cacert", &ca_s, "--store-cert", &cert_s, "--store-key", &cert_s]);
    assert!(e.contains(&format!("--store-key {cert_s}: holds no PEM private key")), "{e}");
    let e = refused(&sim, &["network", "ls", "--store-cacert", &ca_s, "--store-cert", &cert_s]);
    assert!(e.contains("--store-cert needs --store-key"), "{e}");

    // An agent given the wrong CA stops at once with the reason (no silent retry loop).
    let o = Command::new("timeout")
        .args(["20", OVERLAY_BIN, "agent", "--node", "node9", "--netns", &sim.host_ns(1), "--vtep", "192.168.50.1", "--store", &sim.etcd_url()])
        .args(["--store-cacert", &path(&other.cert), "--store-cert", &cert_s, "--store-key", &key_s, "--pin-root"])
        .arg(&sim.pin_root)
        .env_remove("OVERLAY_STORE")
        .stdin(Stdio::null())
        .output()
        .expect("agent");
    assert!(o.status.code() == Some(1) && text(&o).contains("not signed by the CA in --store-cacert"), "agent with the wrong CA: {:?}\n{}", o.status, text(&o));

    // The server's certificate must be valid for the address dialled: etcd restarted with a
    // certificate for another address is refused by name.
    sim.stop_etcd().expect("stop etcd");
    sim.secure_store(
        EtcdTls { cert: misnamed_cert, key: misnamed_key, client_ca: ca.cert.clone() },
        Credentials { cacert: Some(ca.cert.clone()), cert: Some(client_cert.clone()), key: Some(client_key.clone()), ..Default::default() },
    );
    sim.start_etcd().expect("etcd with a misnamed certificate");
    let e = refused(&sim, &["network", "ls", "--store-cacert", &ca_s, "--store-cert", &cert_s, "--store-key", &key_s]);
    assert!(e.contains("not valid for the address dialled") && e.contains("name mismatch"), "misnamed server: {e}");
}

#[test]
fn etcd_users_and_passwords() {
    require_root();
    let mut sim = Sim::new("auth", Path::new(OVERLAY_BIN)).expect("simulation");
    sim.build_underlay(2).expect("underlay");
    sim.start_etcd().expect("etcd");
    let write_secret = |name: &str, body: &str| -> PathBuf {
        use std::os::unix::fs::PermissionsExt as _;
        let p = sim.workdir.join(name);
        std::fs::write(&p, body).expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        p
    };
    let (pw, wrong) = (write_secret("overlay.pw", "s3cret-overlay\n"), write_secret("wrong.pw", "not-it\n"));
    // As an operator would with etcdctl: root, a role with read-write on the overlay's keys, a
    // user in that role, then authentication on.
    sim.with_etcd(|mut c| async move {
        let e = |e: etcd_client::Error| std::io::Error::other(e.to_string());
        c.user_add("root", "root-pw", None).await.map_err(e)?;
        c.user_grant_role("root", "root").await.map_err(e)?;
        c.role_add("overlay").await.map_err(e)?;
        let prefix = overlay::source::store::records::PREFIX;
        c.role_grant_permission("overlay", etcd_client::Permission::read_write(prefix).with_prefix()).await.map_err(e)?;
        c.user_add("overlay", "s3cret-overlay", None).await.map_err(e)?;
        c.user_grant_role("overlay", "overlay").await.map_err(e)?;
        c.auth_enable().await.map_err(e)?;
        Ok(())
    })
    .expect("users, role, auth enable");

    let e = refused(&sim, &["network", "ls"]);
    assert!(e.contains("etcd requires authentication: pass --store-user and --store-password-file"), "no user: {e}");
    let e = refused(&sim, &["network", "ls", "--store-user", "overlay", "--store-password-file", &path(&wrong)]);
    assert!(e.contains("etcd refused user \"overlay\": wrong user or password") && e.contains(&path(&wrong)), "wrong password: {e}");
    assert!(!e.contains("not-it"), "the password is never shown: {e}");
    let e = refused(&sim, &["network", "ls", "--store-user", "overlay"]);
    assert!(e.contains("--store-user and --store-password-file go together"), "{e}");

    sim.store_creds = Credentials { user: Some("overlay".into()), password_file: Some(pw), ..Default::default() };
    ok(&sim, 1, &["network", "create", "web"]);
    for n in 1..=2 {
        sim.spawn_store_agent(&format!("node{n}"), &sim.host_ns(n), overlay::lab::sim::host_vtep(n), TTL).expect("agent");
    }
    let up = wait_for(Duration::from_secs(20), || sim.overlay(&sim.host_ns(1), &["node", "ls"]).is_ok_and(|o| String::from_utf8_lossy(&o.stdout).matches(" up ").count() == 2));
    assert!(up, "agents register and keep their leases as user overlay:\n{}", sim.agent_logs(2));
    let (c1, _) = attach(&mut sim, "c1", 1, "web");
    let (_c2, ip2) = attach(&mut sim, "c2", 2, "web");
    assert!(wait_for(Duration::from_secs(10), || sim.ping(&c1, ip2, 1, None)), "endpoints reach each other:\n{}", sim.agent_logs(2));
    let logs = sim.agent_logs(2);
    assert!(!logs.contains("s3cret-overlay"), "the agents never log the password:\n{logs}");
}
