//! Bounds-checked direct packet access.
use aya_ebpf::programs::TcContext;
use core::mem::size_of;
use overlay_common::Reason;

/// Pointer to a `T` at `offset` in the packet, or `Truncated` if the packet ends before it.
/// Every pointer must be derived again after a helper that moves packet data.
#[inline(always)]
pub fn ptr_at<T>(ctx: &TcContext, offset: usize) -> Result<*const T, Reason> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return Err(Reason::Truncated);
    }
    Ok((start + offset) as *const T)
}

/// Mutable variant of [`ptr_at`].
#[inline(always)]
pub fn ptr_at_mut<T>(ctx: &TcContext, offset: usize) -> Result<*mut T, Reason> {
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
