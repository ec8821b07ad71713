//! Compiles the kernels with NVRTC (needs the NVRTC library, not a GPU), and
//! checks the "no CUDA" errors say what is missing.

use framegate_cuda::{
    compile_kernels, cuda_available, nvrtc_version, ArchChoice, CudaError, GpuPreprocessor,
    KernelImage, OutputDType, PreprocessSpec,
};

fn require_gpu() -> bool {
    std::env::var_os("FRAMEGATE_REQUIRE_GPU").is_some_and(|v| v == "1")
}

#[test]
fn kernels_compile_with_nvrtc() {
    let version = match nvrtc_version() {
        Ok(v) => v,
        Err(e @ CudaError::NvrtcNotFound { .. }) if !require_gpu() => {
            println!("SKIPPED: no NVRTC library ({e})");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    println!("NVRTC {}.{}", version.0, version.1);
    for arch in [
        ArchChoice::Cubin(75),
        ArchChoice::Cubin(80),
        ArchChoice::Cubin(90),
        ArchChoice::Ptx(75),
    ] {
        let img = compile_kernels(arch).unwrap_or_else(|e| panic!("{arch:?}: {e}"));
        match &img {
            KernelImage::Cubin(b) => assert!(b.starts_with(b"\x7fELF"), "{arch:?} cubin is an ELF"),
            KernelImage::Ptx(s) => {
                assert!(
                    s.contains(".entry fg_preprocess_f32")
                        && s.contains(".entry fg_preprocess_f16")
                );
                assert!(s.contains("cvt.rn.f16.f32"));
            }
        }
        println!("{arch:?}: {} bytes", img.len());
    }
}

#[test]
fn unavailable_cuda_is_a_clear_error() {
    match cuda_available() {
        Ok(n) => println!("CUDA present: {n} device(s)"),
        Err(e) => {
            assert!(e.is_unavailable(), "{e}");
            let msg = e.to_string();
            assert!(
                msg.contains("no CUDA driver")
                    || msg.contains("no NVRTC")
                    || msg.contains("no CUDA device"),
                "{msg}"
            );
            let spec = PreprocessSpec::yolo(416, 416, OutputDType::F32);
            let e2 = GpuPreprocessor::new(0, spec, 4).unwrap_err();
            assert!(e2.is_unavailable(), "{e2}");
            println!("as expected without CUDA: {e2}");
        }
    }
}
