//! `/etc/netns/<ns>/resolv.conf` of named namespaces (which `ip netns exec` mounts over
//! `/etc/resolv.conf`): the container's resolver is its first network's gateway. Files are
//! marked with the node that wrote them; only marked files are replaced or removed.
use std::{fs, io, net::Ipv4Addr, path::PathBuf};

/// Where `ip netns exec` finds per-namespace files.
pub const NETNS_ETC: &str = "/etc/netns";

fn marker(node: &str) -> String {
    format!("# written by the overlay agent of node {node}")
}

fn path(netns: &str) -> Option<PathBuf> {
    (!netns.contains('/') && !netns.is_empty()).then(|| PathBuf::from(NETNS_ETC).join(netns).join("resolv.conf"))
}

/// Points namespace `netns`'s resolver at `gateway` (named namespaces only; a path given by a
/// runtime gets its resolver from the runtime: CNI's result, Docker's own resolv.conf).
pub fn write(node: &str, netns: &str, gateway: Ipv4Addr) -> io::Result<()> {
    let Some(p) = path(netns) else { return Ok(()) };
    let text = format!("{}\nnameserver {gateway}\noptions ndots:0\n", marker(node));
    match fs::read_to_string(&p) {
        Ok(old) if old == text => return Ok(()),
        Ok(old) if !old.starts_with("# written by the overlay agent") => {
            return Err(io::Error::other(format!("{} exists and was not written by overlay: left alone", p.display())));
        }
        _ => {}
    }
    fs::create_dir_all(p.parent().expect("a parent"))?;
    let tmp = p.with_extension("overlay-tmp");
    fs::write(&tmp, text)?;
    fs::rename(&tmp, &p)
}

/// Removes the files node `node` wrote for namespaces not in `keep` (and their directory when
/// it is left empty). Returns what failed.
pub fn sweep(node: &str, keep: &[&str]) -> Vec<String> {
    let mut errors = Vec::new();
    let Ok(rd) = fs::read_dir(NETNS_ETC) else { return errors };
    let mark = marker(node);
    for e in rd.flatten() {
        let ns = e.file_name().to_string_lossy().to_string();
        let p = e.path().join("resolv.conf");
        if keep.contains(&ns.as_str()) || !fs::read_to_string(&p).is_ok_and(|t| t.starts_with(&format!("{mark}\n"))) {
            continue;
        }
        if let Err(err) = fs::remove_file(&p) {
            errors.push(format!("removing {}: {err}", p.display()));
        }
        let _ = fs::remove_dir(e.path());
    }
    errors
}
