//! Maglev consistent hashing (Eisenbud et al., NSDI 2016), as Cilium and Katran balance: every
//! backend gets a permutation of the table's slots from two hashes of its identity, and the
//! backends take turns claiming their next free slot until the table is full. Each backend owns
//! about the same share of slots, and a change of the backend set moves few slots. The table
//! depends only on the backends (not on the node or the order they are given in), so every node
//! builds the same one and a flow picks the same task whichever node receives it.
use overlay_common::{Backend, MAGLEV_M};

/// FNV-1a, 64 bits, with a seed mixed in first: a fixed, portable hash (the same on every node
/// and every build, unlike std's `DefaultHasher`).
fn fnv(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed.wrapping_mul(0x100_0000_01b3);
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// The lookup table for `backends` (at most `MAX_BACKENDS`): [`MAGLEV_M`] entries, each the
/// index of a backend in `backends`. Empty when there is no backend.
pub fn table(backends: &[Backend]) -> Vec<u32> {
    let m = MAGLEV_M as u64;
    if backends.is_empty() {
        return Vec::new();
    }
    // Each backend's permutation, from its identity (address and port, as in the packet).
    let perms: Vec<(u64, u64)> = backends
        .iter()
        .map(|b| {
            let id = [b.ip.to_ne_bytes().as_slice(), b.port.to_ne_bytes().as_slice()].concat();
            (fnv(0x6d61_676c, &id) % m, fnv(0x6576_6f6c, &id) % (m - 1) + 1)
        })
        .collect();
    // Turns are taken in a canonical order (address, port), not the given one.
    let mut order: Vec<usize> = (0..backends.len()).collect();
    order.sort_by_key(|&i| (u32::from_be(backends[i].ip), u16::from_be(backends[i].port)));
    let mut next = vec![0u64; backends.len()];
    let mut entry = vec![u32::MAX; m as usize];
    let mut filled = 0;
    'fill: loop {
        for &i in &order {
            let (offset, skip) = perms[i];
            let mut c = (offset + next[i] * skip) % m;
            while entry[c as usize] != u32::MAX {
                next[i] += 1;
                c = (offset + next[i] * skip) % m;
            }
            entry[c as usize] = i as u32;
            next[i] += 1;
            filled += 1;
            if filled == m {
                break 'fill;
            }
        }
    }
    entry
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(last: u8) -> Backend {
        Backend { ip: u32::from_ne_bytes([10, 0, 1, last]), port: 8080u16.to_be(), _pad: 0 }
    }

    #[test]
    fn shares_are_even_and_changes_move_few_slots() {
        let four: Vec<Backend> = (2..6).map(b).collect();
        let t = table(&four);
        assert_eq!(t.len(), MAGLEV_M as usize);
        let fair = MAGLEV_M as f64 / 4.0;
        for i in 0..4 {
            let n = t.iter().filter(|x| **x == i).count() as f64;
            assert!((n - fair).abs() / fair < 0.05, "backend {i} owns {n} slots of {}", MAGLEV_M);
        }
        // Removing one backend: only its slots move (Maglev keeps most of the others').
        let three: Vec<Backend> = (2..5).map(b).collect();
        let u = table(&three);
        let kept = t.iter().zip(&u).filter(|(a, c)| a == c && **a != 3).count();
        let before = t.iter().filter(|x| **x != 3).count();
        assert!(kept as f64 / before as f64 > 0.9, "{kept} of {before} slots of the remaining backends stayed");
        // The same set in another order gives the same assignment (indices follow the order).
        let mut rev = four.clone();
        rev.reverse();
        let r = table(&rev);
        assert!(t.iter().zip(&r).all(|(a, c)| four[*a as usize] == rev[*c as usize]), "order does not matter");
        assert!(table(&[]).is_empty());
    }
}
