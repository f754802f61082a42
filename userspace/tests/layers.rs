//! The library's shape, checked on its source: every import points down the layers
//! (apps -> net -> stack -> tcp -> wire, device beside stack), no two files import
//! each other, and the library without its default features pulls in none of the
//! command's crates. Plain `cargo test`, no root.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The library's layers, bottom up, and what each may import from the others.
/// `device` sits beside `stack`: it may use `wire`, and `stack` may use exactly one item
/// of it, the `Device` trait it polls (the trait lives with its implementations, as the
/// design card has it; the stack knows nothing else of AF_XDP). `sim` and `fuzzing` are
/// the test kit, built only for tests and fuzzing: they may use every layer.
fn may_import(layer: &str, target: &str, path: &str) -> bool {
    let below: &[&str] = match layer {
        "wire" => &[],
        "tcp" => &["wire"],
        "stack" => &["wire", "tcp"],
        "device" => &["wire"],
        "net" => &["wire", "tcp", "stack", "device"],
        "sim" => &["wire", "tcp", "stack", "device", "net"],
        // The fuzz drivers run on the simulator's two-endpoint driver.
        "fuzzing" => &["wire", "tcp", "stack", "device", "net", "sim"],
        other => panic!("{other} is not a layer: add it to this test"),
    };
    target == layer || below.contains(&target) || (layer == "stack" && path == "device::Device")
}

/// Pairs of files that still import each other, each with where it is being undone.
/// The test fails when a pair here no longer does, so the entry goes with the fix.
const KNOWN_MUTUAL: &[(&str, &str, &str)] = &[];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file of the library (not the binary's `main.rs` and `app/`), relative to
/// `src/`, without the unit tests: files named `tests.rs`/`rfc_tests.rs` and the
/// `#[cfg(test)] mod ... { }` blocks (a test may use whatever it needs).
fn library_files() -> BTreeMap<String, String> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut paths = Vec::new();
    walk(&src(), &mut paths);
    paths
        .into_iter()
        .map(|p| {
            let rel = p
                .strip_prefix(src())
                .unwrap()
                .to_string_lossy()
                .into_owned();
            (rel, p)
        })
        .filter(|(rel, _)| {
            rel != "main.rs"
                && rel != "lib.rs"
                && !rel.starts_with("app/")
                && !rel.ends_with("tests.rs")
        })
        .map(|(rel, p)| (rel, code_only(&std::fs::read_to_string(p).unwrap())))
        .collect()
}

/// The source without comments (doc links are not imports) and without test modules.
fn code_only(source: &str) -> String {
    let uncommented: String = source
        .lines()
        .map(|l| l.find("//").map_or(l, |i| &l[..i]))
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = String::new();
    let mut rest = uncommented.as_str();
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let after = &rest[at..];
        // The item the attribute gates ends at its `;` (`,`) or at its matching `}`.
        let mut depth = 0usize;
        let mut end = after.len();
        for (i, c) in after.char_indices() {
            match c {
                '{' => depth += 1,
                // A gated field or argument: it ends where its list does.
                '}' if depth == 0 => {
                    end = i;
                    break;
                }
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = i + 1;
                        break;
                    }
                }
                ';' | ',' if depth == 0 => {
                    end = i + 1;
                    break;
                }
                _ => {}
            }
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// The paths a file names from the crate root (`crate::a::b`, `crate::{a::b, c}`), and
/// from its parent module (`super::x`), each as `a::b`.
fn imported_paths(code: &str, prefix: &str) -> Vec<String> {
    let mut paths = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find(prefix) {
        let preceded_by_ident = rest[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':');
        rest = &rest[at + prefix.len()..];
        if preceded_by_ident {
            continue;
        }
        expand(rest, String::new(), &mut paths);
    }
    paths
}

/// Expands the path (or brace group) at the start of `text` onto `base`.
fn expand(text: &str, base: String, out: &mut Vec<String>) {
    let text = text.trim_start();
    if let Some(group) = text.strip_prefix('{') {
        let mut depth = 0usize;
        let mut start = 0;
        for (i, c) in group.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => {
                    expand(&group[start..i], base.clone(), out);
                    return;
                }
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand(&group[start..i], base.clone(), out);
                    start = i + 1;
                }
                _ => {}
            }
        }
        return;
    }
    let segment: String = text
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    if segment.is_empty() || segment == "self" {
        if !base.is_empty() {
            out.push(base);
        }
        return;
    }
    let joined = if base.is_empty() {
        segment.clone()
    } else {
        format!("{base}::{segment}")
    };
    match text[segment.len()..].strip_prefix("::") {
        Some(more) => expand(more, joined, out),
        None => out.push(joined),
    }
}

/// The layer of a file: its top directory, or its name for a top-level file.
fn layer_of(file: &str) -> &str {
    file.split('/').next().unwrap().trim_end_matches(".rs")
}

/// The file a path from the crate root lands in: the deepest `a/b.rs` or `a/b/mod.rs`.
fn file_of(path: &str, files: &BTreeMap<String, String>) -> Option<String> {
    let segments: Vec<&str> = path.split("::").collect();
    (1..=segments.len()).rev().find_map(|n| {
        let dir = segments[..n].join("/");
        [format!("{dir}.rs"), format!("{dir}/mod.rs")]
            .into_iter()
            .find(|f| files.contains_key(f))
    })
}

/// Every path a file imports from the crate, as a path from the crate root.
fn crate_paths(file: &str, code: &str) -> Vec<String> {
    let mut paths = imported_paths(code, "crate::");
    // `super::` in `a/b.rs` is module `a`; in `a/mod.rs` or `a.rs` it is the crate.
    let parent = match file.rsplit_once('/') {
        Some((dir, name)) if name != "mod.rs" => Some(dir.replace('/', "::")),
        Some((dir, _)) => dir.rsplit_once('/').map(|(up, _)| up.replace('/', "::")),
        None => None,
    };
    for p in imported_paths(code, "super::") {
        paths.push(match &parent {
            Some(parent) => format!("{parent}::{p}"),
            None => p,
        });
    }
    paths
}

#[test]
fn every_import_points_down_the_layers() {
    let files = library_files();
    assert!(files.len() > 30, "found only {files:?}");
    let mut wrong = Vec::new();
    for (file, code) in &files {
        let layer = layer_of(file);
        for path in crate_paths(file, code) {
            let target = path.split("::").next().unwrap();
            if !may_import(layer, target, &path) {
                wrong.push(format!("{file} ({layer}) uses {path}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports from a layer above, or sideways:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn no_two_files_import_each_other() {
    let files = library_files();
    let mut edges: BTreeSet<(String, String)> = BTreeSet::new();
    for (file, code) in &files {
        for path in crate_paths(file, code) {
            if let Some(target) = file_of(&path, &files)
                && target != *file
            {
                edges.insert((file.clone(), target));
            }
        }
    }
    // A module's `mod.rs` declares and re-exports its files, and they use what it
    // declares: that parent-child pair is one unit, not two files in a cycle.
    let is_module_root = |f: &str| f.ends_with("mod.rs");
    let mut mutual: Vec<(String, String)> = edges
        .iter()
        .filter(|(a, b)| a < b && edges.contains(&(b.clone(), a.clone())))
        .filter(|(a, b)| !is_module_root(a) && !is_module_root(b))
        .cloned()
        .collect();
    mutual.sort();
    for (a, b, why) in KNOWN_MUTUAL {
        let pair = (a.to_string(), b.to_string());
        assert!(
            mutual.contains(&pair),
            "{a} and {b} no longer import each other ({why}): remove them from KNOWN_MUTUAL"
        );
        mutual.retain(|p| *p != pair);
    }
    assert!(
        mutual.is_empty(),
        "files that import each other:\n{}",
        mutual
            .iter()
            .map(|(a, b)| format!("{a} <-> {b}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn the_path_parser_sees_groups_nesting_and_parents() {
    let code = "use crate::{wire::{self, SeqNum}, tcp::Instant};\nlet x = crate::stack::Stack::new();\nuse super::shared::Conn;";
    assert_eq!(
        imported_paths(code, "crate::"),
        ["wire", "wire::SeqNum", "tcp::Instant", "stack::Stack::new"]
    );
    assert_eq!(
        crate_paths("net/driver.rs", code).last().unwrap(),
        "net::shared::Conn"
    );
    let with_tests = "use crate::wire;\n#[cfg(test)]\nmod tests {\n use crate::net::x; { }\n}\nuse crate::tcp; // crate::net\n";
    assert_eq!(
        imported_paths(&code_only(with_tests), "crate::"),
        ["wire", "tcp"]
    );
    assert!(may_import("stack", "device", "device::Device"));
    assert!(!may_import(
        "stack",
        "device",
        "device::memory::MemoryDevice"
    ));
    assert!(!may_import("wire", "tcp", "tcp::SeqNum"));
}

#[test]
fn the_library_alone_pulls_in_none_of_the_commands_crates() {
    let output = Command::new(env!("CARGO"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "tree",
            "-p",
            "userspace",
            "--no-default-features",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ])
        .output()
        .expect("cargo tree runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let tree = String::from_utf8(output.stdout).unwrap();
    let crates: BTreeSet<&str> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(
        crates.contains("aya") && crates.contains("etherparse"),
        "{tree}"
    );
    let unwanted = [
        "clap",
        "rustls",
        "indicatif",
        "tokio",
        "anyhow",
        "signal-hook",
    ];
    let found: Vec<&&str> = unwanted.iter().filter(|c| crates.contains(**c)).collect();
    assert!(found.is_empty(), "the library pulls in {found:?}:\n{tree}");
}
