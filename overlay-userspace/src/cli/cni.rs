//! `overlay cni`: the CNI plugin entry point. Reads the CNI_* environment and the network
//! configuration from stdin, prints the result (or the spec's error JSON, exit 1) on stdout.
//! Runtimes call the binary by its plugin name (`overlay` in CNI_PATH) without arguments; that
//! form lands here too.
use std::io::Read as _;

use crate::plugins::cni::{self, CniError, Env, code};

pub async fn run() -> std::process::ExitCode {
    let vars: std::collections::HashMap<String, String> = std::env::vars().collect();
    let mut stdin = Vec::new();
    let result = match Env::from_env(&vars) {
        Err(e) => Err(e),
        Ok(env) => match std::io::stdin().read_to_end(&mut stdin) {
            Err(e) if env.command != "VERSION" => Err(CniError { code: code::IO, msg: "reading the configuration from stdin".into(), details: e.to_string() }),
            _ => cni::run(&env, &stdin).await,
        },
    };
    match result {
        Ok(out) => {
            if !out.is_empty() {
                println!("{out}");
            }
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            let version = serde_json::from_slice::<serde_json::Value>(&stdin)
                .ok()
                .and_then(|v| v.get("cniVersion").and_then(|v| v.as_str()).map(str::to_string))
                .unwrap_or_else(|| cni::CNI_VERSION.to_string());
            println!("{}", e.to_json(&version));
            std::process::ExitCode::FAILURE
        }
    }
}
