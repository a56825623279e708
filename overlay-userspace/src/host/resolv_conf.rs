//! `/etc/netns/<ns>/resolv.conf` of named namespaces (which `ip netns exec` mounts over
//! `/etc/resolv.conf`): the container's resolver is its first network's gateway. Files are
//! marked with the agent that wrote them (its node and pin directory: `/etc/netns` is shared by
//! every agent on the machine, simulated clusters included); only marked files are replaced,
//! and only an agent's own are removed.
use std::{
    fs, io,
    net::Ipv4Addr,
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

/// Where `ip netns exec` finds per-namespace files.
pub const NETNS_ETC: &str = "/etc/netns";

fn marker(node: &str, pin_dir: &Path) -> String {
    format!("# written by the overlay agent of node {node} ({})", pin_dir.display())
}

/// What versions before the pin directory was part of the mark wrote.
fn legacy_marker(node: &str) -> String {
    format!("# written by the overlay agent of node {node}")
}

fn path(netns: &str) -> Option<PathBuf> {
    (!netns.contains('/') && !netns.is_empty()).then(|| PathBuf::from(NETNS_ETC).join(netns).join("resolv.conf"))
}

/// Points namespace `netns`'s resolver at `gateway` (named namespaces only; a path given by a
/// runtime gets its resolver from the runtime: CNI's result, Docker's own resolv.conf).
pub fn write(node: &str, pin_dir: &Path, netns: &str, gateway: Ipv4Addr) -> io::Result<()> {
    let Some(p) = path(netns) else { return Ok(()) };
    let text = format!("{}\nnameserver {gateway}\noptions ndots:0\n", marker(node, pin_dir));
    match fs::read_to_string(&p) {
        Ok(old) if old == text => return Ok(()),
        Ok(old) if !old.starts_with("# written by the overlay agent") => {
            return Err(io::Error::other(format!("{} exists and was not written by overlay: left alone", p.display())));
        }
        _ => {}
    }
    // Readable by the container's processes, whoever they run as; written by root only
    // (explicit modes: the agent's umask decides nothing).
    fs::DirBuilder::new().recursive(true).mode(0o755).create(p.parent().expect("a parent"))?;
    let tmp = p.with_extension("overlay-tmp");
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(0o644).open(&tmp)?;
    f.set_permissions(fs::Permissions::from_mode(0o644))?;
    io::Write::write_all(&mut f, text.as_bytes())?;
    drop(f);
    fs::rename(&tmp, &p)
}

/// Removes the files the agent of `node` with pins in `pin_dir` wrote (or an older version of
/// node `node`'s agent) for namespaces not in `keep`, and their directory when it is left
/// empty. Returns what failed.
pub fn sweep(node: &str, pin_dir: &Path, keep: &[&str]) -> Vec<String> {
    let mut errors = Vec::new();
    let Ok(rd) = fs::read_dir(NETNS_ETC) else { return errors };
    let marks = [format!("{}\n", marker(node, pin_dir)), format!("{}\n", legacy_marker(node))];
    for e in rd.flatten() {
        let ns = e.file_name().to_string_lossy().to_string();
        let p = e.path().join("resolv.conf");
        let ours = fs::read_to_string(&p).is_ok_and(|t| marks.iter().any(|m| t.starts_with(m)));
        if keep.contains(&ns.as_str()) || !ours {
            continue;
        }
        if let Err(err) = fs::remove_file(&p) {
            errors.push(format!("removing {}: {err}", p.display()));
        }
        let _ = fs::remove_dir(e.path());
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two agents of the same node name (two clusters on one machine) each sweep only their own
    /// files; a file of an older version is swept by its node's agent.
    #[test]
    fn agents_sweep_only_their_own_files() {
        if !nix_root() {
            eprintln!("skipped: needs root for {NETNS_ETC}");
            return;
        }
        let id = std::process::id();
        let (a, b, old) = (format!("ovl-rc-a-{id}"), format!("ovl-rc-b-{id}"), format!("ovl-rc-old-{id}"));
        let (pa, pb) = (Path::new("/sys/fs/bpf/overlay/x/node1"), Path::new("/sys/fs/bpf/overlay/y/node1"));
        let gw = Ipv4Addr::new(10, 0, 1, 1);
        write("node1", pa, &a, gw).expect("write a");
        write("node1", pb, &b, gw).expect("write b");
        let p_old = path(&old).expect("path");
        fs::create_dir_all(p_old.parent().expect("parent")).expect("dir");
        fs::write(&p_old, format!("{}\nnameserver {gw}\n", legacy_marker("node1"))).expect("legacy file");
        let errors = sweep("node1", pa, &[]);
        let (a_left, b_left, old_left) = (path(&a).expect("a").exists(), path(&b).expect("b").exists(), p_old.exists());
        let more = sweep("node1", pb, &[]);
        let b_gone = !path(&b).expect("b").exists();
        assert!(errors.is_empty() && more.is_empty(), "{errors:?} {more:?}");
        assert!(!a_left, "the agent's own file is swept");
        assert!(b_left, "another agent's file of the same node name is left alone");
        assert!(!old_left, "a file of an older version of the node's agent is swept");
        assert!(b_gone, "and the other agent sweeps its own");
    }

    fn nix_root() -> bool {
        // SAFETY: plain libc call.
        unsafe { libc::geteuid() == 0 }
    }
}
