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
