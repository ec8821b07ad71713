//! The GPU side: NVRTC compilation, device buffers and the batched launch.
//!
//! Buffers: one CUDA stream per [`GpuPreprocessor`] (one per worker). Input
//! frames are copied into a pinned, write-combined host staging buffer and
//! uploaded frame by frame with async copies, so the CPU copy of frame `i+1`
//! overlaps the DMA of frame `i`; the descriptors follow, then one kernel
//! launch processes the whole batch. The staging and device input buffers
//! grow geometrically to the largest batch seen (or [`GpuPreprocessor::reserve_input`]),
//! the output and descriptor buffers are sized for `max_batch` once: no
//! allocation per frame or per batch in the steady state. Input buffers
//! that a burst of large frames grew are given back on the
//! [`SHRINK_AFTER_BATCHES`]th batch in a row that uses at most a quarter of
//! them (that batch runs on new buffers of its own size), unless they hold
//! no more than [`INPUT_KEEP_BYTES`]
//! ([`GpuPreprocessor::set_input_keep`]): pinned host memory cannot be
//! swapped out, and a few batches of 40-megapixel frames would otherwise
//! pin about a gigabyte per worker for the life of the process.

use std::collections::HashMap;
use std::ffi::{c_char, CString};
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::{
    result as dres, sys, CudaContext, CudaEvent, CudaFunction, CudaSlice, CudaStream, CudaView,
    DevicePtr, DevicePtrMut, DeviceRepr, DriverError, LaunchConfig, PinnedHostSlice, PushKernelArg,
};
use cudarc::nvrtc::{sys as nsys, Ptx};

use crate::cpu::OutElem;
use crate::spec::{
    validate_geometry, FrameRef, OutputDType, PixelFormat, Placement, PreprocessSpec,
};
use crate::InputError;

/// The CUDA C source of the kernels (compiled at run time by NVRTC).
pub const KERNEL_SOURCE: &str = include_str!("../kernels/preprocess.cu");

/// Input buffers up to this size (pinned staging and device, each) are
/// kept whatever the batches use; larger ones shrink (see the module docs).
pub const INPUT_KEEP_BYTES: usize = 64 << 20;

/// On this many batches in a row that use at most a quarter of an input
/// buffer larger than the keep size, the last of them gives it back.
pub const SHRINK_AFTER_BATCHES: u32 = 32;

/// Threads per block: 32 output columns by 8 rows.
const BLOCK: (u32, u32) = (32, 8);
/// Byte alignment of each frame inside the device input buffer.
const FRAME_ALIGN: usize = 256;

/// Errors of the GPU path. [`CudaError::is_unavailable`] tells "no usable
/// CUDA here" apart from real failures.
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    /// The CUDA driver library could not be loaded.
    #[error(
        "no CUDA driver found: could not load the driver library (tried {tried}); \
         install the NVIDIA driver (libcuda.so.1) or use the CPU preprocessing"
    )]
    DriverNotFound {
        /// The library names that were tried.
        tried: String,
    },
    /// The NVRTC library could not be loaded.
    #[error(
        "no NVRTC library found: could not load libnvrtc (tried {tried}); install the CUDA \
         toolkit's NVRTC or the PyPI wheel nvidia-cuda-nvrtc-cu12 and put its lib folder \
         (e.g. /usr/local/cuda/lib64 or site-packages/nvidia/cuda_nvrtc/lib) on LD_LIBRARY_PATH"
    )]
    NvrtcNotFound {
        /// The library names that were tried.
        tried: String,
    },
    /// The driver is there but the device is not.
    #[error("no CUDA device {ordinal}: the driver reports {count} device(s)")]
    NoDevice {
        /// The ordinal asked for.
        ordinal: usize,
        /// Devices the driver reports.
        count: i32,
    },
    /// A CUDA driver call failed.
    #[error("CUDA driver call failed while {what}: {source}")]
    Driver {
        /// What was being done.
        what: &'static str,
        /// The driver's error.
        source: DriverError,
    },
    /// An NVRTC call failed (not a compile error).
    #[error("NVRTC call {call} failed with {code}")]
    Nvrtc {
        /// The NVRTC function.
        call: &'static str,
        /// The NVRTC result code.
        code: String,
    },
    /// NVRTC rejected the kernel source.
    #[error("NVRTC could not compile the kernels for {arch}: {log}")]
    Compile {
        /// The target architecture option.
        arch: String,
        /// NVRTC's log.
        log: String,
    },
    /// NVRTC supports no architecture at or below the device's.
    #[error("NVRTC supports no GPU architecture at or below the device's sm_{cc} (it supports {supported:?})")]
    UnsupportedArch {
        /// The device's compute capability, as major * 10 + minor.
        cc: i32,
        /// What NVRTC supports.
        supported: Vec<i32>,
    },
    /// The input was refused.
    #[error(transparent)]
    Input(#[from] InputError),
}

impl CudaError {
    /// True when the error means there is no usable CUDA on this machine (no
    /// driver, no NVRTC, no device), as opposed to a failure on a working one.
    pub fn is_unavailable(&self) -> bool {
        match self {
            CudaError::DriverNotFound { .. }
            | CudaError::NvrtcNotFound { .. }
            | CudaError::NoDevice { .. } => true,
            CudaError::Driver { source, .. } => matches!(
                source.0,
                sys::CUresult::CUDA_ERROR_NO_DEVICE
                    | sys::CUresult::CUDA_ERROR_NOT_INITIALIZED
                    | sys::CUresult::CUDA_ERROR_SYSTEM_NOT_READY
                    | sys::CUresult::CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE
                    | sys::CUresult::CUDA_ERROR_SYSTEM_DRIVER_MISMATCH
            ),
            _ => false,
        }
    }
}

trait Ctx<T> {
    fn ctx(self, what: &'static str) -> Result<T, CudaError>;
}

impl<T> Ctx<T> for Result<T, DriverError> {
    fn ctx(self, what: &'static str) -> Result<T, CudaError> {
        self.map_err(|source| CudaError::Driver { what, source })
    }
}

fn tried(lib: &str) -> String {
    cudarc::get_lib_name_candidates(lib).join(", ")
}

fn ensure_driver() -> Result<(), CudaError> {
    // SAFETY: only tries to dlopen the library names.
    if unsafe { sys::is_culib_present() } {
        Ok(())
    } else {
        Err(CudaError::DriverNotFound {
            tried: tried("cuda"),
        })
    }
}

fn ensure_nvrtc() -> Result<(), CudaError> {
    // SAFETY: only tries to dlopen the library names.
    if unsafe { nsys::is_culib_present() } {
        Ok(())
    } else {
        Err(CudaError::NvrtcNotFound {
            tried: tried("nvrtc"),
        })
    }
}

/// Checks that a driver, NVRTC and at least one device are there; returns
/// the number of devices.
pub fn cuda_available() -> Result<i32, CudaError> {
    ensure_driver()?;
    ensure_nvrtc()?;
    let count = CudaContext::device_count().ctx("counting devices")?;
    if count < 1 {
        return Err(CudaError::NoDevice { ordinal: 0, count });
    }
    Ok(count)
}

fn nvrtc_check(call: &'static str, r: nsys::nvrtcResult) -> Result<(), CudaError> {
    if r == nsys::nvrtcResult::NVRTC_SUCCESS {
        Ok(())
    } else {
        Err(CudaError::Nvrtc {
            call,
            code: format!("{r:?}"),
        })
    }
}

/// The version of the NVRTC library that was loaded (major, minor).
pub fn nvrtc_version() -> Result<(i32, i32), CudaError> {
    ensure_nvrtc()?;
    let (mut major, mut minor) = (0, 0);
    // SAFETY: plain out-parameters.
    nvrtc_check("nvrtcVersion", unsafe {
        nsys::nvrtcVersion(&mut major, &mut minor)
    })?;
    Ok((major, minor))
}

/// The GPU architectures (major * 10 + minor) the loaded NVRTC can target.
pub fn nvrtc_supported_archs() -> Result<Vec<i32>, CudaError> {
    ensure_nvrtc()?;
    let mut n = 0;
    // SAFETY: out-parameter, then a buffer of the size NVRTC gave.
    nvrtc_check("nvrtcGetNumSupportedArchs", unsafe {
        nsys::nvrtcGetNumSupportedArchs(&mut n)
    })?;
    let mut archs = vec![0i32; n.max(0) as usize];
    if n > 0 {
        nvrtc_check("nvrtcGetSupportedArchs", unsafe {
            nsys::nvrtcGetSupportedArchs(archs.as_mut_ptr())
        })?;
    }
    Ok(archs)
}

/// What NVRTC should produce for a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ArchChoice {
    /// Machine code for exactly this architecture (`sm_XY`); no JIT at load.
    Cubin(i32),
    /// PTX for this virtual architecture (`compute_XY`), JIT-compiled by the
    /// driver for a newer device than NVRTC knows.
    Ptx(i32),
}

impl ArchChoice {
    /// The `--gpu-architecture` value.
    pub fn option(self) -> String {
        match self {
            ArchChoice::Cubin(a) => format!("sm_{a}"),
            ArchChoice::Ptx(a) => format!("compute_{a}"),
        }
    }
}

/// Chooses the target for a device of compute capability `cc` (major * 10 +
/// minor) given what NVRTC supports: its own cubin when NVRTC knows it,
/// otherwise PTX of the newest supported architecture below it.
pub fn pick_arch(cc: i32, supported: &[i32]) -> Option<ArchChoice> {
    if supported.contains(&cc) {
        Some(ArchChoice::Cubin(cc))
    } else {
        supported
            .iter()
            .copied()
            .filter(|a| *a <= cc)
            .max()
            .map(ArchChoice::Ptx)
    }
}

/// A compiled kernel image.
#[derive(Clone, Debug)]
pub enum KernelImage {
    /// A cubin.
    Cubin(Vec<u8>),
    /// PTX text.
    Ptx(String),
}

impl KernelImage {
    /// Size in bytes.
    pub fn len(&self) -> usize {
        match self {
            KernelImage::Cubin(b) => b.len(),
            KernelImage::Ptx(s) => s.len(),
        }
    }

    /// True when empty (never for a successful compile).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn to_ptx(&self) -> Ptx {
        match self {
            KernelImage::Cubin(b) => Ptx::from_binary(b.clone()),
            KernelImage::Ptx(s) => Ptx::from_src(s.clone()),
        }
    }
}

/// Compiles [`KERNEL_SOURCE`] with NVRTC for `arch`. Needs NVRTC, not a GPU.
pub fn compile_kernels(arch: ArchChoice) -> Result<KernelImage, CudaError> {
    ensure_nvrtc()?;
    let src = CString::new(KERNEL_SOURCE).expect("kernel source has no NUL");
    let name = c"framegate_preprocess.cu";
    let arch_opt = arch.option();
    let opts: Vec<CString> = [
        format!("--gpu-architecture={arch_opt}"),
        "--std=c++17".to_string(),
    ]
    .into_iter()
    .map(|o| CString::new(o).expect("no NUL"))
    .collect();
    let opt_ptrs: Vec<*const c_char> = opts.iter().map(|o| o.as_ptr()).collect();

    let mut prog: nsys::nvrtcProgram = std::ptr::null_mut();
    // SAFETY: valid C strings that outlive the program; no headers.
    nvrtc_check("nvrtcCreateProgram", unsafe {
        nsys::nvrtcCreateProgram(
            &mut prog,
            src.as_ptr(),
            name.as_ptr(),
            0,
            std::ptr::null(),
            std::ptr::null(),
        )
    })?;
    struct Guard(nsys::nvrtcProgram);
    impl Drop for Guard {
        fn drop(&mut self) {
            // SAFETY: created above, destroyed once.
            unsafe {
                nsys::nvrtcDestroyProgram(&mut self.0);
            }
        }
    }
    let guard = Guard(prog);
    // SAFETY: the options array holds opt_ptrs.len() valid C strings.
    let r = unsafe { nsys::nvrtcCompileProgram(guard.0, opt_ptrs.len() as i32, opt_ptrs.as_ptr()) };
    if r != nsys::nvrtcResult::NVRTC_SUCCESS {
        let log = program_log(guard.0).unwrap_or_else(|e| format!("({r:?}; no log: {e})"));
        return Err(CudaError::Compile {
            arch: arch_opt,
            log,
        });
    }
    match arch {
        ArchChoice::Cubin(_) => {
            let mut size = 0usize;
            // SAFETY: out-parameter, then a buffer of that size.
            nvrtc_check("nvrtcGetCUBINSize", unsafe {
                nsys::nvrtcGetCUBINSize(guard.0, &mut size)
            })?;
            let mut buf = vec![0u8; size];
            nvrtc_check("nvrtcGetCUBIN", unsafe {
                nsys::nvrtcGetCUBIN(guard.0, buf.as_mut_ptr() as *mut c_char)
            })?;
            Ok(KernelImage::Cubin(buf))
        }
        ArchChoice::Ptx(_) => {
            let mut size = 0usize;
            // SAFETY: as above.
            nvrtc_check("nvrtcGetPTXSize", unsafe {
                nsys::nvrtcGetPTXSize(guard.0, &mut size)
            })?;
            let mut buf = vec![0u8; size];
            nvrtc_check("nvrtcGetPTX", unsafe {
                nsys::nvrtcGetPTX(guard.0, buf.as_mut_ptr() as *mut c_char)
            })?;
            while buf.last() == Some(&0) {
                buf.pop();
            }
            Ok(KernelImage::Ptx(String::from_utf8_lossy(&buf).into_owned()))
        }
    }
}

fn program_log(prog: nsys::nvrtcProgram) -> Result<String, CudaError> {
    let mut size = 0usize;
    // SAFETY: out-parameter, then a buffer of that size.
    nvrtc_check("nvrtcGetProgramLogSize", unsafe {
        nsys::nvrtcGetProgramLogSize(prog, &mut size)
    })?;
    let mut buf = vec![0u8; size];
    nvrtc_check("nvrtcGetProgramLog", unsafe {
        nsys::nvrtcGetProgramLog(prog, buf.as_mut_ptr() as *mut c_char)
    })?;
    while buf.last() == Some(&0) {
        buf.pop();
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// Compiled images, shared by all preprocessors of the process (one NVRTC
/// compile per architecture).
fn cached_image(arch: ArchChoice) -> Result<Arc<KernelImage>, CudaError> {
    static CACHE: OnceLock<Mutex<HashMap<ArchChoice, Arc<KernelImage>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut map = cache.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(img) = map.get(&arch) {
        return Ok(img.clone());
    }
    let img = Arc::new(compile_kernels(arch)?);
    map.insert(arch, img.clone());
    Ok(img)
}

/// Per-frame descriptor, as the kernel reads it (`struct FrameDesc`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct FrameDesc {
    offset: u64,
    uv_offset: u64,
    width: i32,
    height: i32,
    stride: i32,
    format: i32,
    region_x: i32,
    region_y: i32,
    region_w: i32,
    region_h: i32,
    scale_x: f32,
    scale_y: f32,
    reserved0: i32,
    reserved1: i32,
}

const DESC_SIZE: usize = std::mem::size_of::<FrameDesc>();
const _: () = assert!(DESC_SIZE == 64);

impl FrameDesc {
    fn new(
        offset: usize,
        width: u32,
        height: u32,
        stride: usize,
        format: PixelFormat,
        spec: &PreprocessSpec,
    ) -> Self {
        let p = Placement::new(width, height, spec);
        FrameDesc {
            offset: offset as u64,
            uv_offset: (offset + height as usize * stride) as u64,
            width: width as i32,
            height: height as i32,
            stride: stride as i32,
            format: format.code(),
            region_x: p.left as i32,
            region_y: p.top as i32,
            region_w: p.width as i32,
            region_h: p.height as i32,
            scale_x: p.scale_x,
            scale_y: p.scale_y,
            reserved0: 0,
            reserved1: 0,
        }
    }

    fn write_to(&self, out: &mut [u8]) {
        // SAFETY: FrameDesc is repr(C) plain data without padding (64 bytes of
        // 4- and 8-byte fields), so viewing it as bytes is sound.
        let bytes =
            unsafe { std::slice::from_raw_parts(self as *const Self as *const u8, DESC_SIZE) };
        out[..DESC_SIZE].copy_from_slice(bytes);
    }
}

/// Normalisation parameters, as the kernel reads them (`struct NormParams`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct NormParams {
    mul: [f32; 3],
    add: [f32; 3],
    fill: [f32; 3],
    bgr: i32,
}

// SAFETY: plain repr(C) data passed by value as a kernel parameter.
unsafe impl DeviceRepr for NormParams {}

impl NormParams {
    fn new(spec: &PreprocessSpec) -> Self {
        let (mul, add) = spec.affine();
        NormParams {
            mul,
            add,
            fill: spec.fill_values(),
            bgr: (spec.channel_order == crate::ChannelOrder::Bgr) as i32,
        }
    }
}

/// A frame already in device memory, inside a buffer passed to
/// [`GpuPreprocessor::run_device`]: same layout rules as [`FrameRef`], the
/// frame starting `offset` bytes into the buffer (NV12: the UV plane right
/// after the Y plane).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceFrame {
    /// Byte offset of the frame in the device buffer.
    pub offset: usize,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Bytes per row.
    pub stride: usize,
    /// Pixel layout.
    pub format: PixelFormat,
}

impl DeviceFrame {
    /// A tightly packed frame at `offset`.
    pub fn packed(offset: usize, width: u32, height: u32, format: PixelFormat) -> Self {
        DeviceFrame {
            offset,
            width,
            height,
            stride: format.min_stride(width),
            format,
        }
    }

    /// The bytes the frame uses, from its offset.
    pub fn used_len(&self) -> usize {
        self.format.frame_len(self.width, self.height, self.stride)
    }
}

/// The output of one batch: an NCHW tensor `[n, 3, H, W]` in device memory,
/// valid once the preprocessor's stream reaches it (enqueue consumers on
/// [`DeviceOutput::stream`], or synchronize it). It borrows the
/// preprocessor: the next run reuses the buffer.
#[derive(Debug)]
pub struct DeviceOutput<'a> {
    view: CudaView<'a, u8>,
    n: usize,
    spec: PreprocessSpec,
    stream: &'a Arc<CudaStream>,
}

impl<'a> DeviceOutput<'a> {
    /// `[n, 3, out_height, out_width]`.
    pub fn shape(&self) -> [usize; 4] {
        [
            self.n,
            3,
            self.spec.out_height as usize,
            self.spec.out_width as usize,
        ]
    }

    /// Element type.
    pub fn dtype(&self) -> OutputDType {
        self.spec.dtype
    }

    /// The tensor's bytes on the device.
    pub fn bytes(&self) -> &CudaView<'a, u8> {
        &self.view
    }

    /// The raw device address (for ONNX Runtime / TensorRT I/O binding).
    pub fn device_ptr(&self) -> u64 {
        let (ptr, _sync) = self.view.device_ptr(self.stream);
        ptr
    }

    /// The stream the tensor is produced on.
    pub fn stream(&self) -> &'a Arc<CudaStream> {
        self.stream
    }
}

/// Batched preprocessing on one GPU, one stream (make one per worker).
pub struct GpuPreprocessor {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    f32_fn: CudaFunction,
    f16_fn: CudaFunction,
    spec: PreprocessSpec,
    norm: NormParams,
    max_batch: usize,
    arch: ArchChoice,
    device_name: String,
    /// Pinned, write-combined input staging (host writes, DMA reads).
    staging: Option<PinnedHostSlice<u8>>,
    /// Device input buffer, same capacity as `staging`.
    input: Option<CudaSlice<u8>>,
    desc_host: PinnedHostSlice<u8>,
    /// Descriptors being built for the next launch.
    descs_next: Vec<u8>,
    /// Descriptors the device buffer holds (`descs_last_n` of them).
    descs_last: Vec<u8>,
    descs_last_n: usize,
    desc_dev: CudaSlice<u8>,
    output: CudaSlice<u8>,
    /// Pinned (cached) host output buffer for the copy-to-host paths.
    host_out: Option<PinnedHostSlice<u8>>,
    /// Recorded after the last upload of a batch: the staging buffers are
    /// free again once it completes.
    uploaded: CudaEvent,
    /// Input buffers up to this many bytes are never shrunk.
    input_keep: usize,
    /// Batches in a row that used at most a quarter of the input buffers.
    small_batches: u32,
}

impl std::fmt::Debug for GpuPreprocessor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuPreprocessor")
            .field("device", &self.device_name)
            .field("arch", &self.arch)
            .field("spec", &self.spec)
            .field("max_batch", &self.max_batch)
            .finish()
    }
}

impl GpuPreprocessor {
    /// Opens device `device_ordinal`, compiles the kernels with NVRTC (once
    /// per process and architecture) and allocates the buffers for batches
    /// of up to `max_batch` frames.
    pub fn new(
        device_ordinal: usize,
        spec: PreprocessSpec,
        max_batch: usize,
    ) -> Result<Self, CudaError> {
        spec.validate().map_err(InputError::Spec)?;
        let max_batch = max_batch.max(1);
        if max_batch > 65535 {
            return Err(InputError::BatchTooLarge {
                n: max_batch,
                max: 65535,
            }
            .into());
        }
        ensure_driver()?;
        ensure_nvrtc()?;
        let count = CudaContext::device_count().ctx("initialising the driver")?;
        if device_ordinal as i64 >= count as i64 {
            return Err(CudaError::NoDevice {
                ordinal: device_ordinal,
                count,
            });
        }
        let ctx = CudaContext::new(device_ordinal).ctx("creating the context")?;
        let device_name = ctx.name().ctx("reading the device name")?;
        let (major, minor) = ctx
            .compute_capability()
            .ctx("reading the compute capability")?;
        let cc = major * 10 + minor;
        let supported = nvrtc_supported_archs()?;
        let arch = pick_arch(cc, &supported).ok_or(CudaError::UnsupportedArch { cc, supported })?;
        let image = cached_image(arch)?;
        let module = ctx
            .load_module(image.to_ptx())
            .ctx("loading the kernel module")?;
        let f32_fn = module
            .load_function("fg_preprocess_f32")
            .ctx("loading fg_preprocess_f32")?;
        let f16_fn = module
            .load_function("fg_preprocess_f16")
            .ctx("loading fg_preprocess_f16")?;
        let stream = ctx.new_stream().ctx("creating the stream")?;

        let out_bytes = max_batch * spec.image_len() * spec.dtype.size();
        // SAFETY: the buffers are written before they are read (descriptors
        // per run; the output by the kernel).
        let output =
            unsafe { stream.alloc::<u8>(out_bytes) }.ctx("allocating the output buffer")?;
        let desc_dev = unsafe { stream.alloc::<u8>(max_batch * DESC_SIZE) }
            .ctx("allocating the descriptors")?;
        let desc_host = unsafe { ctx.alloc_pinned_with_flags::<u8>(max_batch * DESC_SIZE, 0) }
            .ctx("allocating pinned descriptor staging")?;
        let uploaded = ctx.new_event(None).ctx("creating an event")?;
        Ok(GpuPreprocessor {
            ctx,
            stream,
            f32_fn,
            f16_fn,
            norm: NormParams::new(&spec),
            spec,
            max_batch,
            arch,
            device_name,
            staging: None,
            input: None,
            desc_host,
            descs_next: vec![0; max_batch * DESC_SIZE],
            descs_last: vec![0; max_batch * DESC_SIZE],
            descs_last_n: usize::MAX,
            desc_dev,
            output,
            host_out: None,
            uploaded,
            input_keep: INPUT_KEEP_BYTES,
            small_batches: 0,
        })
    }

    /// The spec this preprocessor was built for.
    pub fn spec(&self) -> &PreprocessSpec {
        &self.spec
    }

    /// The largest batch.
    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// The device's name, as the driver reports it.
    pub fn device_name(&self) -> &str {
        &self.device_name
    }

    /// What the kernels were compiled for.
    pub fn arch(&self) -> ArchChoice {
        self.arch
    }

    /// Registers per thread of the float32 and float16 kernels (from the driver).
    pub fn kernel_registers(&self) -> Result<[i32; 2], CudaError> {
        Ok([
            self.f32_fn.num_regs().ctx("reading kernel attributes")?,
            self.f16_fn.num_regs().ctx("reading kernel attributes")?,
        ])
    }

    /// The CUDA context.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// This preprocessor's stream: all its copies and launches are ordered on it.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Current input staging capacity in bytes.
    pub fn input_capacity(&self) -> usize {
        self.staging.as_ref().map_or(0, |s| s.len())
    }

    /// Makes sure a batch of `bytes` input bytes (see [`Self::batch_input_bytes`])
    /// fits without growing the buffers later.
    pub fn reserve_input(&mut self, bytes: usize) -> Result<(), CudaError> {
        if self.input_capacity() >= bytes {
            return Ok(());
        }
        self.uploaded
            .synchronize()
            .ctx("waiting for earlier uploads")?;
        let cap = bytes
            .max(2 * self.input_capacity())
            .next_multiple_of(1 << 20);
        // Free the old pair first so peak memory stays low.
        self.staging = None;
        self.input = None;
        // SAFETY: the staging buffer is written before each upload reads it;
        // the device buffer is only read where an upload wrote.
        let staging =
            unsafe { self.ctx.alloc_pinned::<u8>(cap) }.ctx("allocating pinned input staging")?;
        let input =
            unsafe { self.stream.alloc::<u8>(cap) }.ctx("allocating the device input buffer")?;
        self.staging = Some(staging);
        self.input = Some(input);
        Ok(())
    }

    /// Input buffers up to `bytes` (each) are kept whatever the batches use;
    /// larger ones are given back on the [`SHRINK_AFTER_BATCHES`]th batch in
    /// a row that uses at most a quarter of them. Default [`INPUT_KEEP_BYTES`].
    pub fn set_input_keep(&mut self, bytes: usize) {
        self.input_keep = bytes;
    }

    /// Sizes the input buffers for a batch of `bytes` input bytes: grows
    /// them if needed ([`Self::reserve_input`]), or, on the
    /// [`SHRINK_AFTER_BATCHES`]th batch in a row for which they are at least
    /// four times too large (and larger than the keep size), replaces them
    /// with buffers of this batch's size, so that a burst of huge frames does
    /// not pin their memory for good. The caller has waited for `uploaded`.
    fn fit_input(&mut self, bytes: usize) -> Result<(), CudaError> {
        let cap = self.input_capacity();
        if cap > self.input_keep && bytes <= cap / 4 {
            self.small_batches += 1;
            if self.small_batches >= SHRINK_AFTER_BATCHES {
                // The last batch's uploads are done (the caller waited);
                // the device buffer is freed in stream order, after the
                // kernel that reads it.
                self.staging = None;
                self.input = None;
                self.small_batches = 0;
            }
        } else {
            self.small_batches = 0;
        }
        self.reserve_input(bytes)
    }

    /// Bytes of the device input buffer a batch uses (each frame's used
    /// bytes, each rounded up to a 256-byte boundary).
    pub fn batch_input_bytes(frames: &[FrameRef<'_>]) -> usize {
        frames
            .iter()
            .map(|f| f.used_len().next_multiple_of(FRAME_ALIGN))
            .sum()
    }

    fn check_batch(&self, n: usize) -> Result<(), InputError> {
        if n > self.max_batch {
            return Err(InputError::BatchTooLarge {
                n,
                max: self.max_batch,
            });
        }
        Ok(())
    }

    /// Uploads a batch of host frames and enqueues the kernel on
    /// [`Self::stream`]. Returns without waiting for the GPU; the result is
    /// ordered on the stream. Waits only if the previous batch's uploads
    /// are still reading the staging buffer.
    pub fn run(&mut self, frames: &[FrameRef<'_>]) -> Result<DeviceOutput<'_>, CudaError> {
        self.check_batch(frames.len())?;
        for (index, f) in frames.iter().enumerate() {
            f.validate()
                .map_err(|source| InputError::Frame { index, source })?;
        }
        let n = frames.len();
        if n > 0 {
            self.ctx.bind_to_thread().ctx("binding the context")?;
            let total = Self::batch_input_bytes(frames);
            self.uploaded
                .synchronize()
                .ctx("waiting for earlier uploads")?;
            self.fit_input(total)?;
            let GpuPreprocessor {
                staging,
                input,
                descs_next,
                stream,
                spec,
                ..
            } = self;
            let host = staging
                .as_mut()
                .expect("reserved")
                .as_mut_slice()
                .ctx("mapping the staging buffer")?;
            {
                let (dev, _sync) = input.as_mut().expect("reserved").device_ptr_mut(stream);
                let mut off = 0usize;
                for (i, f) in frames.iter().enumerate() {
                    let len = f.used_len();
                    host[off..off + len].copy_from_slice(&f.data[..len]);
                    // SAFETY: pinned source range and device range of `len`
                    // bytes inside both buffers; the staging range is not
                    // touched again before `uploaded` completes.
                    unsafe {
                        dres::memcpy_htod_async(
                            dev + off as u64,
                            &host[off..off + len],
                            stream.cu_stream(),
                        )
                    }
                    .ctx("uploading a frame")?;
                    FrameDesc::new(off, f.width, f.height, f.stride, f.format, spec)
                        .write_to(&mut descs_next[i * DESC_SIZE..]);
                    off += len.next_multiple_of(FRAME_ALIGN);
                }
            }
            self.upload_descs(n)?;
            self.uploaded
                .record(&self.stream)
                .ctx("recording the upload event")?;
            let input = self.input.take().expect("reserved");
            let r = self.launch(n, &input.slice(..total));
            self.input = Some(input);
            r?;
        }
        Ok(self.output_view(n))
    }

    /// Enqueues the kernel on frames already in device memory (e.g. decoded
    /// by NVDEC): each [`DeviceFrame`] is checked against `input`'s length.
    /// Nothing is copied when the frame layout is the same as the previous
    /// batch's (the descriptors are reused).
    pub fn run_device(
        &mut self,
        input: &CudaView<'_, u8>,
        frames: &[DeviceFrame],
    ) -> Result<DeviceOutput<'_>, CudaError> {
        self.check_batch(frames.len())?;
        for (index, f) in frames.iter().enumerate() {
            validate_geometry(f.width, f.height, f.stride, f.format)
                .map_err(|source| InputError::Frame { index, source })?;
            let need = f.offset + f.used_len();
            if need > input.len() {
                return Err(InputError::DeviceBufferShort {
                    index,
                    have: input.len(),
                    need,
                }
                .into());
            }
        }
        let n = frames.len();
        if n > 0 {
            self.ctx.bind_to_thread().ctx("binding the context")?;
            for (i, f) in frames.iter().enumerate() {
                FrameDesc::new(f.offset, f.width, f.height, f.stride, f.format, &self.spec)
                    .write_to(&mut self.descs_next[i * DESC_SIZE..]);
            }
            if self.upload_descs(n)? {
                self.uploaded
                    .record(&self.stream)
                    .ctx("recording the upload event")?;
            }
            self.launch(n, input)?;
        }
        Ok(self.output_view(n))
    }

    /// Uploads `descs_next[..n]` unless it equals what the device already
    /// holds. Returns whether it uploaded (the caller records `uploaded`).
    fn upload_descs(&mut self, n: usize) -> Result<bool, CudaError> {
        let len = n * DESC_SIZE;
        if self.descs_last_n == n && self.descs_last[..len] == self.descs_next[..len] {
            return Ok(false);
        }
        self.uploaded
            .synchronize()
            .ctx("waiting for earlier uploads")?;
        let host = self
            .desc_host
            .as_mut_slice()
            .ctx("mapping the descriptor staging")?;
        host[..len].copy_from_slice(&self.descs_next[..len]);
        {
            let (dptr, _sync) = self.desc_dev.device_ptr_mut(&self.stream);
            // SAFETY: n descriptors fit in both buffers; the pinned range is
            // not written again before `uploaded` completes.
            unsafe { dres::memcpy_htod_async(dptr, &host[..len], self.stream.cu_stream()) }
                .ctx("uploading the descriptors")?;
        }
        self.descs_last[..len].copy_from_slice(&self.descs_next[..len]);
        self.descs_last_n = n;
        Ok(true)
    }

    fn output_view(&self, n: usize) -> DeviceOutput<'_> {
        let bytes = n * self.spec.image_len() * self.spec.dtype.size();
        DeviceOutput {
            view: self.output.slice(..bytes),
            n,
            spec: self.spec,
            stream: &self.stream,
        }
    }

    fn launch(&mut self, n: usize, src: &CudaView<'_, u8>) -> Result<(), CudaError> {
        let GpuPreprocessor {
            stream,
            f32_fn,
            f16_fn,
            spec,
            norm,
            desc_dev,
            output,
            ..
        } = self;
        let func = match spec.dtype {
            OutputDType::F32 => &*f32_fn,
            OutputDType::F16 => &*f16_fn,
        };
        let (ow, oh) = (spec.out_width as i32, spec.out_height as i32);
        let cfg = LaunchConfig {
            grid_dim: (
                spec.out_width.div_ceil(BLOCK.0),
                spec.out_height.div_ceil(BLOCK.1),
                n as u32,
            ),
            block_dim: (BLOCK.0, BLOCK.1, 1),
            shared_mem_bytes: 0,
        };
        // The guards record the reads/writes after the launch, so that other
        // streams order themselves after this kernel.
        let (src_ptr, _s0) = src.device_ptr(stream);
        let (descs, _s1) = desc_dev.device_ptr(stream);
        let (out, _s2) = output.device_ptr_mut(stream);
        let mut args = stream.launch_builder(func);
        args.arg(&descs)
            .arg(&src_ptr)
            .arg(&out)
            .arg(&ow)
            .arg(&oh)
            .arg(&*norm);
        // SAFETY: the argument list matches the kernel's signature; the
        // descriptors point inside `src` (validated), and the grid writes
        // n images inside the output buffer (n <= max_batch).
        unsafe { args.launch(cfg) }.ctx("launching the preprocess kernel")?;
        Ok(())
    }

    /// Runs a batch of host frames and copies the result to `out`
    /// (`frames.len() * 3 * H * W` elements of the spec's type), waiting for it.
    pub fn run_to_host<T: OutElem>(
        &mut self,
        frames: &[FrameRef<'_>],
        out: &mut [T],
    ) -> Result<(), CudaError> {
        self.check_host_out::<T>(frames.len(), out.len())?;
        self.run(frames)?;
        self.download(frames.len(), out)
    }

    /// As [`Self::run_to_host`] for frames already on the device.
    pub fn run_device_to_host<T: OutElem>(
        &mut self,
        input: &CudaView<'_, u8>,
        frames: &[DeviceFrame],
        out: &mut [T],
    ) -> Result<(), CudaError> {
        self.check_host_out::<T>(frames.len(), out.len())?;
        self.run_device(input, frames)?;
        self.download(frames.len(), out)
    }

    fn check_host_out<T: OutElem>(&self, n: usize, len: usize) -> Result<(), InputError> {
        if T::DTYPE != self.spec.dtype {
            return Err(InputError::DType {
                have: T::DTYPE,
                spec: self.spec.dtype,
            });
        }
        let need = n * self.spec.image_len();
        if len != need {
            return Err(InputError::OutputLen { have: len, need });
        }
        Ok(())
    }

    fn download<T: OutElem>(&mut self, n: usize, out: &mut [T]) -> Result<(), CudaError> {
        let bytes = n * self.spec.image_len() * self.spec.dtype.size();
        if bytes == 0 {
            return Ok(());
        }
        self.ctx.bind_to_thread().ctx("binding the context")?;
        if self.host_out.is_none() {
            let cap = self.output.len();
            // SAFETY: written by the copy below before it is read.
            self.host_out = Some(
                unsafe { self.ctx.alloc_pinned_with_flags::<u8>(cap, 0) }
                    .ctx("allocating pinned output")?,
            );
        }
        let host = self
            .host_out
            .as_mut()
            .expect("allocated")
            .as_mut_slice()
            .ctx("mapping pinned output")?;
        {
            let (src, _sync) = self.output.device_ptr(&self.stream);
            // SAFETY: `bytes` fit in both buffers.
            unsafe { dres::memcpy_dtoh_async(&mut host[..bytes], src, self.stream.cu_stream()) }
                .ctx("downloading the output")?;
        }
        self.stream.synchronize().ctx("waiting for the batch")?;
        // SAFETY: f32 and f16 are plain data with no invalid bit patterns and
        // `out` holds exactly `bytes` bytes (checked by check_host_out).
        let dst = unsafe { std::slice::from_raw_parts_mut(out.as_mut_ptr() as *mut u8, bytes) };
        dst.copy_from_slice(&host[..bytes]);
        Ok(())
    }

    /// Fills the whole output buffer with NaN (for tests that check every
    /// element gets written).
    pub fn poison_output(&mut self) -> Result<(), CudaError> {
        self.ctx.bind_to_thread().ctx("binding the context")?;
        let bytes = self.output.len();
        let (ptr, _sync) = self.output.device_ptr_mut(&self.stream);
        // SAFETY: memset inside the buffer.
        let r = unsafe {
            match self.spec.dtype {
                OutputDType::F32 => {
                    sys::cuMemsetD32Async(ptr, 0x7fc0_0000, bytes / 4, self.stream.cu_stream())
                }
                OutputDType::F16 => {
                    sys::cuMemsetD16Async(ptr, 0x7e00, bytes / 2, self.stream.cu_stream())
                }
            }
        };
        r.result().ctx("poisoning the output")
    }

    /// Makes every wait on this device's primary context (this
    /// preprocessor's and any other user's in the process) put the waiting
    /// thread to sleep instead of spinning (`CU_CTX_SCHED_BLOCKING_SYNC`).
    /// The driver's default spins while there are fewer contexts than
    /// cores, which burns a core per waiting thread: right for a benchmark,
    /// wrong for a server whose other threads need the CPU.
    pub fn set_blocking_sync(&self) -> Result<(), CudaError> {
        self.ctx
            .set_blocking_synchronize()
            .ctx("setting blocking synchronisation")
    }

    /// Waits until everything enqueued on the stream is done.
    pub fn synchronize(&self) -> Result<(), CudaError> {
        self.stream.synchronize().ctx("synchronizing the stream")
    }
}
