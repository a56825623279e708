//! DNS questions to the gateway for overlay names, answered in the datapath: [`question`] parses
//! a plain query (one question, no other records, UDP, a name that fits the name table) into
//! the table's key; [`reply`] turns the query into the answer in place and the egress program
//! sends it back into the container. Anything else (other types, EDNS, TCP, compression,
//! malformed or unusual queries, unknown names) is the agent's resolver's.
use aya_ebpf::{
    helpers::{bpf_get_prandom_u32, bpf_skb_change_tail},
    programs::TcContext,
};
use overlay_common::{
    DNS_ADDRS_MAX, DNS_NAME_MAX, DNS_TTL, EndpointInfo, NameEntry, Reason,
    wire::{ETH_HLEN, IPPROTO_UDP, IPV4_HLEN, OUTER_TTL, UDP_HLEN},
};

use crate::maps::DNS_KEY;

const IP_OFF: usize = ETH_HLEN;
const UDP_OFF: usize = ETH_HLEN + IPV4_HLEN;
const DNS_OFF: usize = UDP_OFF + UDP_HLEN;
const DNS_HLEN: usize = 12;
const QNAME_OFF: usize = DNS_OFF + DNS_HLEN;
/// One A record: name pointer to the question, type, class, TTL, length, address.
const ANSWER_LEN: usize = 16;
const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;

/// A question the datapath may answer; its name table key is in [`DNS_KEY`].
pub struct Question {
    pub qtype: u16,
    /// Wire length of the name (labels and the final zero).
    pub name_len: u32,
    /// The query's RD bit, echoed in the answer.
    pub rd: u8,
}

/// The question of a plain A or AAAA query whose name fits the table, with its key written to
/// [`DNS_KEY`]; or `None`. The caller checked: IPv4 without options, UDP, not a fragment,
/// destination port 53.
#[inline(always)]
pub fn question(ctx: &TcContext, vni: u32) -> Option<Question> {
    let len = ctx.len() as usize;
    let hdr: [u8; DNS_HLEN] = ctx.load(DNS_OFF).ok()?;
    // QR 0 and opcode QUERY; exactly one question and nothing else.
    if hdr[2] & 0xf8 != 0 || hdr[4..12] != [0, 1, 0, 0, 0, 0, 0, 0] {
        return None;
    }
    let udp_len: [u8; 2] = ctx.load(UDP_OFF + 4).ok()?;
    if u16::from_be_bytes(udp_len) as usize != len.checked_sub(UDP_OFF)? {
        return None;
    }
    // The key is built in a per-CPU scratch slot: no large value on the BPF stack.
    let key = DNS_KEY.get_ptr_mut(0)?;
    // SAFETY: a per-CPU slot of this program; nothing else runs on this CPU meanwhile.
    unsafe { (*key).vni = vni };
    let name = unsafe { core::ptr::addr_of_mut!((*key).name) } as *mut u8;
    // Copy the name lowercased, checking its labels: lengths only (a compression pointer in a
    // query is malformed), ending with the root label within the table's key size.
    let mut next_label = 0usize;
    let mut end = None;
    for i in 0..DNS_NAME_MAX {
        let mut b: u8 = ctx.load(QNAME_OFF + i).ok()?;
        if i == next_label {
            if b == 0 {
                // SAFETY: i < DNS_NAME_MAX.
                unsafe { name.add(i).write_volatile(0) };
                end = Some(i);
                break;
            }
            if b & 0xc0 != 0 {
                return None;
            }
            next_label = i + b as usize + 1;
        } else if b.is_ascii_uppercase() {
            b += 32;
        }
        // SAFETY: i < DNS_NAME_MAX, inside the key's name.
        unsafe { name.add(i).write_volatile(b) };
    }
    let name_len = end? + 1;
    for i in 0..DNS_NAME_MAX {
        if i >= name_len {
            // SAFETY: i < DNS_NAME_MAX. Volatile: no memset call in a BPF program.
            unsafe { name.add(i).write_volatile(0) };
        }
    }
    // QTYPE and QCLASS end the packet.
    if QNAME_OFF + name_len + 4 != len {
        return None;
    }
    let tc: [u8; 4] = ctx.load(QNAME_OFF + name_len).ok()?;
    let qtype = u16::from_be_bytes([tc[0], tc[1]]);
    if u16::from_be_bytes([tc[2], tc[3]]) != CLASS_IN || (qtype != TYPE_A && qtype != TYPE_AAAA) {
        return None;
    }
    Some(Question { qtype, name_len: name_len as u32, rd: hdr[2] & 0x01 })
}

/// One's-complement checksum of a 20-byte IPv4 header.
#[inline(always)]
fn ip_checksum(h: &[u8; IPV4_HLEN]) -> u16 {
    let mut sum: u32 = 0;
    for i in 0..IPV4_HLEN / 2 {
        sum += u16::from_be_bytes([h[2 * i], h[2 * i + 1]]) as u32;
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// Turns the query into its answer, in place: A records for `entry` (in a random rotation, DNS
/// round robin), none for AAAA; addresses, ports and MACs swapped (from the gateway back to the
/// endpoint). The caller redirects it into the container.
#[inline(always)]
pub fn reply(ctx: &TcContext, ep: &EndpointInfo, gw_mac: [u8; 6], q: &Question, entry: &NameEntry) -> Result<(), Reason> {
    let count = if q.qtype == TYPE_A { entry.count.min(DNS_ADDRS_MAX as u32) } else { 0 };
    let old_len = ctx.len() as usize;
    let new_len = old_len + ANSWER_LEN * count as usize;
    if count > 0 {
        // SAFETY: plain helper call on this program's skb.
        if unsafe { bpf_skb_change_tail(ctx.skb.skb, new_len as u32, 0) } != 0 {
            return Err(Reason::AdjustFailed);
        }
    }
    let ans_off = QNAME_OFF + q.name_len as usize + 4;
    // SAFETY: plain helper call.
    let r = unsafe { bpf_get_prandom_u32() };
    let ttl = DNS_TTL.to_be_bytes();
    // Address k goes to answer slot (k + r) mod count: a random rotation (DNS round robin),
    // with the array index a plain loop counter and the rotation only in the packet offset.
    for k in 0..DNS_ADDRS_MAX {
        if k as u32 >= count {
            break;
        }
        let addr = entry.addrs.get(k).ok_or(Reason::Truncated)?.to_ne_bytes();
        let slot = (k as u32 + r) % count;
        let rr: [u8; ANSWER_LEN] = [
            0xc0, 0x0c, 0, TYPE_A as u8, 0, CLASS_IN as u8, ttl[0], ttl[1], ttl[2], ttl[3], 0, 4, addr[0], addr[1], addr[2], addr[3],
        ];
        ctx.store(ans_off + ANSWER_LEN * slot as usize, &rr, 0).map_err(|_| Reason::AdjustFailed)?;
    }
    // DNS header: a response, authoritative, recursion available, NOERROR, `count` answers.
    let flags: [u8; 2] = [0x84 | q.rd, 0x80];
    ctx.store(DNS_OFF + 2, &flags, 0).map_err(|_| Reason::AdjustFailed)?;
    ctx.store(DNS_OFF + 6, &(count as u16).to_be_bytes(), 0).map_err(|_| Reason::AdjustFailed)?;
    // UDP: from port 53 back to the asking port, new length, no checksum (allowed for IPv4).
    let ports: [u8; 4] = ctx.load(UDP_OFF).map_err(|_| Reason::Truncated)?;
    let udp_len = ((new_len - UDP_OFF) as u16).to_be_bytes();
    let udp: [u8; 8] = [ports[2], ports[3], ports[0], ports[1], udp_len[0], udp_len[1], 0, 0];
    ctx.store(UDP_OFF, &udp, 0).map_err(|_| Reason::AdjustFailed)?;
    // IPv4: from the gateway back to the endpoint.
    let addrs: [u8; 8] = ctx.load(IP_OFF + 12).map_err(|_| Reason::Truncated)?;
    let total = ((new_len - IP_OFF) as u16).to_be_bytes();
    let mut ip: [u8; IPV4_HLEN] = [
        0x45, 0, total[0], total[1], 0, 0, 0x40, 0, OUTER_TTL, IPPROTO_UDP, 0, 0, addrs[4], addrs[5], addrs[6], addrs[7], addrs[0],
        addrs[1], addrs[2], addrs[3],
    ];
    let c = ip_checksum(&ip).to_be_bytes();
    ip[10] = c[0];
    ip[11] = c[1];
    ctx.store(IP_OFF, &ip, 0).map_err(|_| Reason::AdjustFailed)?;
    // Ethernet: from the gateway's MAC to the endpoint's.
    let m = ep.mac;
    let eth: [u8; 12] = [m[0], m[1], m[2], m[3], m[4], m[5], gw_mac[0], gw_mac[1], gw_mac[2], gw_mac[3], gw_mac[4], gw_mac[5]];
    ctx.store(0, &eth, 0).map_err(|_| Reason::AdjustFailed)?;
    Ok(())
}
