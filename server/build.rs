//! Generates the KServe v2 gRPC client (`proto/grpc_predict_v2.proto`) with
//! `protox`, a pure-Rust protobuf compiler, so no system `protoc` is needed.

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
    Ok(())
}
