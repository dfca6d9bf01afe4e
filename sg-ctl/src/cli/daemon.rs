//! `sg-ctl daemon`: run the daemon, or manage its API tokens.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use anyhow::Result;
use clap::{Args, Subcommand};
use sg_ctl::{
    daemon::{Daemon, api},
    datapath::{Datapath, MapSizes, Pins},
    store::{Location, Store},
};

use super::{Invalid, Session, block_on, tokens::TokenCommand};

#[derive(Args)]
pub struct DaemonArgs {
    #[command(subcommand)]
    command: Option<DaemonCommand>,
    /// The database holding the desired state (and, with an etcd --store,
    /// what this host's datapath was given).
    #[arg(long, env = "SG_DB", default_value = "/var/lib/sg/sg.db")]
    db: PathBuf,
    /// Where the desired state is: sqlite:PATH (as --db), or
    /// etcd://HOST:PORT[,HOST:PORT…], shared by the daemons of several
    /// hosts (with --host).
    #[arg(long, env = "SG_STORE", value_name = "STORE")]
    store: Option<Location>,
    /// This host's name among those sharing an etcd store: the daemon
    /// enforces the ports of this host (a port made through it is on it).
    #[arg(long, env = "SG_HOST", value_name = "NAME")]
    host: Option<String>,
    /// Serve Prometheus metrics on this TCP address (e.g. 127.0.0.1:9400).
    #[arg(long)]
    metrics: Option<SocketAddr>,
    /// Serve the web console and the API on this TCP address (127.0.0.1:9401
    /// when given without one); every request there needs a token. Plain
    /// HTTP on loopback only, HTTPS with --console-cert and --console-key.
    #[arg(long, value_name = "ADDR", num_args = 0..=1,
          default_missing_value = api::console::DEFAULT_ADDRESS)]
    console: Option<SocketAddr>,
    /// The console's TLS certificate chain (PEM).
    #[arg(long, value_name = "FILE", requires_all = ["console", "console_key"])]
    console_cert: Option<PathBuf>,
    /// The private key of --console-cert (PEM).
    #[arg(long, value_name = "FILE", requires_all = ["console", "console_cert"])]
    console_key: Option<PathBuf>,
    /// The entries a shared map holds, NAME=ENTRIES (repeat for more):
    /// SG_REMOTE, SG_REMOTE_EXACT, SG_L4, SG_L4_EXACT, SG_LOCAL, SG_VERDICT,
    /// SG_OWNED, SG_BLOCKED, SG_FRAGMENTS, SG_CONNTRACK (about 216 bytes of
    /// kernel memory a flow, with the ring of started flows; SG_REMOTE_EXACT
    /// takes 96 bytes an address, and SG_REMOTE room for as many). Taken when the
    /// maps are made, while no port is attached: the tracked flows go with
    /// the old maps.
    #[arg(long = "map-size", value_name = "NAME=ENTRIES")]
    map_sizes: Vec<String>,
}

#[derive(Subcommand)]
enum DaemonCommand {
    /// API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// The store of the desired state, whether it answers, and the hosts
    /// sharing it.
    Status,
}

impl DaemonArgs {
    /// Whether this runs the daemon (rather than a token command).
    pub fn serves(&self) -> bool {
        self.command.is_none()
    }

    /// Serves the API on `socket` until told to stop; a token command goes
    /// to the daemon of `session` instead.
    pub fn run(&self, pins: Pins, socket: &Path, session: &Session) -> Result<()> {
        match &self.command {
            Some(DaemonCommand::Token(command)) => return block_on(command.run(session)),
            Some(DaemonCommand::Status) => return block_on(status(session)),
            None => {}
        }
        // Before the datapath and the listener open theirs.
        api::http::raise_open_files()?;
        let sizes = MapSizes::parse(self.map_sizes.iter().map(String::as_str)).map_err(Invalid)?;
        let store = match (&self.store, &self.host) {
            (None | Some(Location::Sqlite(_)), Some(_)) => {
                return Err(Invalid(
                    "--host: names this host among those sharing an etcd store; give \
                     --store etcd://HOST:PORT too, or leave --host out"
                        .into(),
                )
                .into());
            }
            (Some(Location::Etcd(_)), None) => {
                return Err(Invalid(
                    "--host: an etcd store is shared by several hosts; name this one \
                     (--host NAME)"
                        .into(),
                )
                .into());
            }
            (Some(Location::Etcd(endpoints)), Some(host)) => {
                create_parent(&self.db)?;
                Store::with_etcd(&self.db, endpoints, host)?
            }
            (Some(Location::Sqlite(path)), None) => {
                create_parent(path)?;
                Store::open(path)?
            }
            (None, None) => {
                create_parent(&self.db)?;
                Store::open(&self.db)?
            }
        };
        let daemon = Daemon::start(store, Datapath::with_sizes(pins, sizes))?;
        block_on(async {
            let metrics = match self.metrics {
                Some(addr) => Some(tokio::net::TcpListener::bind(addr).await?),
                None => None,
            };
            let tls = self
                .console_cert
                .as_deref()
                .zip(self.console_key.as_deref());
            let console = match self.console {
                Some(addr) => {
                    let listener = api::console::bind(addr, tls).await?;
                    let scheme = if tls.is_some() { "https" } else { "http" };
                    eprintln!(
                        "sg-ctl daemon: the console is on {scheme}://{}/",
                        listener.local_addr()?
                    );
                    Some(listener)
                }
                None => None,
            };
            api::serve(daemon, socket, metrics, console).await
        })
    }
}

fn create_parent(path: &Path) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    Ok(())
}

async fn status(session: &Session) -> Result<()> {
    let health = session.client.status().await?;
    session.output.print(&health, |health| {
        let state = if health.reachable {
            "reachable".to_string()
        } else {
            format!("UNREACHABLE: {}", health.error)
        };
        println!("store     {} ({state})", health.store);
        println!("revision  {}", health.revision);
        if let Some(host) = &health.host {
            println!("host      {host}");
        }
        for host in &health.hosts {
            let up = if host.up { "up" } else { "down" };
            println!("  {:<24} {up}", host.name);
        }
        Ok(())
    })
}
