//! `sg-ctl protocols` and `sg-ctl presets`: what rules may name.

use anyhow::Result;
use serde_json::Value;
use sg_core::{model::catalogue, preset::PRESETS};

use super::{Output, print};

/// `protocols`: the IP protocols rules may name, with what each accepts.
pub fn protocols(output: Output) -> Result<()> {
    output.print(&catalogue(), |protocols| print::protocols(protocols))
}

/// `presets`: the presets of `rule add --preset`.
pub fn presets(output: Output) -> Result<()> {
    let presets: Vec<Value> = PRESETS
        .iter()
        .map(|p| serde_json::json!({ "name": p.name, "description": p.description }))
        .collect();
    output.print(&presets, |_| print::presets())
}
