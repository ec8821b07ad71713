//! Build steps of the gateway:
//!
//! - generates the KServe v2 gRPC client (`proto/grpc_predict_v2.proto`) with
//!   `protox`, a pure-Rust protobuf compiler, so no system `protoc` is needed;
//! - embeds the web console's built assets (`console/dist/`, committed) as
//!   `include_bytes!` entries in `$OUT_DIR/console_assets.rs`, so the binary
//!   serves `/console/` with no files beside it and no npm at build time.

use std::path::{Path, PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/grpc_predict_v2.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    tonic_build::configure()
        .build_server(false)
        .build_client(true)
        // Tensor payloads become `bytes::Bytes`: no copy when tonic decodes them.
        .bytes(["."])
        .compile_fds(descriptors)?;
    embed_console()?;
    Ok(())
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, PathBuf)>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            walk(root, &path, out)?;
        } else {
            let rel = path
                .strip_prefix(root)
                .expect("under root")
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("/");
            out.push((rel, path.canonicalize()?));
        }
    }
    Ok(())
}

fn embed_console() -> Result<(), Box<dyn std::error::Error>> {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let dist = manifest.join("../console/dist");
    // A directory: cargo re-runs this when any file below it changes.
    println!("cargo:rerun-if-changed={}", dist.display());
    let mut files = Vec::new();
    if dist.is_dir() {
        walk(&dist, &dist, &mut files)?;
    } else {
        println!(
            "cargo:warning=console/dist is missing: /console/ will answer 404 (build it with `npm --prefix console ci && npm --prefix console run build`)"
        );
    }
    files.sort();
    let mut code = String::from(
        "/// The console's built files: (path relative to console/dist, bytes).\n\
         pub static ASSETS: &[(&str, &[u8])] = &[\n",
    );
    for (rel, abs) in &files {
        code.push_str(&format!(
            "    ({rel:?}, include_bytes!({:?})),\n",
            abs.display().to_string()
        ));
    }
    code.push_str("];\n");
    let out = PathBuf::from(std::env::var("OUT_DIR")?).join("console_assets.rs");
    std::fs::write(out, code)?;
    Ok(())
}
