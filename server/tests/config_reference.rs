//! docs/operations.md carries the configuration reference generated from the
//! `Config` structs (every field, its type, default and doc comment); this
//! test regenerates it and fails when the committed text differs. And
//! `framegate config defaults` prints a configuration that loads back as the
//! defaults.

use framegate::config::reference;

#[test]
fn operations_md_has_the_current_config_reference() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/operations.md");
    let doc = std::fs::read_to_string(path).expect("read docs/operations.md");
    let committed = reference::extract(&doc).unwrap_or_else(|| {
        panic!(
            "docs/operations.md lacks the {} … {} markers",
            reference::BEGIN,
            reference::END
        )
    });
    let fresh = reference::markdown();
    if committed != fresh {
        let first = committed
            .lines()
            .zip(fresh.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(committed.lines().count().min(fresh.lines().count()));
        panic!(
            "the configuration reference in docs/operations.md is stale (first difference at line {} of the block: {:?} vs {:?}); regenerate it with:\n\n    {}\n",
            first + 1,
            committed.lines().nth(first),
            fresh.lines().nth(first),
            reference::REGENERATE
        );
    }
}

#[test]
fn config_defaults_prints_the_default_config() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_framegate"))
        .args(["config", "defaults"])
        .output()
        .expect("run framegate config defaults");
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let parsed: framegate::config::Config = toml::from_str(&text).expect("defaults parse back");
    parsed.validate().expect("defaults are valid");
    assert_eq!(
        toml::to_string(&parsed).unwrap(),
        toml::to_string(&framegate::config::Config::default()).unwrap()
    );
    for section in [
        "[http]",
        "[session]",
        "[quic]",
        "[metering]",
        "[backend.triton]",
    ] {
        assert!(text.contains(section), "{section} missing:\n{text}");
    }
}
