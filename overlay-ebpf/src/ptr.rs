//! Bounds-checked direct packet access, over either hook's context ([`Packet`]): the decision
//! code shared by TC and XDP reads packets only through this.
use aya_ebpf::{
    helpers::generated::bpf_xdp_load_bytes,
    programs::{TcContext, XdpContext},
};
use core::mem::size_of;
use overlay_common::Reason;

/// What the shared decision code needs of a hook's context: the linear packet data, and a
/// bounds-checked copy at an offset the verifier cannot follow.
pub trait Packet {
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
    /// Two bytes at `offset` (which may lie anywhere), or `None` past the end.
    fn load_2(&self, offset: usize) -> Option<[u8; 2]>;
}

impl Packet for TcContext {
    #[inline(always)]
    fn data(&self) -> usize {
        TcContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        TcContext::data_end(self)
    }
    #[inline(always)]
    fn load_2(&self, offset: usize) -> Option<[u8; 2]> {
        self.load::<[u8; 2]>(offset).ok()
    }
}

impl Packet for XdpContext {
    #[inline(always)]
    fn data(&self) -> usize {
        XdpContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }
    #[inline(always)]
    fn load_2(&self, offset: usize) -> Option<[u8; 2]> {
        let mut b = [0u8; 2];
        // SAFETY: the helper bounds-checks `offset` against the frame and writes 2 bytes into `b`.
        let rc = unsafe { bpf_xdp_load_bytes(self.ctx, offset as u32, b.as_mut_ptr() as *mut _, 2) };
        if rc == 0 { Some(b) } else { None }
    }
}

/// Pointer to a `T` at `offset` in the packet, or `Truncated` if the packet ends before it.
/// Every pointer must be derived again after a helper that moves packet data.
#[inline(always)]
pub fn ptr_at<T>(ctx: &impl Packet, offset: usize) -> Result<*const T, Reason> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return Err(Reason::Truncated);
    }
    Ok((start + offset) as *const T)
}

/// Mutable variant of [`ptr_at`].
#[inline(always)]
pub fn ptr_at_mut<T>(ctx: &impl Packet, offset: usize) -> Result<*mut T, Reason> {
    ptr_at::<T>(ctx, offset).map(|p| p as *mut T)
}

/// Unaligned big-endian/raw stores into packet memory already bounds-checked by the caller.
pub mod put {
    /// # Safety
    /// `p + off + 2` must be within the checked packet range.
    #[inline(always)]
    pub unsafe fn be16(p: *mut u8, off: usize, v: u16) {
        unsafe { core::ptr::write_unaligned(p.add(off) as *mut u16, v.to_be()) }
    }

    /// Stores `v` as it is in memory (for addresses kept in network order).
    /// # Safety
    /// `p + off + 4` must be within the checked packet range.
    #[inline(always)]
    pub unsafe fn raw32(p: *mut u8, off: usize, v: u32) {
        unsafe { core::ptr::write_unaligned(p.add(off) as *mut u32, v) }
    }

    /// Copies an Ethernet header (14 bytes) with three loads and three stores.
    /// # Safety
    /// Both ranges must be within the checked packet range (or the stack).
    #[inline(always)]
    pub unsafe fn eth_header(dst: *mut u8, src: *const u8) {
        unsafe {
            let a = core::ptr::read_unaligned(src as *const u64);
            let b = core::ptr::read_unaligned(src.add(8) as *const u32);
            let c = core::ptr::read_unaligned(src.add(12) as *const u16);
            core::ptr::write_unaligned(dst as *mut u64, a);
            core::ptr::write_unaligned(dst.add(8) as *mut u32, b);
            core::ptr::write_unaligned(dst.add(12) as *mut u16, c);
        }
    }
}
