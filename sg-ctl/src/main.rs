//! `sg-ctl`: the daemon that keeps security groups in force, the client
//! commands that manage them, and the low-level commands that attach sg's
//! filter to ports and look at what it does. Here: parse the command line
//! ([`cli`]), run the command, turn its error into the exit code.

mod cli;

use std::process::ExitCode;

use clap::{CommandFactory as _, Parser as _};
use hyper::StatusCode;
use sg_ctl::{
    client::{Client, ClientError},
    datapath::{Datapath, DatapathError, Pins},
    netns,
};

use cli::{Cli, Command, HooksCommand, Invalid, Session, apply, block_on, catalogue};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Piped into `head`, a command ends quietly like other command-line
    // tools (the client writes to the daemon with MSG_NOSIGNAL, so only a
    // closed stdout ends it so). The daemon keeps SIGPIPE ignored, Rust's
    // default: a client that hangs up ends its own connection, not the
    // daemon.
    if !matches!(&cli.command, Command::Daemon(daemon) if daemon.serves()) {
        // SAFETY: restoring the default disposition of a signal.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Names and messages may hold what a terminal acts on.
            eprintln!("sg-ctl: {}", sg_core::text::escaped(&e.to_string()));
            ExitCode::from(exit_code(&e))
        }
    }
}

/// Exit codes: 1 anything else, 2 invalid arguments (clap, port
/// security, a request too large), 3 not found, 4 forbidden, 5 conflict.
fn exit_code(e: &anyhow::Error) -> u8 {
    if e.downcast_ref::<Invalid>().is_some() {
        return 2;
    }
    if let Some(ClientError::Api { status, .. }) = e.downcast_ref::<ClientError>() {
        return match *status {
            StatusCode::BAD_REQUEST
            | StatusCode::UNPROCESSABLE_ENTITY
            | StatusCode::PAYLOAD_TOO_LARGE
            | StatusCode::URI_TOO_LONG
            | StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => 2,
            StatusCode::NOT_FOUND => 3,
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => 4,
            StatusCode::CONFLICT => 5,
            _ => 1,
        };
    }
    let netns = match e.downcast_ref::<DatapathError>() {
        Some(
            DatapathError::NoSuchInterface { .. }
            | DatapathError::NotAttached { .. }
            | DatapathError::NothingAttached { .. },
        ) => {
            return 3;
        }
        Some(DatapathError::InvalidPortSecurity(_)) => return 2,
        Some(DatapathError::NotRoot { .. }) => return 4,
        Some(DatapathError::Netns(netns)) => Some(netns),
        _ => e.downcast_ref::<netns::NetnsError>(),
    };
    match netns {
        Some(netns::NetnsError::NotFound { .. }) => 3,
        _ => 1,
    }
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    let datapath = Datapath::new(Pins::new(&cli.pin_dir));
    let output = cli.output;
    // The datapath commands work on interfaces of the --netns namespace;
    // the client commands keep it as the namespace of the ports they make.
    let enter_netns = || cli.netns.as_deref().map(netns::enter).transpose();
    let session = Session {
        client: Client::new(&cli.socket, cli.token.clone()),
        output,
        netns: cli.netns.clone(),
    };
    match &cli.command {
        Command::Attach(args) => {
            enter_netns()?;
            args.run(&datapath)
        }
        Command::Detach(args) => args.run(&datapath, cli.netns.as_deref()),
        Command::Block(args) => {
            enter_netns()?;
            args.block(&datapath)
        }
        Command::Unblock(args) => {
            enter_netns()?;
            args.unblock(&datapath)
        }
        Command::PortSecurity(args) => {
            enter_netns()?;
            args.run(&datapath)
        }
        Command::Status => {
            enter_netns()?;
            cli::datapath::status(&datapath, output)
        }
        Command::Stats(args) => {
            enter_netns()?;
            args.run(&datapath, output)
        }
        Command::Conntrack(command) => {
            enter_netns()?;
            command.run(&datapath, output)
        }
        Command::Daemon(args) => args.run(datapath.pins().clone(), &cli.socket, &session),
        Command::Group(command) => block_on(command.run(&session)),
        Command::Rule(command) => block_on(command.run(&session)),
        Command::Port(command) => block_on(command.run(&session)),
        Command::Settings(command) => block_on(command.run(&session)),
        Command::Apply(args) => block_on(args.run(&session)),
        Command::Export => block_on(apply::export(&session)),
        Command::Trace(args) => args.run(&datapath, &session),
        Command::Protocols => catalogue::protocols(output),
        Command::Presets => catalogue::presets(output),
        Command::Hooks(HooksCommand::Install(args)) => args.run(),
        Command::Hooks(HooksCommand::Libvirt(hook)) => block_on(hook.run(&session)),
        Command::Completions { shell } => {
            clap_complete::generate(
                *shell,
                &mut Cli::command(),
                "sg-ctl",
                &mut std::io::stdout(),
            );
            Ok(())
        }
    }
}
