// Empty library target so that overlay-userspace can name this crate as a build-dependency
// (aya-build rebuilds the programs when it changes).
#![no_std]
