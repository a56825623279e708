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
/// destination port 53. Read straight from the packet (a helper call per field cost most of an
/// answer's time); a packet whose bytes are not all in the linear area is the agent's.
#[inline(always)]
pub fn question(ctx: &TcContext, vni: u32) -> Option<Question> {
    let len = ctx.len() as usize;
    let (data, data_end) = (ctx.data(), ctx.data_end());
    if data_end - data != len || data + QNAME_OFF > data_end {
        return None;
    }
    let hdr = data + DNS_OFF;
    // SAFETY: the DNS header is inside the bounds checked above.
    let (flags, counts, udp_len) = unsafe {
        (
            *((hdr + 2) as *const u8),
            core::ptr::read_unaligned((hdr + 4) as *const [u8; 8]),
            u16::from_be(core::ptr::read_unaligned((data + UDP_OFF + 4) as *const u16)),
        )
    };
    // QR 0 and opcode QUERY; exactly one question and nothing else; the UDP length is the packet's.
    if flags & 0xf8 != 0 || counts != [0, 1, 0, 0, 0, 0, 0, 0] || udp_len as usize != len - UDP_OFF {
        return None;
    }
    // The name runs from the question's start to the QTYPE and QCLASS that end the packet;
    // with its final zero it must fit the table's key.
    let name_len = len.checked_sub(QNAME_OFF + 4)?;
    if name_len == 0 || name_len > DNS_NAME_MAX {
        return None;
    }
    // The key is built in a per-CPU scratch slot: no large value on the BPF stack.
    let key = DNS_KEY.get_ptr_mut(0)?;
    // SAFETY: a per-CPU slot of this program; nothing else runs on this CPU meanwhile.
    unsafe { (*key).vni = vni };
    let name = unsafe { core::ptr::addr_of_mut!((*key).name) } as *mut u8;
    // Zero-padded: sixteen aligned word stores (the name follows the u32 VNI); volatile, so no
    // memset call in a BPF program.
    for w in 0..DNS_NAME_MAX / 4 {
        // SAFETY: inside the key's name, 4-byte aligned.
        unsafe { (name.add(4 * w) as *mut u32).write_volatile(0) };
    }
    // Copy the name lowercased, checking its labels: lengths only (a compression pointer in a
    // query is malformed), the root label exactly at the name's end.
    let mut next_label = 0usize;
    let mut end = None;
    for i in 0..DNS_NAME_MAX {
        let p = data + QNAME_OFF + i;
        if i >= name_len || p + 1 > data_end {
            break;
        }
        // SAFETY: p is inside the packet (checked just above).
        let mut b = unsafe { *(p as *const u8) };
        if i == next_label {
            if b == 0 {
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
    if end? + 1 != name_len {
        return None;
    }
    // QTYPE and QCLASS end the packet. The mask only tells the verifier the bound checked above.
    let tc = data + QNAME_OFF + (name_len & 0x7f);
    if tc + 4 > data_end {
        return None;
    }
    // SAFETY: inside the packet (checked just above).
    let tc = unsafe { core::ptr::read_unaligned(tc as *const [u8; 4]) };
    let qtype = u16::from_be_bytes([tc[0], tc[1]]);
    if u16::from_be_bytes([tc[2], tc[3]]) != CLASS_IN || (qtype != TYPE_A && qtype != TYPE_AAAA) {
        return None;
    }
    Some(Question { qtype, name_len: name_len as u32, rd: flags & 0x01 })
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
/// endpoint). The caller sends it back into the container. Written straight into the packet
/// (after the tail grows, the skb stays linear: [`question`] only takes linear packets).
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
    // Packet pointers are derived again after the helper moved the data.
    let (data, data_end) = (ctx.data(), ctx.data_end());
    if data + QNAME_OFF > data_end {
        return Err(Reason::Truncated);
    }
    // The masks only tell the verifier the bounds question() checked.
    let ans_off = QNAME_OFF + ((q.name_len as usize) & 0x7f) + 4;
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
        let slot = ((k as u32 + r) % count) as usize & (DNS_ADDRS_MAX - 1);
        let p = data + ans_off + ANSWER_LEN * slot;
        if p + ANSWER_LEN > data_end {
            return Err(Reason::Truncated);
        }
        let rr: [u8; ANSWER_LEN] = [
            0xc0, 0x0c, 0, TYPE_A as u8, 0, CLASS_IN as u8, ttl[0], ttl[1], ttl[2], ttl[3], 0, 4, addr[0], addr[1], addr[2], addr[3],
        ];
        // SAFETY: inside the packet (checked just above).
        unsafe { core::ptr::write_unaligned(p as *mut [u8; ANSWER_LEN], rr) };
    }
    // SAFETY: every offset below is inside the first QNAME_OFF bytes, checked above.
    unsafe {
        // DNS header: a response, authoritative, recursion available, NOERROR, `count` answers.
        core::ptr::write_unaligned((data + DNS_OFF + 2) as *mut [u8; 2], [0x84 | q.rd, 0x80]);
        core::ptr::write_unaligned((data + DNS_OFF + 6) as *mut [u8; 2], (count as u16).to_be_bytes());
        // UDP: from port 53 back to the asking port, new length, no checksum (allowed for IPv4).
        let ports = core::ptr::read_unaligned((data + UDP_OFF) as *const [u8; 4]);
        let udp_len = ((new_len - UDP_OFF) as u16).to_be_bytes();
        let udp: [u8; 8] = [ports[2], ports[3], ports[0], ports[1], udp_len[0], udp_len[1], 0, 0];
        core::ptr::write_unaligned((data + UDP_OFF) as *mut [u8; 8], udp);
        // IPv4: from the gateway back to the endpoint.
        let addrs = core::ptr::read_unaligned((data + IP_OFF + 12) as *const [u8; 8]);
        let total = ((new_len - IP_OFF) as u16).to_be_bytes();
        let mut ip: [u8; IPV4_HLEN] = [
            0x45, 0, total[0], total[1], 0, 0, 0x40, 0, OUTER_TTL, IPPROTO_UDP, 0, 0, addrs[4], addrs[5], addrs[6], addrs[7],
            addrs[0], addrs[1], addrs[2], addrs[3],
        ];
        let c = ip_checksum(&ip).to_be_bytes();
        ip[10] = c[0];
        ip[11] = c[1];
        core::ptr::write_unaligned((data + IP_OFF) as *mut [u8; IPV4_HLEN], ip);
        // Ethernet: from the gateway's MAC to the endpoint's.
        let m = ep.mac;
        let eth: [u8; 12] = [m[0], m[1], m[2], m[3], m[4], m[5], gw_mac[0], gw_mac[1], gw_mac[2], gw_mac[3], gw_mac[4], gw_mac[5]];
        core::ptr::write_unaligned(data as *mut [u8; 12], eth);
    }
    Ok(())
}
