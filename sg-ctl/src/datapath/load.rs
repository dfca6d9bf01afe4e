//! Loading sg's eBPF object: one instance per port slot (or a tracer of
//! one), its maps created (at their sizes) or reused from their pins, its
//! programs through the verifier.

use std::fs;

use aya::maps::MapInfo;
use aya::{
    Ebpf, EbpfLoader,
    programs::{ProgramError, SchedClassifier, Xdp},
};
use sg_common::{
    CONNTRACK_PRESENCE_GLOBAL, CONNTRACK_RING_GLOBAL, MAX_REMOTE_ENTRIES, PORT_SLOT_GLOBAL,
    PRESENCE_COUNTERS_PER_ENTRY, REMOTE_GROUPS_GLOBAL, TRACE_GLOBAL, map_names, presence_counters,
    program_names, remote_entries, remote_groups,
};

use super::{
    error::{Context as _, DatapathError, Result},
    pins::Pins,
    sizes::MapSizes,
};

/// The compiled eBPF object, embedded at build time.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("SG_EBPF_OBJECT"));

/// Loads the eBPF object for one port slot, creating or reusing the pinned
/// maps: the port's programs or (`trace`) a tracer of the port. The
/// programs are loaded by `xdp_program` and `tc_program`, and attached
/// nowhere.
/// Maps that are not pinned yet are created with `sizes`.
pub(super) fn instance(pins: &Pins, sizes: &MapSizes, slot: u32, trace: bool) -> Result<Ebpf> {
    let maps = pins.maps();
    fs::create_dir_all(&maps).context(|| format!("creating {}", maps.display()))?;
    let mut loader = EbpfLoader::new();
    for (name, entries) in sizes.iter() {
        loader.map_max_entries(name, entries);
    }
    check_layouts(pins)?;
    // Maps pinned by a version without the counts beside them: a table of
    // flows with no presence counters would have its flows taken as
    // absent, a blocklist with no counts its prefixes skipped.
    for (map, counted_by) in [
        (map_names::CONNTRACK, map_names::CONNTRACK_PRESENCE),
        (map_names::BLOCKED, map_names::PORT_BLOCKS),
    ] {
        if pins.map(map).exists() && !pins.map(counted_by).exists() {
            return Err(DatapathError::IncompatiblePins {
                dir: maps,
                source: format!("{map} without {counted_by}").into(),
            });
        }
    }
    let ring = ring_entries(pins, sizes);
    loader.map_max_entries(map_names::CONNTRACK_RING, ring);
    let presence = pinned_entries(pins, map_names::CONNTRACK_PRESENCE).map_or_else(
        || presence_counters(ring),
        |e| e * PRESENCE_COUNTERS_PER_ENTRY,
    );
    loader.map_max_entries(
        map_names::CONNTRACK_PRESENCE,
        presence / PRESENCE_COUNTERS_PER_ENTRY,
    );
    // Sized in entries, made in groups of slots; the trie has room beside
    // its own entries for every address the groups cannot take.
    let groups = pinned_entries(pins, map_names::REMOTE_EXACT).unwrap_or_else(|| {
        remote_groups(
            sizes
                .get(map_names::REMOTE_EXACT)
                .unwrap_or(MAX_REMOTE_ENTRIES),
        )
    });
    loader.map_max_entries(map_names::REMOTE_EXACT, groups);
    loader.map_max_entries(
        map_names::REMOTE,
        sizes
            .get(map_names::REMOTE)
            .unwrap_or(MAX_REMOTE_ENTRIES)
            .saturating_add(remote_entries(groups)),
    );
    let ebpf = loader
        .default_map_pin_directory(&maps)
        .override_global(REMOTE_GROUPS_GLOBAL, &groups, true)
        .override_global(PORT_SLOT_GLOBAL, &slot, true)
        .override_global(CONNTRACK_RING_GLOBAL, &ring, true)
        .override_global(CONNTRACK_PRESENCE_GLOBAL, &presence, true)
        .override_global(TRACE_GLOBAL, &u32::from(trace), true)
        .load(EBPF_OBJECT)
        .map_err(|source| match source {
            aya::EbpfError::MapError(_) => DatapathError::IncompatiblePins {
                dir: maps,
                source: source.into(),
            },
            source => DatapathError::Kernel {
                what: "loading the eBPF object".to_string(),
                source: Box::new(source),
            },
        })?;
    Ok(ebpf)
}

/// The entries of the ring of started flows, which the programs must know:
/// the pinned ring's; when there is none, as many as the table holds (the
/// pinned one's, or the size it will be made with). The presence counters
/// are as many as `presence_counters` gives for it.
fn ring_entries(pins: &Pins, sizes: &MapSizes) -> u32 {
    pinned_entries(pins, map_names::CONNTRACK_RING)
        .or_else(|| pinned_entries(pins, map_names::CONNTRACK))
        .or_else(|| sizes.get(map_names::CONNTRACK))
        .unwrap_or(sg_common::MAX_CONNTRACK_ENTRIES)
}

/// Refuses pins of maps whose keys or values are not laid out as this
/// version's: the programs would read them as their own and take them to
/// mean something else (a flow absent, a count off). Their sizes may
/// differ; they are set when the maps are made.
fn check_layouts(pins: &Pins) -> Result<()> {
    let object = aya_obj::Object::parse(EBPF_OBJECT).map_err(|source| DatapathError::Kernel {
        what: "reading the eBPF object".to_string(),
        source: Box::new(source),
    })?;
    let incompatible = |source: String| DatapathError::IncompatiblePins {
        dir: pins.maps(),
        source: source.into(),
    };
    for (name, map) in &object.maps {
        let Ok(pinned) = MapInfo::from_pin(pins.map(name)) else {
            continue;
        };
        let pinned_type = pinned
            .map_type()
            .map_err(|e| incompatible(format!("{name} is of a map type unknown here: {e}")))?;
        let pinned = (
            pinned_type as u32,
            pinned.key_size(),
            pinned.value_size(),
            pinned.map_flags(),
        );
        let wanted = (
            map.map_type(),
            map.key_size(),
            map.value_size(),
            map.map_flags(),
        );
        if pinned != wanted {
            let layout = |(kind, key, value, flags): (u32, u32, u32, u32)| {
                format!("type {kind}, {key}-byte keys, {value}-byte values, flags {flags:#x}")
            };
            return Err(incompatible(format!(
                "{name} is pinned with {}, where this version has {}",
                layout(pinned),
                layout(wanted)
            )));
        }
    }
    Ok(())
}

/// The entries of a pinned map, if it is pinned.
fn pinned_entries(pins: &Pins, name: &str) -> Option<u32> {
    MapInfo::from_pin(pins.map(name))
        .ok()
        .map(|i| i.max_entries())
}

/// The XDP program of an object from `instance`, loaded (through the
/// verifier, unless it was already).
pub(super) fn xdp_program(ebpf: &mut Ebpf) -> Result<&mut Xdp> {
    let program: &mut Xdp = ebpf
        .program_mut(program_names::XDP)
        .expect("the object has the XDP program")
        .try_into()
        .context(|| "the XDP program has another type".to_string())?;
    if program.fd().is_err() {
        verify(|| program.load())
            .context(|| "the kernel's verifier rejected the XDP program".to_string())?;
    }
    Ok(program)
}

/// A TC program of an object from `instance`, `program_names::TC` or
/// `program_names::TC_REPLY`, loaded (unless it was already).
pub(super) fn tc_program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut SchedClassifier> {
    let program: &mut SchedClassifier = ebpf
        .program_mut(name)
        .expect("the object has the TC programs")
        .try_into()
        .context(|| format!("the program {name} has another type"))?;
    if program.fd().is_err() {
        verify(|| program.load())
            .context(|| format!("the kernel's verifier rejected the program {name}"))?;
    }
    Ok(program)
}

/// Loads a program. The verifier gives up with EAGAIN when a signal
/// arrives while it works, which a long verification makes likely; like
/// libbpf, load again a few times.
fn verify(
    mut load: impl FnMut() -> std::result::Result<(), ProgramError>,
) -> std::result::Result<(), ProgramError> {
    const ATTEMPTS: usize = 5;
    let mut attempt = 1;
    loop {
        match load() {
            Err(ProgramError::LoadError { io_error, .. })
                if io_error.raw_os_error() == Some(libc::EAGAIN) && attempt < ATTEMPTS =>
            {
                attempt += 1;
            }
            result => return result,
        }
    }
}
