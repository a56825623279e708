//! VXLAN header helpers (RFC 7348).
use network_types::vxlan::VxlanHdr;
use overlay_common::wire::VXLAN_FLAG_I;

#[inline(always)]
pub fn has_i_flag(h: &VxlanHdr) -> bool {
    h.flags & VXLAN_FLAG_I != 0
}

#[inline(always)]
pub fn vni(h: &VxlanHdr) -> u32 {
    ((h.vni[0] as u32) << 16) | ((h.vni[1] as u32) << 8) | (h.vni[2] as u32)
}
