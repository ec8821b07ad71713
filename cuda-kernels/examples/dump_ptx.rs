//! Prints the PTX of the kernels (needs NVRTC, not a GPU):
//! `cargo run -p framegate-cuda --example dump_ptx -- 90`.

fn main() {
    let arch: i32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(90);
    match framegate_cuda::compile_kernels(framegate_cuda::ArchChoice::Ptx(arch)) {
        Ok(framegate_cuda::KernelImage::Ptx(s)) => print!("{s}"),
        Ok(_) => unreachable!("asked for PTX"),
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
}
