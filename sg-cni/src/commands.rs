//! ADD, CHECK and DEL: the container's port in sg's daemon, over its API.
//!
//! ADD creates or replaces the port, then plugs it: the daemon answers the
//! plug once the port's policy is in force on the host side of the veth,
//! and ADD fails otherwise, so the container never runs unfiltered. CHECK
//! reads the port back; DEL deletes it, a port already gone included.

use std::{fs, os::unix::fs::MetadataExt as _, path::Path};

use serde_json::Value;
use sg_ctl::{
    client::{Client, ClientError},
    daemon::api::{Phase, PlugBody},
    netns,
};
use tokio::net::UnixStream;

use crate::{
    port::{Workload, groups, is_bridge, port_name},
    spec::{Code, Error, Invocation, NetConf, PrevResult},
};

/// Makes the container's port and puts it in force; answers the previous
/// result, which the port changes nothing of.
pub async fn add(invocation: &Invocation, conf: &NetConf) -> Result<Value, Error> {
    let (given, result) = conf.prev_result()?;
    let workload = workload(invocation, &result)?;
    let groups = groups(conf.groups.as_deref(), &invocation.args)?;
    let socket = conf.socket();
    let netns = plugin_namespace(&socket).await?;
    let name = port_name(&invocation.container_id, &invocation.ifname);
    let port = workload.port(name.clone(), groups, netns);
    let client = Client::new(&socket, None);
    let refused = |e| {
        failure(
            Code::Refused,
            &format!("sg refused port {name}"),
            &socket,
            e,
        )
    };
    client.put_port(&port).await.map_err(refused)?;
    client
        .plug(&name, &PlugBody::default())
        .await
        .map_err(|e| {
            failure(
                Code::NotEnforced,
                &format!("port {name} is not enforced on {}", workload.host_side),
                &socket,
                e,
            )
        })?;
    Ok(given.clone())
}

/// Whether the container's port is there, enforced, and still the
/// container's: on the host side of its veth, with its MAC and IPs.
pub async fn check(invocation: &Invocation, conf: &NetConf) -> Result<(), Error> {
    let (_, result) = conf.prev_result()?;
    let workload = workload(invocation, &result)?;
    let socket = conf.socket();
    let netns = plugin_namespace(&socket).await?;
    let name = port_name(&invocation.container_id, &invocation.ifname);
    let view = Client::new(&socket, None)
        .port(&name)
        .await
        .map_err(|e| failure(Code::CheckFailed, &format!("no port {name}"), &socket, e))?;
    let differences = workload.differences(&view.spec, netns.as_deref());
    if !differences.is_empty() {
        return Err(Error::new(
            Code::CheckFailed,
            format!("port {name} is no longer the container's"),
            differences.join("; "),
        ));
    }
    if view.status.state != Phase::Active {
        return Err(Error::new(
            Code::CheckFailed,
            format!("port {name} is not enforced"),
            format!("it is {}: {}", view.status.state, view.status.reason),
        ));
    }
    Ok(())
}

/// Removes the container's port; one that is not there is removed already.
pub async fn del(invocation: &Invocation, conf: &NetConf) -> Result<(), Error> {
    let socket = conf.socket();
    let name = port_name(&invocation.container_id, &invocation.ifname);
    match Client::new(&socket, None).delete_port(&name, None).await {
        Err(e) if !e.is_not_found() => Err(failure(
            Code::Refused,
            &format!("cannot delete port {name}"),
            &socket,
            e,
        )),
        _ => Ok(()),
    }
}

fn workload(invocation: &Invocation, result: &PrevResult) -> Result<Workload, Error> {
    let netns = invocation.netns.as_deref().unwrap_or_default();
    Workload::from_result(result, netns, &invocation.ifname, is_bridge)
}

/// The port's `netns`: the namespace this plugin runs in, where bridge and
/// ptp made the host side of the veth. `None` when that is the daemon's
/// own (a port's `netns` leaves it out then), else its `ip netns` name; a
/// namespace that is neither cannot be told to the daemon.
async fn plugin_namespace(socket: &Path) -> Result<Option<String>, Error> {
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|e| unreachable(socket, &e))?;
    let here = netns::current().map_err(|e| {
        Error::new(
            Code::IoFailure,
            "cannot read the plugin's namespace",
            e.to_string(),
        )
    })?;
    // The daemon's process, as the kernel says it on the socket.
    let daemons = stream
        .peer_cred()
        .ok()
        .and_then(|peer| peer.pid())
        .and_then(|pid| fs::metadata(format!("/proc/{pid}/ns/net")).ok())
        .map(|ns| ns.ino());
    if daemons == Some(here) {
        return Ok(None);
    }
    netns::name_of(here).map(Some).ok_or_else(|| {
        Error::new(
            Code::UnnamedNamespace,
            "the plugin's network namespace has no name the daemon can find",
            format!(
                "sg-cni runs in {}, which is not the daemon's namespace and is not under \
                 {}: run the plugins in the daemon's namespace or in one of `ip netns list`",
                netns::describe(here),
                netns::NETNS_RUN_DIR
            ),
        )
    })
}

fn unreachable(socket: &Path, error: &std::io::Error) -> Error {
    Error::new(
        Code::TryAgainLater,
        format!("cannot reach the sg daemon at {}", socket.display()),
        format!(
            "{error}; start it with `sg-ctl daemon`, or set \"socket\" in the network \
             configuration to the socket it serves"
        ),
    )
}

/// A failed request: `code` and `msg` when the daemon answered no, try
/// again later when it did not answer.
fn failure(code: Code, msg: &str, socket: &Path, error: ClientError) -> Error {
    match error {
        ClientError::Connect { source, .. } => unreachable(socket, &source),
        ClientError::Api { message, .. } => Error::new(code, msg, message),
        ClientError::Protocol(message) => {
            Error::new(Code::IoFailure, "talking to the sg daemon", message)
        }
    }
}
