//! Docker's request bodies as the network plugin reads them: `plugins::docker::Request::parse`
//! for every call of the remote driver protocol, on the same body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use overlay::plugins::docker::Request;

const METHODS: &[&str] = &[
    "Plugin.Activate",
    "NetworkDriver.GetCapabilities",
    "NetworkDriver.CreateNetwork",
    "NetworkDriver.DeleteNetwork",
    "NetworkDriver.CreateEndpoint",
    "NetworkDriver.DeleteEndpoint",
    "NetworkDriver.EndpointOperInfo",
    "NetworkDriver.Join",
    "NetworkDriver.Leave",
    "NetworkDriver.DiscoverNew",
    "NetworkDriver.ProgramExternalConnectivity",
];

fuzz_target!(|data: &[u8]| {
    for method in METHODS {
        let _ = Request::parse(method, data);
    }
});
