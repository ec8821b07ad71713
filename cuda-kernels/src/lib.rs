//! CUDA preprocessing kernels for framegate, compiled at run time with NVRTC,
//! each with a plain CPU reference in Rust.
