//! What the CNI plugin reads from the runtime and from a delegated IPAM plugin: the network
//! configuration on stdin (with its `prevResult`) through `plugins::cni::decode_conf`, and the
//! IPAM plugin's output, success or failure, through `ipam_output` and `ipam_address`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use overlay::plugins::cni;

fuzz_target!(|data: &[u8]| {
    let _ = cni::decode_conf(data);
    // The same bytes as an IPAM plugin's stdout (and stderr, when it failed).
    let _ = cni::ipam_output("host-local", false, data, data);
    if let Ok(Some(result)) = cni::ipam_output("host-local", true, data, b"") {
        let _ = cni::ipam_address(&result);
    }
});
