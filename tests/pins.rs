//! Pinned state across agent versions and mount namespaces, on the real kernel and bpffs: pins of
//! another layout (or a map of another shape) are refused and left as they are, older pins
//! without a layout record are adopted, `overlay down` removes pins of any layout, and an agent
//! orphaned under `ip netns exec` still pins into the host's bpffs (or refuses when it cannot
//! find it). Every pin directory, namespace and process made here is removed when the test
//! ends, pass or fail (guards).
mod support;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use aya::maps::{Array, HashMap, MapData, MapInfo};
use overlay::{
    dataplane::{self, Dataplane, DataplaneError, MAP_LAYOUT, PinMismatch},
    lab::sim::{self, Container, Sim, wait_for},
};
use overlay_common::{FdbEntry, FdbKey, PIN_LAYOUT, PinLayout};
use support::*;

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A unique pin directory `<bpffs>/overlay/test-<tag>-<pid>-<n>/<node>`, removed (with whatever
/// pins it holds) on drop.
struct PinDir {
    root: PathBuf,
    node: String,
    dir: PathBuf,
}

impl PinDir {
    fn new(tag: &str) -> Self {
        require_root();
        let root = dataplane::host_bpffs().expect("bpffs").join("overlay").join(format!("test-{tag}-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed)));
        let node = "node1".to_string();
        let dir = root.join(&node);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        PinDir { root, node, dir }
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if let Err(e) = dataplane::remove_pins(&self.dir) {
            eprintln!("cleanup of {}: {e:?}", self.dir.display());
        }
        let _ = std::fs::remove_dir(&self.root);
        dataplane::remove_pin_root_if_empty(&self.root);
        if !std::thread::panicking() {
            assert!(!self.root.exists(), "{} left behind", self.root.display());
        }
    }
}

/// A network namespace, deleted on drop.
struct NetNs(String);

impl NetNs {
    fn new(tag: &str) -> Self {
        let name = format!("ovpins{tag}{}x{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
        sim::ip(&["netns", "add", &name]).expect("netns add");
        NetNs(name)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Err(e) = sim::ip(&["netns", "del", &self.0]) {
            eprintln!("cleanup: {e}");
        }
    }
}

/// What a pin directory holds: each pin (path below it) and the kernel's id of the object, so
/// that a map replaced, added or removed shows.
fn snapshot(dir: &Path) -> BTreeMap<String, Option<u32>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())).flatten() {
            let rel = e.path().strip_prefix(dir).expect("below").display().to_string();
            if e.file_type().expect("type").is_dir() {
                out.insert(format!("{rel}/"), None);
                stack.push(e.path());
            } else {
                out.insert(rel, MapInfo::from_pin(e.path()).ok().map(|i| i.id()));
            }
        }
    }
    out
}

/// Pins a layout record saying `layout` at `dir/LAYOUT` (replacing one there).
fn pin_layout_record(dir: &Path, layout: u32) {
    let path = dir.join(MAP_LAYOUT);
    let _ = std::fs::remove_file(&path);
    let mut rec: Array<MapData, PinLayout> = Array::create(1, 0).expect("array map");
    rec.set(0, PinLayout { layout, version: 1 }, 0).expect("set");
    rec.pin(&path).expect("pin the record");
}

fn read_layout_record(dir: &Path) -> Option<PinLayout> {
    let data = MapData::from_pin(dir.join(MAP_LAYOUT)).ok()?;
    let arr: Array<MapData, PinLayout> = Array::try_from(aya::maps::Map::Array(data)).expect("an array of PinLayout");
    Some(arr.get(&0, 0).expect("record entry"))
}

/// The mismatches of an `IncompatiblePins` refusal, after checking its message says where, what
/// this agent expects and what to do.
fn refused(r: Result<Dataplane, DataplaneError>, pins: &PinDir) -> Vec<PinMismatch> {
    let e = match r {
        Ok(_) => panic!("expected {} to be refused, it was adopted", pins.dir.display()),
        Err(e) => e,
    };
    let msg = e.to_string();
    assert!(msg.contains(&pins.dir.display().to_string()), "the refusal names the pin directory: {msg}");
    assert!(msg.contains(&format!("expects pin layout {PIN_LAYOUT}")), "the refusal says which layout this agent expects: {msg}");
    let down = format!("overlay down --node {} --pin-root {}", pins.node, pins.root.display());
    assert!(msg.contains(&down), "the refusal says what to run ({down}): {msg}");
    match e {
        DataplaneError::IncompatiblePins { found, .. } => found,
        other => panic!("expected IncompatiblePins, got {other:?}"),
    }
}

/// A cluster file with one node (whose VTEP nobody holds) and one network.
fn idle_cluster_file(pins: &PinDir) -> PathBuf {
    let file = std::env::temp_dir().join(format!("{}.yaml", pins.root.file_name().expect("name").to_string_lossy()));
    std::fs::write(&file, "nodes:\n  - {name: node1, vtep: 192.168.77.1}\nnetworks:\n  - {name: n, vni: 4300, subnet: 10.0.3.0/24}\n").expect("write");
    file
}

#[test]
fn pins_of_another_layout_are_refused_and_left_untouched() {
    let pins = PinDir::new("lay");
    // A real directory, then its record rewritten as another agent version would have it.
    drop(Dataplane::load(&pins.dir).expect("first load"));
    assert_eq!(read_layout_record(&pins.dir), Some(PinLayout { layout: PIN_LAYOUT, version: 1 }), "a fresh load records its layout");
    pin_layout_record(&pins.dir, PIN_LAYOUT + 1);
    let before = snapshot(&pins.dir);

    let found = refused(Dataplane::load(&pins.dir), &pins);
    assert_eq!(found, vec![PinMismatch::Layout(PIN_LAYOUT + 1)], "refused for its layout alone");
    let found = refused(Dataplane::open_pinned(&pins.dir), &pins);
    assert_eq!(found, vec![PinMismatch::Layout(PIN_LAYOUT + 1)], "the CLI's read-only open refuses too");

    // The agent itself stops with the same message (in a namespace of its own, in case).
    let ns = NetNs::new("a");
    let file = idle_cluster_file(&pins);
    let out = Command::new(OVERLAY_BIN)
        .args(["agent", "--cluster", &file.display().to_string(), "--node", &pins.node, "--netns", &ns.0, "--dns-upstream", "203.0.113.53"])
        .arg("--pin-root")
        .arg(&pins.root)
        .stdin(Stdio::null())
        .output()
        .expect("run the agent");
    let _ = std::fs::remove_file(&file);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the agent must refuse the directory:\n{stderr}");
    assert!(stderr.contains(&format!("layout record LAYOUT says layout {}", PIN_LAYOUT + 1)) && stderr.contains("overlay down --node node1"), "the agent says why and what to do:\n{stderr}");
    assert_eq!(snapshot(&pins.dir), before, "nothing in the directory changed (no pin added, replaced or removed)");
}

#[test]
fn a_pinned_map_of_another_shape_is_refused_never_misread() {
    let pins = PinDir::new("shape");
    // FDB as a future version might have it: the same key, a value 8 bytes longer.
    const WIDE: usize = size_of::<FdbEntry>() + 8;
    let mut fdb: HashMap<MapData, FdbKey, [u8; WIDE]> = HashMap::create(1024, 0).expect("hash map");
    fdb.insert(FdbKey::new(4300, [2, 0, 0, 0, 0, 1]), [0xab; WIDE], 0).expect("insert");
    fdb.pin(pins.dir.join("FDB")).expect("pin FDB");
    let before = snapshot(&pins.dir);

    let expect_fdb = |found: &[PinMismatch]| {
        let fdb = found.iter().find_map(|m| match m {
            PinMismatch::Map { name, found, expected } if name == "FDB" => Some((*found, *expected)),
            _ => None,
        });
        let (found_shape, expected) = fdb.unwrap_or_else(|| panic!("FDB reported as differing: {found:?}"));
        assert_eq!(found_shape.value_size as usize, WIDE, "the pinned FDB's value size is reported");
        assert_eq!(expected.value_size as usize, size_of::<FdbEntry>(), "next to this agent's");
        assert_eq!(found_shape.max_entries, 1024, "and its entries");
    };
    // Without a record (an older agent's directory would be adopted if it matched: it does not).
    expect_fdb(&refused(Dataplane::load(&pins.dir), &pins));
    expect_fdb(&refused(Dataplane::open_pinned(&pins.dir), &pins));
    assert_eq!(snapshot(&pins.dir), before, "nothing changed");
    // With a record of this very layout (a layout change that forgot its bump): still refused.
    pin_layout_record(&pins.dir, PIN_LAYOUT);
    let before = snapshot(&pins.dir);
    let found = refused(Dataplane::load(&pins.dir), &pins);
    assert_eq!(found.len(), 1, "only FDB differs: {found:?}");
    expect_fdb(&found);
    assert_eq!(snapshot(&pins.dir), before, "nothing changed");
}

#[test]
fn pins_without_a_layout_record_are_adopted_and_recorded() {
    let pins = PinDir::new("old");
    let dp = Dataplane::load(&pins.dir).expect("first load");
    let key = FdbKey::new(4300, [2, 0, 0, 0, 0, 9]);
    drop(dp);
    // What an agent from before the record left: the same maps, no LAYOUT.
    {
        let data = MapData::from_pin(pins.dir.join("FDB")).expect("FDB pinned");
        let mut fdb: HashMap<MapData, FdbKey, FdbEntry> = HashMap::try_from(aya::maps::Map::HashMap(data)).expect("FDB");
        fdb.insert(key, FdbEntry::remote(0x0100_a8c0), 0).expect("insert");
    }
    std::fs::remove_file(pins.dir.join(MAP_LAYOUT)).expect("remove the record");
    let fdb_id = MapInfo::from_pin(pins.dir.join("FDB")).expect("info").id();

    let dp = Dataplane::open_pinned(&pins.dir).expect("the CLI reads an unrecorded directory whose maps match");
    drop(dp);
    assert_eq!(read_layout_record(&pins.dir), None, "a read-only open writes no record");
    let dp = Dataplane::load(&pins.dir).unwrap_or_else(|e| panic!("an older directory with matching maps is adopted: {e}"));
    assert_eq!(MapInfo::from_pin(pins.dir.join("FDB")).expect("info").id(), fdb_id, "the pinned FDB itself was reused, not replaced");
    assert_eq!(dp.fdb_entry(4300, [2, 0, 0, 0, 0, 9]).expect("lookup").map(|e| e.kind), Some(overlay_common::FDB_REMOTE), "its entries kept");
    assert_eq!(read_layout_record(&pins.dir), Some(PinLayout { layout: PIN_LAYOUT, version: 1 }), "and the layout recorded");
    drop(dp);
    drop(Dataplane::load(&pins.dir).expect("a recorded directory is adopted"));
}

#[test]
fn down_removes_pins_of_any_layout() {
    let pins = PinDir::new("down");
    drop(Dataplane::load(&pins.dir).expect("load"));
    // Another version's directory: another layout, a map of another shape, a map this agent
    // does not know, and a sub-directory of its own.
    pin_layout_record(&pins.dir, PIN_LAYOUT + 7);
    std::fs::remove_file(pins.dir.join("VNIS")).expect("unpin VNIS");
    let vnis: HashMap<MapData, u32, [u8; 64]> = HashMap::create(16, 0).expect("hash");
    vnis.pin(pins.dir.join("VNIS")).expect("pin");
    let future: Array<MapData, u64> = Array::create(4, 0).expect("array");
    future.pin(pins.dir.join("FUTURE")).expect("pin");
    std::fs::create_dir(pins.dir.join("extra")).expect("mkdir");
    let extra: Array<MapData, u32> = Array::create(1, 0).expect("array");
    extra.pin(pins.dir.join("extra").join("X")).expect("pin");
    assert!(matches!(Dataplane::load(&pins.dir), Err(DataplaneError::IncompatiblePins { .. })), "sanity: this directory is refused");

    // In a namespace of its own: down also deletes the node's veths and nftables table.
    let ns = NetNs::new("d");
    let out = Command::new(OVERLAY_BIN)
        .args(["down", "--node", &pins.node, "--netns", &ns.0])
        .arg("--pin-root")
        .arg(&pins.root)
        .stdin(Stdio::null())
        .output()
        .expect("run down");
    assert!(out.status.success(), "down removes any layout without refusing:\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(!pins.dir.exists(), "the pin directory is gone: {:?}", pins.dir.exists().then(|| snapshot(&pins.dir)));
}

/// An agent started under `ip netns exec` whose parent exits, stopped by its PID on drop.
struct Orphan {
    pid: i32,
}

impl Orphan {
    fn alive(&self) -> bool {
        // A zombie (not yet reaped by whoever adopted it) has exited.
        std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
            .is_ok_and(|s| s.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')))
    }
}

impl Drop for Orphan {
    fn drop(&mut self) {
        // SAFETY: signalling the process this test started, by its PID.
        unsafe { libc::kill(self.pid, libc::SIGTERM) };
        if !wait_for(Duration::from_secs(5), || !self.alive()) {
            // SAFETY: as above.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
            wait_for(Duration::from_secs(5), || !self.alive());
        }
    }
}

fn mount_ns(pid: &str) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/ns/mnt")).unwrap_or_else(|e| panic!("mount namespace of {pid}: {e}"))
}

#[test]
fn an_orphaned_agent_under_ip_netns_exec_pins_into_the_hosts_bpffs() {
    require_root();
    let mut sim = Sim::new("orph", Path::new(OVERLAY_BIN)).expect("simulation");
    sim.build_underlay(1).expect("underlay");
    let web = Container { name: "web".into(), network: "nginx-net", node: 1, ip: "10.0.1.2".parse().expect("ip"), netns: sim.add_ns("web").expect("ns") };
    let file = sim.write_file("cluster.yaml", &sim::cluster_yaml(1, std::slice::from_ref(&web), &[], "")).expect("file");
    let (pidfile, log) = (sim.workdir.join("agent.pid"), sim.agent_log("node1"));
    // The shell starts the agent after a pause in a background subshell (which becomes the
    // agent: `exec`) and exits at once: the agent starts with no ancestor left in the host's
    // mount namespace, in the private one `ip netns exec` made (with a fresh /sys).
    let script = format!(
        "(sleep 0.5; exec {bin} agent --cluster {file} --node node1 --pin-root {root} --dns-upstream 203.0.113.53 >>{log} 2>&1) & echo $! >{pidfile}",
        bin = OVERLAY_BIN,
        file = file.display(),
        root = sim.pin_root.display(),
        log = log.display(),
        pidfile = pidfile.display(),
    );
    let host = sim.host_ns(1);
    let st = Command::new("ip").args(["netns", "exec", &host, "sh", "-c", &script]).stdin(Stdio::null()).status().expect("sh");
    assert!(st.success(), "the shell started the agent");
    let pid: i32 = std::fs::read_to_string(&pidfile).expect("pid file").trim().parse().expect("a PID");
    let agent = Orphan { pid };
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();

    assert!(wait_for(Duration::from_secs(20), || Dataplane::open_pinned(&sim.pin_dir("node1")).is_ok()), "the orphaned agent's pins are in the host's bpffs, seen from here:\n{}", logs());
    assert!(agent.alive(), "the agent runs:\n{}", logs());
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let ppid: u32 = stat.rsplit_once(')').expect("stat").1.split_whitespace().nth(1).expect("ppid").parse().expect("ppid");
    assert_ne!(ppid, std::process::id(), "the agent was orphaned (reparented), not our child");
    assert_eq!(mount_ns(&pid.to_string()), mount_ns("self"), "it joined the host's mount namespace");
    assert!(wait_for(Duration::from_secs(20), || sim.has_address(&web.netns, web.ip)), "and works: web wired:\n{}", logs());
    // The CLI (itself under `ip netns exec`) finds the same pins.
    let out = sim.overlay(&host, &["stats", "--json", "--node", "node1"]).expect("stats");
    assert!(out.status.success(), "overlay stats finds the orphan's pins: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("stats --json is JSON");
    drop(agent);
    assert!(Dataplane::open_pinned(&sim.pin_dir("node1")).is_ok(), "the pins outlive the agent");
    let _ = std::fs::remove_file(&pidfile);
}

#[test]
fn without_the_hosts_bpffs_the_agent_refuses_rather_than_pin_privately() {
    require_root();
    let ns = NetNs::new("p");
    let pins = PinDir::new("priv");
    let file = idle_cluster_file(&pins);
    // A PID and mount namespace where /sys/fs/bpf is a tmpfs (no process there sees a bpffs),
    // and the agent in a further mount namespace of its own, as `ip netns exec` would make it:
    // nothing to join, and not the host's own namespace either.
    let script = format!(
        "mount -t tmpfs none /sys/fs/bpf && timeout 20 unshare --mount {bin} agent --cluster {file} --node {node} --netns {ns} --dns-upstream 203.0.113.53 --pin-root {root}",
        bin = OVERLAY_BIN,
        file = file.display(),
        node = pins.node,
        ns = ns.0,
        root = pins.root.display(),
    );
    let out = Command::new("unshare").args(["--pid", "--fork", "--mount-proc", "--mount", "sh", "-c", &script]).stdin(Stdio::null()).output().expect("unshare");
    let _ = std::fs::remove_file(&file);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the agent must refuse:\n{stderr}");
    assert!(stderr.contains("private mount namespace") && stderr.contains("--netns NAME"), "it says why and what to do:\n{stderr}");
    assert_eq!(snapshot(&pins.dir), BTreeMap::new(), "and nothing was pinned into it");
}
