//! The decision both ingress hooks share: what a frame from the underlay is, checked as far as
//! either hook can carry it. [`classify`] reads the packet only through [`Packet`], so the TC
//! ingress ([`crate::ingress`]) and the XDP ingress ([`crate::xdp`]) run the very same checks,
//! count the very same drop reasons, and differ only in what they do with the answer.
use network_types::{eth::EthHdr, ip::Ipv4Hdr, udp::UdpHdr, vxlan::VxlanHdr};
use overlay_common::{
    FDB_LOCAL, FDB_REMOTE, FdbKey, NodeConfig, Reason,
    wire::{ETH_HLEN, ETH_P_IP, IPPROTO_UDP, IPV4_HLEN, UDP_HLEN, VXLAN_HLEN},
};

use crate::{
    eth, ipv4,
    maps::{FDB, MEMBERS, VNIS},
    ptr::{Packet, ptr_at},
    vxlan,
};

pub const UDP_OFF: usize = ETH_HLEN + IPV4_HLEN;
pub const VXLAN_OFF: usize = UDP_OFF + UDP_HLEN;
pub const INNER_ETH_OFF: usize = VXLAN_OFF + VXLAN_HLEN;
pub const INNER_IP_OFF: usize = INNER_ETH_OFF + ETH_HLEN;

/// What a frame from the underlay is.
pub enum Underlay {
    /// Not for this node's VTEP address (or not IPv4): the kernel's, untouched.
    NotOurs,
    /// To this node's address but not VXLAN to its port: a published port's (the routing mesh)
    /// or the node's own traffic. The outer IPv4 header is at [`ETH_HLEN`].
    ToNode,
    /// VXLAN from `from` marked for the routing mesh (`mark`, the VXLAN header's last byte).
    Mesh { vni: u32, from: u32, mark: u8 },
    /// Checked VXLAN for the local endpoint behind host-side veth `ifindex`: from a member VTEP
    /// that owns the inner source MAC, in a known VNI, an IPv4 unicast inner frame.
    Decap { ifindex: u32, vni: u32 },
}

/// Parses and checks the frame against `cfg` (this node's settings). `Err` is a counted drop:
/// only frames addressed to this node's VTEP port ever get one.
#[inline(always)]
pub fn classify(ctx: &impl Packet, cfg: &NodeConfig) -> Result<Underlay, Reason> {
    // Until the packet is known to be VXLAN for this node, anything odd is the kernel's business.
    let Ok(eth) = ptr_at::<EthHdr>(ctx, 0) else { return Ok(Underlay::NotOurs) };
    // SAFETY: bounds checked by ptr_at.
    if eth::ethertype(unsafe { &*eth }) != ETH_P_IP {
        return Ok(Underlay::NotOurs);
    }
    let Ok(ip) = ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN) else { return Ok(Underlay::NotOurs) };
    // SAFETY: bounds checked by ptr_at.
    let ip = unsafe { &*ip };
    if ipv4::version(ip) != 4 {
        return Ok(Underlay::NotOurs);
    }
    if cfg.vtep == 0 || u32::from_ne_bytes(ip.dst_addr) != cfg.vtep {
        return Ok(Underlay::NotOurs);
    }
    if ip.proto != IPPROTO_UDP || ipv4::frag_offset(ip) != 0 {
        return Ok(Underlay::ToNode);
    }
    let outer_src = u32::from_ne_bytes(ip.src_addr);
    let more_fragments = ipv4::frag_bits(ip) != 0;
    let hlen = ipv4::header_len(ip);
    if hlen != IPV4_HLEN {
        if hlen < IPV4_HLEN {
            return Ok(Underlay::NotOurs);
        }
        // Options: find the UDP port behind them to know whether this was meant for us.
        let Some(dport) = ctx.load_2(ETH_HLEN + hlen + 2) else { return Ok(Underlay::NotOurs) };
        if u16::from_be_bytes(dport) != cfg.vxlan_port {
            return Ok(Underlay::ToNode);
        }
        return Err(Reason::IpOptions);
    }
    let Ok(udp) = ptr_at::<UdpHdr>(ctx, UDP_OFF) else { return Ok(Underlay::NotOurs) };
    // SAFETY: bounds checked by ptr_at.
    if u16::from_be_bytes(unsafe { (*udp).dst }) != cfg.vxlan_port {
        return Ok(Underlay::ToNode);
    }
    // From here on the packet is addressed to this node's VTEP: every failure is a counted drop.
    if more_fragments {
        return Err(Reason::Fragment);
    }
    let vx = ptr_at::<VxlanHdr>(ctx, VXLAN_OFF)?;
    // SAFETY: bounds checked by ptr_at.
    let vx = unsafe { &*vx };
    if !vxlan::has_i_flag(vx) {
        return Err(Reason::VxlanFlags);
    }
    let vni = vxlan::vni(vx);
    let mark = vx._reserved2;
    if mark != 0 {
        return Ok(Underlay::Mesh { vni, from: outer_src, mark });
    }
    let inner = ptr_at::<EthHdr>(ctx, INNER_ETH_OFF)?;
    // SAFETY: bounds checked by ptr_at.
    let (src, dst, ethertype) =
        unsafe { ((*inner).src_addr, (*inner).dst_addr, eth::ethertype(&*inner)) };
    // A member may only speak for the MACs the FDB places behind it. The FDB holds entries only
    // for known VNIs and remote entries only for members, so a matching owner proves both and
    // the common case costs one lookup; the VNI and member tables are read only otherwise.
    match unsafe { FDB.get(FdbKey::new(vni, src)) } {
        Some(owner) if owner.kind == FDB_REMOTE && owner.vtep == outer_src => {}
        Some(_) => {
            if unsafe { MEMBERS.get(outer_src) }.is_none() {
                return Err(Reason::NotMember);
            }
            return Err(Reason::VtepMismatch);
        }
        None => {
            if unsafe { VNIS.get(vni) }.is_none() {
                return Err(Reason::UnknownVni);
            }
            if unsafe { MEMBERS.get(outer_src) }.is_none() {
                return Err(Reason::NotMember);
            }
        }
    }
    if eth::is_vlan(ethertype) {
        return Err(Reason::Vlan);
    }
    if ethertype != ETH_P_IP {
        return Err(Reason::UnsupportedEthertype);
    }
    ptr_at::<Ipv4Hdr>(ctx, INNER_IP_OFF)?;
    if eth::is_group(&dst) {
        return Err(Reason::Broadcast);
    }
    let target = *unsafe { FDB.get(FdbKey::new(vni, dst)) }.ok_or(Reason::UnknownDestination)?;
    if target.kind != FDB_LOCAL {
        return Err(Reason::UnknownDestination);
    }
    Ok(Underlay::Decap { ifindex: target.ifindex, vni })
}
