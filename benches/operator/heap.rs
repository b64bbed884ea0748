//! What holds the operator's heap, from the profile a `--features heap-profile` build writes
//! when it is stopped (dhat's JSON, `BBO_HEAP_PROFILE`): the bytes still allocated then (dhat's
//! "t-end"), summed by holder. A holder is named by the first frame of an allocation's stack
//! that says whose memory it is: a reflector's store and its kind, kube's Event recorder, the
//! Bitbucket or Kubernetes HTTP connections, a TLS set-up, or else the operator's own function.

use std::collections::HashMap;

use serde::Deserialize;

#[derive(Deserialize)]
struct Profile {
    pps: Vec<ProgramPoint>,
    ftbl: Vec<String>,
}

/// One allocation site: bytes and blocks live at the end, and its stack (indices into `ftbl`,
/// the allocator first).
#[derive(Deserialize)]
struct ProgramPoint {
    eb: u64,
    ebk: u64,
    fs: Vec<usize>,
}

/// One holder's share of the heap at the end.
pub struct Holder {
    pub name: String,
    pub bytes: u64,
    pub blocks: u64,
}

/// The heap's holders in `path`, largest first, and the total bytes live.
pub fn holders(path: &std::path::Path) -> (Vec<Holder>, u64) {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("reading the heap profile {}: {e}", path.display()));
    let profile: Profile = serde_json::from_str(&text).expect("dhat's JSON");
    let mut by_name: HashMap<String, (u64, u64)> = HashMap::new();
    for point in profile.pps.iter().filter(|p| p.eb > 0) {
        let frames: Vec<(&str, &str)> = point.fs.iter().map(|&i| frame(&profile.ftbl[i])).collect();
        let entry = by_name.entry(holder(&frames)).or_default();
        entry.0 += point.eb;
        entry.1 += point.ebk;
    }
    let total = by_name.values().map(|(bytes, _)| bytes).sum();
    let mut holders: Vec<Holder> = by_name
        .into_iter()
        .map(|(name, (bytes, blocks))| Holder {
            name,
            bytes,
            blocks,
        })
        .collect();
    holders.sort_by_key(|h| std::cmp::Reverse(h.bytes));
    (holders, total)
}

/// `0x55…: function (file:line:column)` as (function, file:line:column).
fn frame(text: &str) -> (&str, &str) {
    let text = text.split_once(": ").map_or(text, |(_, rest)| rest);
    match text.rsplit_once(" (") {
        Some((function, place)) => (function, place.trim_end_matches(')')),
        None => (text, ""),
    }
}

/// Whose memory an allocation with these frames is.
fn holder(frames: &[(&str, &str)]) -> String {
    for (function, place) in frames {
        if let Some(kind) = function.strip_prefix("apply_watcher_event<") {
            let kind = kind
                .trim_end_matches('>')
                .rsplit("::")
                .next()
                .unwrap_or(kind);
            return format!("the reflector's store of {kind}s");
        }
        if place.contains("kube-runtime") && place.contains("events.rs") {
            return "kube's Event recorder cache (Events of the last 6 minutes)".into();
        }
        if *function == "tls_config" {
            return "TLS set-ups (roots, session cache) of Bitbucket clients".into();
        }
    }
    let mentions = |what: &str| frames.iter().any(|(f, _)| f.contains(what));
    if mentions("hyper") && mentions("reqwest") {
        return "Bitbucket HTTP connections (hyper's buffers)".into();
    }
    if mentions("hyper") && mentions("kube_client") {
        return "Kubernetes API connections (hyper's buffers)".into();
    }
    // The operator's own files, as dhat names them (its dependencies' are named alike, `src/…`,
    // so only the operator's modules count; kube-runtime has `src/controller/` too).
    let kube = [
        "src/controller/runner.rs",
        "src/controller/future_hash_map.rs",
    ];
    let ours = |place: &str| {
        let our_dirs = [
            "src/controller/",
            "src/status/",
            "src/plugin/",
            "bitbucket-client/",
            "api/src/",
        ];
        our_dirs.iter().any(|dir| place.starts_with(dir))
            && !kube.iter().any(|file| place.starts_with(file))
            || [
                "catalog",
                "downstream",
                "flux",
                "generator",
                "http",
                "metrics",
                "webhook",
            ]
            .iter()
            .any(|module| place.starts_with(&format!("src/{module}.rs")))
    };
    if let Some((function, place)) = frames.iter().find(|(f, p)| ours(p) && !f.is_empty()) {
        let function = function.split('<').next().unwrap_or(function);
        let file = place.split(':').next().unwrap_or(place);
        return format!("{function} ({file})");
    }
    let library = frames.iter().find(|(_, p)| {
        p.contains('-')
            && !["hashbrown-", "dhat-", "allocator-api2-"]
                .iter()
                .any(|l| p.contains(l))
    });
    match library {
        Some((function, place)) => format!(
            "{} ({})",
            function.split('<').next().unwrap_or(function),
            place.split('/').next().unwrap_or(place)
        ),
        None => "elsewhere".into(),
    }
}

/// The `top` largest holders as one line: "2.9 MiB Bitbucket HTTP connections; …".
pub fn summary(holders: &[Holder], top: usize) -> String {
    holders
        .iter()
        .take(top)
        .map(|h| {
            format!(
                "{:.1} MiB {} ({} blocks)",
                h.bytes as f64 / 1_048_576.0,
                h.name,
                h.blocks
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}
