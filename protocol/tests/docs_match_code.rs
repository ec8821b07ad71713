//! docs/protocol.md stays in step with the code: it embeds the schema
//! verbatim, and its tables list every enum's wire value and string name and
//! every error code's HTTP status and WebSocket close code as the crate
//! defines them.

use framegate_protocol::generated::framegate::v_1 as fb;
use framegate_protocol::*;

fn doc() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol.md");
    std::fs::read_to_string(path).expect("read docs/protocol.md")
}

#[test]
fn schema_is_embedded_verbatim() {
    assert!(
        doc().contains(SCHEMA.trim_end()),
        "docs/protocol.md must contain protocol/schema/framegate.fbs verbatim in its \"The schema\" section"
    );
}

#[test]
fn error_table_matches_code() {
    let doc = doc();
    for (i, code) in ErrorCode::ALL.iter().enumerate() {
        let wire = i + 1;
        assert!(fb::ErrorCode(wire as u16).variant_name().is_some());
        let row = format!(
            "| {wire} | `{}` | {} | {} | {} |",
            code.as_str(),
            code.http_status(),
            code.ws_close_code(),
            if code.default_retryable() {
                "yes"
            } else {
                "no"
            }
        );
        assert!(
            doc.contains(&row),
            "docs/protocol.md lacks the error row {row:?}"
        );
    }
}

#[test]
fn enum_tables_match_code() {
    let doc = doc();
    for (i, p) in OverloadPolicy::ALL.iter().enumerate() {
        let name = fb::OverloadPolicy(i as u8).variant_name().unwrap();
        let row = format!("| {i} | `{name}` | `{}`", p.as_str());
        assert!(doc.contains(&row), "missing {row:?}");
    }
    for (i, c) in Codec::ALL.iter().enumerate() {
        let wire = i + 1;
        let name = fb::Codec(wire as u8).variant_name().unwrap();
        let row = format!("| {wire} | `{name}` | `{}` |", c.as_str());
        assert!(doc.contains(&row), "missing {row:?}");
    }
    for (i, r) in DropReason::ALL.iter().enumerate() {
        let wire = i + 1;
        let name = fb::DropReason(wire as u8).variant_name().unwrap();
        let row = format!("| {wire} | `{name}` | `{}` |", r.as_str());
        assert!(doc.contains(&row), "missing {row:?}");
    }
}
