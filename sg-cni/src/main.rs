//! sg-cni: sg as a chained CNI plugin. A runtime runs it after `bridge`
//! (or `ptp`) and `host-local`; ADD makes the host side of the container's
//! veth an sg port with the network's or the container's groups and
//! returns once its policy is in force, CHECK verifies that it still is,
//! DEL removes the port. Errors are the specification's error object on
//! stdout, with exit code 1.

mod commands;
mod port;
mod spec;

use std::{
    io::{self, Read as _},
    process::ExitCode,
};

use serde_json::Value;

use crate::spec::{Code, Command, Error, Invocation, NetConf};

fn main() -> ExitCode {
    let mut version = spec::VERSION.to_string();
    match run(&mut version) {
        Ok(reply) => {
            if let Some(reply) = reply {
                println!("{reply}");
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            println!("{}", error.reply(&version));
            ExitCode::FAILURE
        }
    }
}

/// Runs the command the environment names; `version` becomes the
/// configuration's once it is read, for the error object.
fn run(version: &mut String) -> Result<Option<Value>, Error> {
    let invocation = Invocation::from_vars(|name| std::env::var(name).ok())?;
    // Read for VERSION too (which says a version there), as runtimes write it.
    let mut input = Vec::new();
    io::stdin()
        .read_to_end(&mut input)
        .map_err(|e| Error::new(Code::IoFailure, "cannot read stdin", e.to_string()))?;
    let Some(invocation) = invocation else {
        return Ok(Some(spec::version_reply()));
    };
    let conf = NetConf::parse(&input)?;
    version.clone_from(&conf.cni_version);
    conf.check_version()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| Error::new(Code::IoFailure, "cannot start", e.to_string()))?;
    runtime.block_on(async {
        match invocation.command {
            Command::Add => commands::add(&invocation, &conf).await.map(Some),
            Command::Check => commands::check(&invocation, &conf).await.map(|()| None),
            Command::Del => commands::del(&invocation, &conf).await.map(|()| None),
        }
    })
}
