//! The cluster file as the agent and the CLI read it: YAML text through `source::file::parse`
//! (serde_yaml, then the rule book), and the node check the agent makes of a valid one.
#![no_main]

use libfuzzer_sys::fuzz_target;
use overlay::source::file;

fuzz_target!(|data: &[u8]| {
    // `file::load` reads the file as UTF-8 text; other bytes never reach the parser.
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(cluster) = file::parse(text) {
        for node in &cluster.nodes {
            let _ = file::check_node(&cluster, &node.name);
        }
    }
});
