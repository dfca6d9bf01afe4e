//! Following interfaces as they come and go: a thread per network
//! namespace the daemon's ports are in, on a netlink socket of that
//! namespace subscribed to its link events (RTM_NEWLINK, RTM_DELLINK), so
//! that a port's interface is enforced moments after it appears. The
//! programs of a port whose interface is not there yet are loaded
//! beforehand (`Datapath::prepare`); when the interface appears, its
//! namespace's thread attaches them there and then, and wakes the
//! reconcile, which finds the port attached.

use std::{
    collections::{BTreeSet, HashMap},
    io,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{LinkAttribute, LinkMessage},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use crate::{
    datapath::{Datapath, Prepared},
    netns,
};

/// `RTMGRP_LINK` of `<linux/rtnetlink.h>`: link events.
const RTMGRP_LINK: u32 = 1;
/// How often a watcher looks whether it should stop.
const STOP_CHECK: Duration = Duration::from_millis(500);

/// Where an interface is: its namespace (the daemon's own when `None`) and
/// its name.
pub type Place = (Option<String>, String);

/// The prepared programs of ports whose interfaces are awaited.
pub type Awaited = Arc<Mutex<HashMap<Place, Prepared>>>;

/// The threads following the namespaces of the daemon's ports.
pub struct Links {
    datapath: Arc<Datapath>,
    awaited: Awaited,
    wake: Arc<dyn Fn() + Send + Sync>,
    watchers: HashMap<Option<String>, Arc<AtomicBool>>,
}

impl Links {
    /// `wake` asks for a reconcile, after an interface was attached or
    /// went away.
    pub fn new(datapath: Arc<Datapath>, wake: Arc<dyn Fn() + Send + Sync>) -> Links {
        Links {
            datapath,
            awaited: Arc::default(),
            wake,
            watchers: HashMap::new(),
        }
    }

    pub fn awaited(&self) -> &Awaited {
        &self.awaited
    }

    /// Follows exactly the namespaces of `wanted`: starts a thread for each
    /// new one (where the namespace exists; a later call tries again), and
    /// stops those of namespaces no port is in any more.
    pub fn follow(&mut self, wanted: &BTreeSet<Option<String>>) {
        self.watchers.retain(|namespace, stop| {
            let keep = wanted.contains(namespace);
            if !keep {
                stop.store(true, Ordering::Relaxed);
            }
            keep
        });
        for namespace in wanted {
            if self.watchers.contains_key(namespace) {
                continue;
            }
            let stop = Arc::new(AtomicBool::new(false));
            match self.watch(namespace.clone(), stop.clone()) {
                Ok(()) => {
                    self.watchers.insert(namespace.clone(), stop);
                }
                Err(e) => eprintln!(
                    "sg-ctl daemon: following the interfaces of {}: {e}",
                    describe(namespace.as_deref())
                ),
            }
        }
        self.awaited
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(namespace, _), _| wanted.contains(namespace));
    }

    /// Starts the thread of one namespace, once its socket listens.
    fn watch(&self, namespace: Option<String>, stop: Arc<AtomicBool>) -> io::Result<()> {
        let (datapath, awaited, wake) = (
            self.datapath.clone(),
            self.awaited.clone(),
            self.wake.clone(),
        );
        let (ready, listening) = std::sync::mpsc::channel();
        thread::spawn(move || {
            let socket = (|| {
                if let Some(name) = &namespace {
                    netns::enter(name).map_err(io::Error::other)?;
                }
                let mut socket = Socket::new(NETLINK_ROUTE)?;
                socket.bind(&SocketAddr::new(0, RTMGRP_LINK))?;
                let timeout = nix::sys::time::TimeVal::new(0, STOP_CHECK.as_micros() as _);
                nix::sys::socket::setsockopt(
                    &socket,
                    nix::sys::socket::sockopt::ReceiveTimeout,
                    &timeout,
                )?;
                Ok(socket)
            })();
            let socket = match socket {
                Ok(socket) => {
                    let _ = ready.send(Ok(()));
                    socket
                }
                Err(e) => {
                    let _ = ready.send(Err(e));
                    return;
                }
            };
            let mut buf = vec![0u8; 64 * 1024];
            while !stop.load(Ordering::Relaxed) {
                let received = match socket.recv(&mut &mut buf[..], 0) {
                    Ok(n) => n,
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock
                                | io::ErrorKind::TimedOut
                                | io::ErrorKind::Interrupted
                        ) =>
                    {
                        continue;
                    }
                    Err(e) => {
                        eprintln!(
                            "sg-ctl daemon: link events of {}: {e}",
                            describe(namespace.as_deref())
                        );
                        return;
                    }
                };
                let seen = Instant::now();
                let events = link_events(&buf[..received.min(buf.len())]);
                for (iface, appeared) in &events {
                    if *appeared {
                        let place = (namespace.clone(), iface.clone());
                        attach_awaited(&datapath, &awaited, &place, seen);
                    }
                }
                if !events.is_empty() {
                    wake();
                }
            }
        });
        listening
            .recv()
            .unwrap_or_else(|_| Err(io::Error::other("the watcher ended")))
    }
}

/// Attaches the prepared programs of an interface that appeared, if it is
/// awaited; in its namespace (the calling thread's).
fn attach_awaited(datapath: &Datapath, awaited: &Awaited, place: &Place, seen: Instant) {
    let mut awaited = awaited.lock().unwrap_or_else(|e| e.into_inner());
    let Some(prepared) = awaited.get_mut(place) else {
        return;
    };
    match datapath.attach_prepared(prepared) {
        Ok(_) => {
            eprintln!(
                "sg-ctl daemon: {} in {} enforced {:.1} ms after it appeared",
                place.1,
                describe(place.0.as_deref()),
                seen.elapsed().as_secs_f64() * 1e3
            );
            awaited.remove(place);
        }
        Err(e) => eprintln!("sg-ctl daemon: attaching {} as it appeared: {e}", place.1),
    }
}

/// The interfaces that appeared (`true`) or went (`false`) in a datagram
/// of link events.
fn link_events(datagram: &[u8]) -> Vec<(String, bool)> {
    let mut events = Vec::new();
    let mut at = 0;
    while at < datagram.len() {
        let Ok(message) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&datagram[at..])
        else {
            break;
        };
        let length = message.header.length as usize;
        let event = match message.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => Some((link, true)),
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(link)) => Some((link, false)),
            _ => None,
        };
        if let Some((link, appeared)) = event
            && let Some(name) = name_of(&link)
        {
            events.push((name, appeared));
        }
        if length == 0 {
            break;
        }
        at += length.next_multiple_of(4);
    }
    events
}

fn name_of(link: &LinkMessage) -> Option<String> {
    link.attributes
        .iter()
        .find_map(|attribute| match attribute {
            LinkAttribute::IfName(name) => Some(name.clone()),
            _ => None,
        })
}

fn describe(namespace: Option<&str>) -> String {
    match namespace {
        Some(name) => format!("network namespace {name}"),
        None => "the daemon's network namespace".to_string(),
    }
}
