//! Frames sent by a local endpoint: anti-spoofing, ARP answers, local switching, encapsulation.
use aya_ebpf::{
    bindings::{
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC,
        BPF_F_ADJ_ROOM_ENCAP_L2_ETH, BPF_F_ADJ_ROOM_ENCAP_L3_IPV4,
        BPF_F_ADJ_ROOM_ENCAP_L4_UDP, BPF_F_ADJ_ROOM_FIXED_GSO, TC_ACT_REDIRECT,
    },
    helpers::{bpf_get_hash_recalc, bpf_redirect, bpf_redirect_neigh, bpf_redirect_peer},
    programs::TcContext,
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};
use overlay_common::{
    EndpointInfo, FDB_LOCAL, FdbKey, NeighKey, NodeConfig, Reason,
    wire::{
        ARP_OP_REPLY, ARP_OP_REQUEST, ETH_HLEN, ETH_P_ARP, ETH_P_IP, IPPROTO_UDP, IPV4_HLEN,
        OUTER_TTL, UDP_HLEN, VXLAN_ENCAP_LEN, VXLAN_FLAG_I, VXLAN_HLEN, vxlan_vni_field,
    },
};

use crate::{
    arp::EthArp,
    eth, ipv4,
    maps::{CONFIG, ENDPOINTS, FDB, NEIGH},
    ptr::{ptr_at, ptr_at_mut},
    stats::Verdict,
};

/// `BPF_F_ADJ_ROOM_ENCAP_L2(len)`: the inner L2 header length, in the top byte of the flags.
const fn encap_l2_len(len: u64) -> u64 {
    (len & 0xff) << 56
}

/// Encapsulation flags: the kernel records the tunnel (outer IPv4/UDP, inner Ethernet) so that
/// GSO/TSO of encapsulated TCP keeps working; FIXED_GSO keeps the inner MSS, which the 1450-byte
/// container MTU already leaves room for.
const ENCAP_FLAGS: u64 = (BPF_F_ADJ_ROOM_FIXED_GSO
    | BPF_F_ADJ_ROOM_ENCAP_L3_IPV4
    | BPF_F_ADJ_ROOM_ENCAP_L4_UDP
    | BPF_F_ADJ_ROOM_ENCAP_L2_ETH) as u64
    | encap_l2_len(ETH_HLEN as u64);

#[inline(always)]
pub fn try_egress(ctx: &TcContext) -> Result<Verdict, Reason> {
    // SAFETY: the context pointer is valid for the program's lifetime.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let ep = *unsafe { ENDPOINTS.get(ifindex) }.ok_or(Reason::NoEndpoint)?;
    let eth = ptr_at::<EthHdr>(ctx, 0)?;
    // SAFETY: bounds checked by ptr_at.
    let (src, dst, ethertype) = unsafe { ((*eth).src_addr, (*eth).dst_addr, eth::ethertype(&*eth)) };
    if src != ep.mac {
        return Err(Reason::SpoofedMac);
    }
    if eth::is_vlan(ethertype) {
        return Err(Reason::Vlan);
    }
    if ethertype == ETH_P_ARP {
        return answer_arp(ctx, &ep, ifindex);
    }
    if ethertype != ETH_P_IP {
        return Err(Reason::UnsupportedEthertype);
    }
    let ip = ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN)?;
    // SAFETY: bounds checked by ptr_at.
    if u32::from_ne_bytes(unsafe { (*ip).src_addr }) != ep.ip {
        return Err(Reason::SpoofedIp);
    }
    if eth::is_group(&dst) {
        return Err(Reason::Broadcast);
    }
    let entry = *unsafe { FDB.get(FdbKey::new(ep.vni, dst)) }.ok_or(Reason::UnknownDestination)?;
    let len = ctx.len();
    if entry.kind == FDB_LOCAL {
        // SAFETY: plain helper call.
        let action = unsafe { bpf_redirect_peer(entry.ifindex, 0) } as i32;
        if action != TC_ACT_REDIRECT as i32 {
            return Err(Reason::RedirectFailed);
        }
        return Ok(Verdict { action, reason: Reason::FwdLocal, vni: ep.vni, inner_len: len });
    }
    let cfg = *CONFIG.get(0).ok_or(Reason::NoConfig)?;
    if cfg.vtep == 0 {
        return Err(Reason::NoConfig);
    }
    encapsulate(ctx, &cfg, ep.vni, entry.vtep, len)?;
    // Outer L2 comes from the kernel's neighbour table after a FIB lookup of the remote VTEP.
    // SAFETY: plain helper call; a null nexthop asks the kernel to look the route up.
    let action =
        unsafe { bpf_redirect_neigh(cfg.underlay_ifindex, core::ptr::null_mut(), 0, 0) } as i32;
    if action != TC_ACT_REDIRECT as i32 {
        return Err(Reason::RedirectFailed);
    }
    Ok(Verdict { action, reason: Reason::FwdEncap, vni: ep.vni, inner_len: len })
}

/// Wraps the frame in outer Ethernet/IPv4/UDP/VXLAN. The outer MACs are left zero for
/// `bpf_redirect_neigh` to fill.
#[inline(always)]
fn encapsulate(ctx: &TcContext, cfg: &NodeConfig, vni: u32, vtep: u32, len: u32) -> Result<(), Reason> {
    // Entropy for ECMP: the kernel driver's formula over the inner flow hash.
    // SAFETY: plain helper call.
    let hash = unsafe { bpf_get_hash_recalc(ctx.skb.skb) } as u64;
    let sport = cfg.src_port_min.wrapping_add(((hash * cfg.src_port_range as u64) >> 32) as u16);

    let inner_eth = ptr_at::<[u8; ETH_HLEN]>(ctx, 0)?;
    // SAFETY: bounds checked by ptr_at.
    let inner_eth = unsafe { *inner_eth };

    ctx.adjust_room(VXLAN_ENCAP_LEN as i32, BPF_ADJ_ROOM_MAC, ENCAP_FLAGS)
        .map_err(|_| Reason::AdjustFailed)?;

    const HDR: usize = ETH_HLEN + VXLAN_ENCAP_LEN;
    let mut h = [0u8; HDR];
    // Outer Ethernet: MACs zero (filled by the neighbour subsystem), type IPv4.
    h[12] = (ETH_P_IP >> 8) as u8;
    h[13] = ETH_P_IP as u8;
    // Outer IPv4: no options, DF clear (as the kernel driver sends), id 0.
    let ip_total = (len as usize + IPV4_HLEN + UDP_HLEN + VXLAN_HLEN) as u16;
    let mut ip = [0u8; IPV4_HLEN];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&ip_total.to_be_bytes());
    ip[8] = OUTER_TTL;
    ip[9] = IPPROTO_UDP;
    ip[12..16].copy_from_slice(&cfg.vtep.to_ne_bytes());
    ip[16..20].copy_from_slice(&vtep.to_ne_bytes());
    let csum = ipv4::header_checksum(&ip);
    ip[10..12].copy_from_slice(&csum.to_be_bytes());
    h[ETH_HLEN..ETH_HLEN + IPV4_HLEN].copy_from_slice(&ip);
    // UDP: checksum 0, allowed for VXLAN over IPv4 (RFC 7348 section 5).
    let u = ETH_HLEN + IPV4_HLEN;
    h[u..u + 2].copy_from_slice(&sport.to_be_bytes());
    h[u + 2..u + 4].copy_from_slice(&cfg.vxlan_port.to_be_bytes());
    h[u + 4..u + 6].copy_from_slice(&(ip_total - IPV4_HLEN as u16).to_be_bytes());
    // VXLAN: I flag and the VNI.
    let v = u + UDP_HLEN;
    h[v] = VXLAN_FLAG_I;
    h[v + 4..v + 8].copy_from_slice(&vxlan_vni_field(vni).to_be_bytes());
    // Inner Ethernet: the frame's own header, moved behind the tunnel headers.
    h[v + VXLAN_HLEN..].copy_from_slice(&inner_eth);

    ctx.store(0, &h, 0).map_err(|_| Reason::AdjustFailed)
}

/// Answers an ARP request for an address of the endpoint's network from the neighbour table, by
/// turning the request into the reply and sending it back out the same veth. Nothing floods.
#[inline(always)]
fn answer_arp(ctx: &TcContext, ep: &EndpointInfo, ifindex: u32) -> Result<Verdict, Reason> {
    let eth = ptr_at_mut::<EthHdr>(ctx, 0)?;
    let arp = ptr_at_mut::<EthArp>(ctx, ETH_HLEN)?;
    // SAFETY: both bounds checked by ptr_at_mut; no helper has moved the data since.
    unsafe {
        if !(*arp).is_eth_ipv4() || (*arp).oper != ARP_OP_REQUEST.to_be_bytes() {
            return Err(Reason::ArpUnanswered);
        }
        if (*arp).sha != ep.mac {
            return Err(Reason::SpoofedMac);
        }
        let spa = u32::from_ne_bytes((*arp).spa);
        let tpa = u32::from_ne_bytes((*arp).tpa);
        // A probe (sender 0.0.0.0) or a question about its own address gets no answer.
        if spa == 0 || tpa == ep.ip {
            return Err(Reason::ArpUnanswered);
        }
        if spa != ep.ip {
            return Err(Reason::SpoofedIp);
        }
        let neigh = NEIGH.get(NeighKey { vni: ep.vni, ip: tpa }).ok_or(Reason::ArpUnanswered)?;
        let mac = neigh.mac;
        (*eth).dst_addr = ep.mac;
        (*eth).src_addr = mac;
        (*arp).oper = ARP_OP_REPLY.to_be_bytes();
        (*arp).tha = ep.mac;
        (*arp).tpa = (*arp).spa;
        (*arp).sha = mac;
        (*arp).spa = tpa.to_ne_bytes();
    }
    // SAFETY: plain helper call; out of the same veth, i.e. into the endpoint's namespace.
    let action = unsafe { bpf_redirect(ifindex, 0) } as i32;
    Ok(Verdict { action, reason: Reason::ArpReply, vni: 0, inner_len: 0 })
}
