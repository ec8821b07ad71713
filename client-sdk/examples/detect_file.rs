//! One-shot detection of one image file.
//!
//! ```text
//! cargo run -p framegate-client --example detect_file -- http://127.0.0.1:8080 KEY server/tests/data/dog.jpg
//! cargo run -p framegate-client --example detect_file -- 'quic://127.0.0.1:8443?pin=SHA256' KEY dog.jpg
//! ```

use framegate_client::{Client, Image};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, key, file] = args.as_slice() else {
        anyhow::bail!("usage: detect_file URL KEY IMAGE");
    };
    let client = Client::connect(url, key).await?;
    let d = client.detect(Image::from_file(file)?).await?;
    println!("{file}: {}x{} on {}", d.width, d.height, d.model);
    for o in &d.detections {
        println!(
            "  {:<14} {:.3}  [{:.1}, {:.1}, {:.1}, {:.1}]",
            o.label, o.score, o.x1, o.y1, o.x2, o.y2
        );
    }
    println!(
        "  total {} µs (infer {} µs)",
        d.timings.total_us, d.timings.infer_us
    );
    Ok(())
}
