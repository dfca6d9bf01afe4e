//! How many entries the shared maps that grow with policies, addresses and
//! flows hold. A size is set when the maps are created, by the first attach
//! while none are pinned; maps already pinned keep theirs (the capacities a
//! change is checked against are read from them). The ring of started
//! flows, `SG_CONNTRACK_RING`, takes the size of `SG_CONNTRACK`;
//! `SG_REMOTE_EXACT` is sized in addresses and made in groups of slots for
//! them, and `SG_REMOTE` with room for those beside its own (see `load`).

use std::collections::BTreeMap;

use sg_common::{
    MAX_BLOCKED_PREFIXES, MAX_CONNTRACK_ENTRIES, MAX_FRAGMENT_ENTRIES, MAX_L4_ENTRIES,
    MAX_LOCAL_ENTRIES, MAX_OWNED_PREFIXES, MAX_REMOTE_ENTRIES, MAX_VERDICT_ENTRIES, map_names,
};

/// The maps that may be sized, with their default sizes.
const DEFAULTS: [(&str, u32); 10] = [
    (map_names::LOCAL, MAX_LOCAL_ENTRIES),
    (map_names::REMOTE, MAX_REMOTE_ENTRIES),
    (map_names::REMOTE_EXACT, MAX_REMOTE_ENTRIES),
    (map_names::L4, MAX_L4_ENTRIES),
    (map_names::L4_EXACT, MAX_L4_ENTRIES),
    (map_names::VERDICT, MAX_VERDICT_ENTRIES),
    (map_names::OWNED, MAX_OWNED_PREFIXES),
    (map_names::BLOCKED, MAX_BLOCKED_PREFIXES),
    (map_names::FRAGMENTS, MAX_FRAGMENT_ENTRIES),
    (map_names::CONNTRACK, MAX_CONNTRACK_ENTRIES),
];

/// The size of every map that may be sized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapSizes(BTreeMap<&'static str, u32>);

impl Default for MapSizes {
    fn default() -> Self {
        MapSizes(DEFAULTS.into_iter().collect())
    }
}

impl MapSizes {
    /// Sizes `NAME=ENTRIES` settings, each as `--map-size` takes it, over
    /// the defaults.
    pub fn parse<'a>(settings: impl IntoIterator<Item = &'a str>) -> Result<MapSizes, String> {
        let mut sizes = MapSizes::default();
        for setting in settings {
            let (name, entries) = setting.split_once('=').ok_or_else(|| {
                format!("--map-size '{setting}': write NAME=ENTRIES, e.g. SG_REMOTE_EXACT=524288")
            })?;
            let (name, default) = DEFAULTS
                .into_iter()
                .find(|(known, _)| *known == name)
                .ok_or_else(|| {
                    let names: Vec<&str> = DEFAULTS.iter().map(|(name, _)| *name).collect();
                    format!(
                        "--map-size '{name}': not a map that may be sized; use one of {}",
                        names.join(", ")
                    )
                })?;
            let entries: u32 = entries
                .parse()
                .ok()
                .filter(|&entries| entries > 0)
                .ok_or_else(|| {
                    format!(
                        "--map-size {name}: '{entries}' is not a number of entries; use 1 or \
                         more (its default is {default})"
                    )
                })?;
            sizes.0.insert(name, entries);
        }
        Ok(sizes)
    }

    /// Every map that may be sized with its size.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u32)> + '_ {
        self.0.iter().map(|(name, entries)| (*name, *entries))
    }

    /// The size of a map that may be sized.
    pub fn get(&self, name: &str) -> Option<u32> {
        self.0.get(name).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_their_defaults_and_name_what_is_wrong() {
        let sizes = MapSizes::parse(["SG_REMOTE_EXACT=524288"]).unwrap();
        assert_eq!(sizes.get(map_names::REMOTE_EXACT), Some(524_288));
        assert_eq!(sizes.get(map_names::L4), Some(MAX_L4_ENTRIES));
        assert_eq!(sizes.get(map_names::PORTS), None);
        let err = MapSizes::parse(["SG_PORTS=8"]).unwrap_err();
        assert!(err.contains("SG_CONNTRACK"), "{err}");
        let err = MapSizes::parse(["SG_L4=0"]).unwrap_err();
        assert!(err.contains("its default is 262144"), "{err}");
        assert!(
            MapSizes::parse(["SG_L4"])
                .unwrap_err()
                .contains("NAME=ENTRIES")
        );
    }
}
