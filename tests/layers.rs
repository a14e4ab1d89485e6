//! The layers run one way: no module imports from a layer above its own,
//! so there is no cycle between them. Reads the sources (`crate::LAYER`
//! paths, code only, comments skipped) and fails with every offending line.
//! `cargo test --test layers -- --nocapture` prints the module graph that
//! `docs/architecture.md` shows.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Ground first. A layer may use any layer before it in this list.
const LAYERS: &[&str] = &[
    "http", "ws", "io", "conn", "tls", "hub", "broker", "app", "shard", "config", "runtime",
];

fn rank(layer: &str) -> Option<usize> {
    LAYERS.iter().position(|l| *l == layer)
}

/// The layer a source file belongs to: its directory under `src/`, or its
/// file stem for a top-level module file (`src/config.rs`).
fn layer_of(path: &Path, src: &Path) -> Option<String> {
    let rel = path.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    Some(first.trim_end_matches(".rs").to_string())
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src/ is readable") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn no_layer_imports_from_a_layer_above_it() {
    let src = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/src"));
    let mut files = Vec::new();
    sources(&src, &mut files);
    files.sort();
    let mut edges = BTreeSet::new();
    let mut upward = Vec::new();
    for path in &files {
        let Some(from) = layer_of(path, &src) else {
            continue;
        };
        let Some(from_rank) = rank(&from) else {
            // lib.rs and main.rs sit above every layer.
            continue;
        };
        let text = std::fs::read_to_string(path).expect("source is UTF-8");
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for (at, _) in code.match_indices("crate::") {
                let rest = &code[at + "crate::".len()..];
                let to: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                let Some(to_rank) = rank(&to) else {
                    continue;
                };
                if to == from {
                    continue;
                }
                edges.insert((from.clone(), to.clone()));
                if to_rank > from_rank {
                    upward.push(format!(
                        "{}:{}: {from} imports {to}: {}",
                        path.display(),
                        n + 1,
                        line.trim()
                    ));
                }
            }
        }
    }
    println!("module graph (layer -> layers it imports):");
    for layer in LAYERS {
        let to: Vec<&str> = edges
            .iter()
            .filter(|(f, _)| f == layer)
            .map(|(_, t)| t.as_str())
            .collect();
        println!("  {layer} -> {}", to.join(", "));
    }
    assert!(
        upward.is_empty(),
        "imports from a higher layer (order, ground first: {LAYERS:?}):\n{}",
        upward.join("\n")
    );
    // The walk saw every layer, so a renamed directory cannot pass
    // unchecked.
    for layer in LAYERS {
        assert!(
            files
                .iter()
                .any(|p| layer_of(p, &src).as_deref() == Some(*layer)),
            "no sources for layer {layer}"
        );
    }
}
