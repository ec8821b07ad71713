//! The console's files as the gateway serves them: embedded, fresh against
//! the sources, right content types and caching, index.html for page paths,
//! no way out of the embedded set, no key needed for the page while every
//! API call still needs one.

mod support;

use std::path::Path;

use sha2::{Digest, Sha256};
use support::{repo_root, Gateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The SHA-256 that `console/scripts/source-hash.mjs` writes into
/// `dist/SOURCE-SHA256` (same files, same order, same framing).
fn source_hash(console: &Path) -> (String, usize) {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p.strip_prefix(root).unwrap();
                out.push(
                    rel.components()
                        .map(|c| c.as_os_str().to_string_lossy().into_owned())
                        .collect::<Vec<_>>()
                        .join("/"),
                );
            }
        }
    }
    let mut files: Vec<String> = [
        "index.html",
        "package.json",
        "package-lock.json",
        "tsconfig.json",
        "vite.config.ts",
    ]
    .map(String::from)
    .to_vec();
    walk(console, &console.join("src"), &mut files);
    files.sort();
    let mut h = Sha256::new();
    for f in &files {
        h.update(f.as_bytes());
        h.update([0]);
        h.update(std::fs::read(console.join(f)).unwrap());
        h.update([0]);
    }
    (hex::encode(h.finalize()), files.len())
}

#[test]
fn committed_dist_is_built_from_the_committed_sources() {
    let console = repo_root().join("console");
    let (hash, n) = source_hash(&console);
    let stamped = std::fs::read_to_string(console.join("dist/SOURCE-SHA256"))
        .expect("console/dist/SOURCE-SHA256 (run `npm --prefix console run build`)");
    assert_eq!(
        stamped.trim(),
        hash,
        "console/dist is stale against {n} source files: run `npm --prefix console ci && npm --prefix console run build` and commit console/dist"
    );
    // Every file index.html loads is there.
    let index = std::fs::read_to_string(console.join("dist/index.html")).unwrap();
    for part in index.split("/console/").skip(1) {
        let file = part.split('"').next().unwrap();
        assert!(
            console.join("dist").join(file).exists(),
            "index.html loads missing {file}"
        );
    }
}

async fn raw_get(gw: &Gateway, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn console_is_served_from_the_binary() {
    // The synthetic backend: no model to load, the console does not care.
    let gw = Gateway::start(&["--backend", "synthetic", "--quic-listen", "off"]).await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();

    // The page needs no key.
    let r = client.get(gw.url("/console/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/html; charset=utf-8");
    assert_eq!(r.headers()["cache-control"], "no-cache");
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    assert!(r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("default-src 'self'"));
    let index = r.text().await.unwrap();
    assert_eq!(
        index,
        std::fs::read_to_string(repo_root().join("console/dist/index.html")).unwrap(),
        "the embedded index.html is the committed one"
    );

    // Its script and style: hashed names, cached for good, right types.
    let mut seen = 0;
    for part in index.split("/console/assets/").skip(1) {
        let name = part.split('"').next().unwrap();
        let r = client
            .get(gw.url(&format!("/console/assets/{name}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{name}");
        let ct = r.headers()["content-type"].to_str().unwrap().to_string();
        assert!(
            (name.ends_with(".js") && ct == "text/javascript; charset=utf-8")
                || (name.ends_with(".css") && ct == "text/css; charset=utf-8"),
            "{name}: {ct}"
        );
        assert_eq!(
            r.headers()["cache-control"],
            "public, max-age=31536000, immutable"
        );
        let body = r.bytes().await.unwrap();
        assert_eq!(
            body.as_ref(),
            std::fs::read(repo_root().join("console/dist/assets").join(name)).unwrap()
        );
        seen += 1;
    }
    assert!(seen >= 2, "index.html loads a script and a style");

    // /console → /console/; page paths → the app; missing files → 404.
    let r = client.get(gw.url("/console")).send().await.unwrap();
    assert_eq!(r.status(), 308);
    assert_eq!(r.headers()["location"], "/console/");
    let r = client.get(gw.url("/console/usage")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), index);
    for missing in [
        "/console/assets/nope.js",
        "/console/favicon.ico",
        "/console/assets/deep",
    ] {
        let r = client.get(gw.url(missing)).send().await.unwrap();
        assert_eq!(r.status(), 404, "{missing}");
    }

    // No way out of the embedded files, however the path is spelled.
    for evil in [
        "/console/../Cargo.toml",
        "/console/%2e%2e/Cargo.toml",
        "/console/..%2fCargo.toml",
        "/console/assets/..%2f..%2f..%2fCargo.toml",
        "/console/%2fetc%2fpasswd",
        "/console/..%5c..%5cCargo.toml",
    ] {
        let resp = raw_get(&gw, evil).await;
        let status = resp.lines().next().unwrap_or("");
        assert!(
            status.contains(" 404 ") || status.contains(" 400 "),
            "{evil}: {status}"
        );
        assert!(
            !resp.contains("[workspace]") && !resp.contains("root:"),
            "{evil} leaked a file"
        );
    }

    // The API behind it still wants a key.
    let r = client.get(gw.url("/v1/models")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = client
        .get(gw.url("/v1/usage?from=0&to=3600"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}
