//! `sg-ctl conntrack`: the connection table on the pinned maps, without
//! the daemon: list, stats, flush, gc, watch.

use std::{
    io::Write as _,
    time::{Duration, Instant},
};

use anyhow::Result;
use clap::{Args, Subcommand};
use ipnet::IpNet;
use sg_core::{
    flow::FlowState,
    model::{IpProtocol, parse_cidr},
};
use sg_ctl::{
    daemon::api::FlowQuery,
    datapath::{Datapath, conntrack::FlowFilter},
};

use super::{Invalid, Output, parse_protocol, print};

#[derive(Subcommand)]
pub enum ConntrackCommand {
    /// The tracked flows, oldest first.
    #[command(after_help = "Examples:
  sg-ctl conntrack list --iface tap1 --protocol tcp --state established
  sg-ctl -o json conntrack list --address 198.18.0.0/24")]
    List(FlowArgs),
    /// Entries, capacity, and the conntrack outcomes of every port.
    Stats,
    /// Forget flows: their next packets are those of new flows, which the
    /// policy decides on.
    #[command(after_help = "Examples:
  sg-ctl conntrack flush --all
  sg-ctl conntrack flush --iface tap1 --address 203.0.113.7")]
    Flush {
        #[command(flatten)]
        flows: FlowArgs,
        /// Every flow of every port (without a filter, required).
        #[arg(long, conflicts_with_all = ["iface", "address", "protocol", "state"])]
        all: bool,
    },
    /// Remove the flows idle past their timeout now (the daemon does it
    /// every few seconds).
    Gc,
    /// Print flows as they start, close and expire (at most 1000 events a
    /// second per CPU; flows that `gc` removes have none).
    #[command(after_help = "Examples:
  sg-ctl conntrack watch
  sg-ctl -o json conntrack watch --count 10 --seconds 30")]
    Watch {
        /// Stop after this many events.
        #[arg(long)]
        count: Option<u64>,
        /// Stop after this many seconds.
        #[arg(long)]
        seconds: Option<u64>,
    },
}

/// Which flows a conntrack command takes.
#[derive(Args)]
pub struct FlowArgs {
    /// The flows of this port (interface name).
    #[arg(long)]
    iface: Option<String>,
    #[command(flatten)]
    of: FlowMatch,
}

/// Which of a port's flows a command takes.
#[derive(Args)]
pub struct FlowMatch {
    /// Flows with either end in this prefix or address.
    #[arg(long, value_parser = parse_cidr)]
    address: Option<IpNet>,
    /// Flows of this protocol (a name or a number).
    #[arg(long, value_parser = parse_protocol)]
    protocol: Option<IpProtocol>,
    /// Flows in this state: new, replied, syn-sent, syn-received,
    /// established, fin-wait, time-wait.
    #[arg(long)]
    state: Option<FlowState>,
}

impl FlowMatch {
    fn is_empty(&self) -> bool {
        self.address.is_none() && self.protocol.is_none() && self.state.is_none()
    }

    /// The query of `GET /v1/ports/{name}/flows` for these flows.
    pub fn query(&self) -> FlowQuery {
        FlowQuery {
            address: self.address,
            protocol: self.protocol.map(|p| p.0.to_string()),
            state: self.state.map(|state| state.to_string()),
        }
    }
}

impl FlowArgs {
    fn is_empty(&self) -> bool {
        self.iface.is_none() && self.of.is_empty()
    }

    /// The filter, with the port of `--iface` (in the namespace entered).
    fn filter(&self, datapath: &Datapath) -> Result<FlowFilter> {
        Ok(FlowFilter {
            slot: self
                .iface
                .as_deref()
                .map(|iface| datapath.slot_of(iface))
                .transpose()?,
            address: self.of.address,
            protocol: self.of.protocol,
            state: self.of.state,
        })
    }
}

impl ConntrackCommand {
    pub fn run(&self, datapath: &Datapath, output: Output) -> Result<()> {
        match self {
            ConntrackCommand::List(flows) => {
                let flows = datapath.flows(&flows.filter(datapath)?)?;
                output.print(&flows, |flows| print::flows(flows))?;
            }
            ConntrackCommand::Stats => {
                output.print(&datapath.conntrack_stats()?, print::conntrack_stats)?;
            }
            ConntrackCommand::Flush { flows, all } => {
                if !all && flows.is_empty() {
                    return Err(Invalid(
                        "conntrack flush: say which flows: --iface, --address, --protocol, \
                         --state, or --all for every flow"
                            .to_string(),
                    )
                    .into());
                }
                let removed = datapath.flush_flows(&flows.filter(datapath)?)?;
                report(output, "flushed", removed);
            }
            ConntrackCommand::Watch { count, seconds } => {
                let mut events = datapath.flow_events()?;
                // Said once the ring is open: what happens from here on is shown.
                eprintln!("watching flows as they start, close and expire");
                let until = seconds.map(|s| Instant::now() + Duration::from_secs(s));
                let mut seen = 0;
                let mut out = std::io::stdout().lock();
                events.watch(until, |event| {
                    match output {
                        Output::Json => writeln!(out, "{}", serde_json::to_string(&event)?)?,
                        Output::Table => print::flow_event(&mut out, &event)?,
                    }
                    out.flush()?;
                    seen += 1;
                    Ok(count.is_none_or(|count| seen < count))
                })?;
            }
            ConntrackCommand::Gc => {
                let removed = datapath.expire_flows()?;
                report(output, "expired", removed);
            }
        }
        Ok(())
    }
}

/// How many flows a command removed.
fn report(output: Output, what: &str, flows: usize) {
    match output {
        Output::Json => println!("{}", serde_json::json!({ what: flows })),
        Output::Table => println!("{what} {flows} flows"),
    }
}
