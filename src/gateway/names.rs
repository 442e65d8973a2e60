//! Advertised tool names: `<upstream>__<tool>`, only `[A-Za-z0-9_-]` (some clients refuse
//! dots), and no longer than `mcp.max_tool_name_len`, so that a client's own prefix still fits
//! its 64-character limit. A name cut short ends in a hash of the whole tool name, so it stays
//! the same from one start to the next. Two tools that would get one name get none, and say so.

use std::collections::HashMap;

use ring::digest::{SHA256, digest};

use crate::config::NAME_SEPARATOR;

/// The advertised name of `upstream`'s `tool`.
pub fn advertised(upstream: &str, tool: &str, max_len: usize) -> String {
    let clean: String = tool
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let full = format!("{upstream}{NAME_SEPARATOR}{clean}");
    if full.len() <= max_len {
        return full;
    }
    let hash = digest(&SHA256, tool.as_bytes());
    let tag: String = hash.as_ref()[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    // ASCII only by now, so any byte index is a character boundary.
    let keep = max_len.saturating_sub(tag.len() + 1);
    format!("{}_{tag}", &full[..keep.min(full.len())])
}

/// One upstream's tools (or prompts) under their advertised names.
#[derive(Debug, Default, Clone)]
pub struct Catalog {
    /// Advertised name -> the upstream's own name.
    pub names: HashMap<String, String>,
    /// Advertised names two or more tools would share; none of them is served.
    pub collisions: Vec<(String, Vec<String>)>,
}

impl Catalog {
    /// The catalog of `upstream`'s items named `names`.
    pub fn new<'a>(upstream: &str, names: impl Iterator<Item = &'a str>, max_len: usize) -> Self {
        let mut by_name: HashMap<String, Vec<String>> = HashMap::new();
        for name in names {
            by_name
                .entry(advertised(upstream, name, max_len))
                .or_default()
                .push(name.to_owned());
        }
        let mut catalog = Self::default();
        for (name, mut originals) in by_name {
            if originals.len() == 1 {
                catalog.names.insert(name, originals.remove(0));
            } else {
                originals.sort();
                catalog.collisions.push((name, originals));
            }
        }
        catalog.collisions.sort();
        catalog
    }

    /// `items` as the client sees them: renamed as advertised, those that collide left out;
    /// and their catalog.
    pub fn advertise<T: Clone>(
        upstream: &str,
        items: &[T],
        name_of: impl Fn(&T) -> &str,
        rename: impl Fn(&mut T, String),
        max_len: usize,
    ) -> (Self, Vec<T>) {
        let catalog = Self::new(upstream, items.iter().map(&name_of), max_len);
        let by_original: HashMap<&str, &str> = catalog
            .names
            .iter()
            .map(|(adv, orig)| (orig.as_str(), adv.as_str()))
            .collect();
        let shown = items
            .iter()
            .filter_map(|item| {
                let name = by_original.get(name_of(item))?;
                let mut item = item.clone();
                rename(&mut item, (*name).to_owned());
                Some(item)
            })
            .collect();
        (catalog, shown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_prefixed_and_cleaned() {
        assert_eq!(advertised("crm", "find", 48), "crm__find");
        assert_eq!(
            advertised("crm", "files.read/all", 48),
            "crm__files_read_all"
        );
    }

    #[test]
    fn a_long_name_is_cut_with_a_stable_hash() {
        let long = "x".repeat(80);
        let a = advertised("everything", &long, 48);
        assert_eq!(a.len(), 48);
        assert_eq!(a, advertised("everything", &long, 48));
        assert_ne!(a, advertised("everything", &"x".repeat(81), 48));
    }

    #[test]
    fn tools_that_would_share_a_name_are_reported_and_not_served() {
        let c = Catalog::new("fs", ["read.file", "read_file", "write"].into_iter(), 48);
        assert_eq!(c.names.len(), 1);
        assert_eq!(
            c.collisions,
            vec![(
                "fs__read_file".to_owned(),
                vec!["read.file".to_owned(), "read_file".to_owned()]
            )]
        );
    }
}
