// framegate preprocessing kernels, compiled at run time with NVRTC.
//
// One launch handles a whole batch of frames of different sizes and formats:
// grid = (ceil(out_w / 32), ceil(out_h / 8), batch), one thread per output
// pixel writing all three output planes (NCHW). The math is exactly the one of
// the CPU reference in `src/cpu.rs`; read the crate docs for the conventions.
//
// No headers are included (NVRTC needs none): fixed-width types are spelled
// out and float -> half conversion uses the PTX instruction directly.

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

// Must match `FrameDesc` in src/gpu.rs (64 bytes, #[repr(C)]).
struct FrameDesc {
    u64 offset;     // byte offset of the frame (NV12: of the Y plane) in `src`
    u64 uv_offset;  // NV12 only: byte offset of the interleaved UV plane in `src`
    int width;      // source width in pixels
    int height;     // source height in pixels
    int stride;     // bytes per source row (both NV12 planes use it)
    int format;     // 0 = RGB8, 1 = BGR8, 2 = NV12
    int region_x;   // left edge of the resized image inside the output
    int region_y;   // top edge of the resized image inside the output
    int region_w;   // width of the resized image
    int region_h;   // height of the resized image
    float scale_x;  // source pixels per output pixel: width / region_w
    float scale_y;  // height / region_h
    int reserved0;
    int reserved1;
};

// Must match `NormParams` in src/gpu.rs (#[repr(C)], 40 bytes).
// Output plane c = v_c * mul[c] + add[c], where v_c is the interpolated pixel
// value (0..255) of the colour that plane c holds.
struct NormParams {
    float mul[3];
    float add[3];
    float fill[3];  // already normalised fill value of each output plane
    int bgr;        // 1: plane order B,G,R; 0: R,G,B
};

#define FMT_RGB8 0
#define FMT_BGR8 1
#define FMT_NV12 2

__device__ __forceinline__ float ld_u8(const u8* p) {
    return (float)__ldg(p);
}

__device__ __forceinline__ float clamp255(float v) {
    return fminf(fmaxf(v, 0.0f), 255.0f);
}

// BT.601 limited range ("video range") YCbCr -> RGB, result clamped to 0..255.
__device__ __forceinline__ void yuv_to_rgb(float y, float u, float v, float& r, float& g, float& b) {
    float c = 1.164383562f * (y - 16.0f);
    float d = u - 128.0f;
    float e = v - 128.0f;
    r = clamp255(c + 1.596026786f * e);
    g = clamp255(c - 0.391762290f * d - 0.812967647f * e);
    b = clamp255(c + 2.017232143f * d);
}

__device__ __forceinline__ void nv12_px(const u8* __restrict__ yrow, const u8* __restrict__ uvrow, int x,
                                        float& r, float& g, float& b) {
    float y = ld_u8(yrow + x);
    int cx = (x >> 1) << 1;
    float u = ld_u8(uvrow + cx);
    float v = ld_u8(uvrow + cx + 1);
    yuv_to_rgb(y, u, v, r, g, b);
}

__device__ __forceinline__ float lerp2(float a, float b, float f) {
    return a + f * (b - a);
}

__device__ __forceinline__ void store(float* p, float v) { *p = v; }

__device__ __forceinline__ void store(u16* p, float v) {
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));
    *p = h;
}

template <typename OutT>
__device__ __forceinline__ void preprocess_body(const FrameDesc* __restrict__ descs,
                                                const u8* __restrict__ src,
                                                OutT* __restrict__ out,
                                                int out_w, int out_h, NormParams np) {
    const int x = blockIdx.x * blockDim.x + threadIdx.x;
    const int y = blockIdx.y * blockDim.y + threadIdx.y;
    const int n = blockIdx.z;
    if (x >= out_w || y >= out_h) return;

    const FrameDesc d = descs[n];
    const u64 plane = (u64)out_w * (u64)out_h;
    OutT* o = out + (u64)n * 3ull * plane + (u64)y * (u64)out_w + (u64)x;

    const int rx = x - d.region_x;
    const int ry = y - d.region_y;
    if (rx < 0 || ry < 0 || rx >= d.region_w || ry >= d.region_h) {
        store(o, np.fill[0]);
        store(o + plane, np.fill[1]);
        store(o + 2 * plane, np.fill[2]);
        return;
    }

    // Half-pixel centres, clamped to the source (no anti-aliasing).
    float sx = ((float)rx + 0.5f) * d.scale_x - 0.5f;
    float sy = ((float)ry + 0.5f) * d.scale_y - 0.5f;
    sx = fminf(fmaxf(sx, 0.0f), (float)(d.width - 1));
    sy = fminf(fmaxf(sy, 0.0f), (float)(d.height - 1));
    const int x0 = (int)sx;
    const int y0 = (int)sy;
    const int x1 = min(x0 + 1, d.width - 1);
    const int y1 = min(y0 + 1, d.height - 1);
    const float fx = sx - (float)x0;
    const float fy = sy - (float)y0;

    float r00, g00, b00, r01, g01, b01, r10, g10, b10, r11, g11, b11;
    const u8* base = src + d.offset;
    if (d.format == FMT_NV12) {
        const u8* uv = src + d.uv_offset;
        const u8* yr0 = base + (u64)y0 * d.stride;
        const u8* yr1 = base + (u64)y1 * d.stride;
        const u8* uv0 = uv + (u64)(y0 >> 1) * d.stride;
        const u8* uv1 = uv + (u64)(y1 >> 1) * d.stride;
        nv12_px(yr0, uv0, x0, r00, g00, b00);
        nv12_px(yr0, uv0, x1, r01, g01, b01);
        nv12_px(yr1, uv1, x0, r10, g10, b10);
        nv12_px(yr1, uv1, x1, r11, g11, b11);
    } else {
        const u8* p00 = base + (u64)y0 * d.stride + 3 * x0;
        const u8* p01 = base + (u64)y0 * d.stride + 3 * x1;
        const u8* p10 = base + (u64)y1 * d.stride + 3 * x0;
        const u8* p11 = base + (u64)y1 * d.stride + 3 * x1;
        // Issue all twelve loads before any use.
        float a0 = ld_u8(p00), a1 = ld_u8(p00 + 1), a2 = ld_u8(p00 + 2);
        float c0 = ld_u8(p01), c1 = ld_u8(p01 + 1), c2 = ld_u8(p01 + 2);
        float e0 = ld_u8(p10), e1 = ld_u8(p10 + 1), e2 = ld_u8(p10 + 2);
        float h0 = ld_u8(p11), h1 = ld_u8(p11 + 1), h2 = ld_u8(p11 + 2);
        if (d.format == FMT_BGR8) {
            r00 = a2; g00 = a1; b00 = a0;
            r01 = c2; g01 = c1; b01 = c0;
            r10 = e2; g10 = e1; b10 = e0;
            r11 = h2; g11 = h1; b11 = h0;
        } else {
            r00 = a0; g00 = a1; b00 = a2;
            r01 = c0; g01 = c1; b01 = c2;
            r10 = e0; g10 = e1; b10 = e2;
            r11 = h0; g11 = h1; b11 = h2;
        }
    }

    const float r = lerp2(lerp2(r00, r01, fx), lerp2(r10, r11, fx), fy);
    const float g = lerp2(lerp2(g00, g01, fx), lerp2(g10, g11, fx), fy);
    const float b = lerp2(lerp2(b00, b01, fx), lerp2(b10, b11, fx), fy);

    const float c0 = np.bgr ? b : r;
    const float c2 = np.bgr ? r : b;
    store(o, c0 * np.mul[0] + np.add[0]);
    store(o + plane, g * np.mul[1] + np.add[1]);
    store(o + 2 * plane, c2 * np.mul[2] + np.add[2]);
}

extern "C" __global__ void __launch_bounds__(256)
fg_preprocess_f32(const FrameDesc* __restrict__ descs, const u8* __restrict__ src,
                  float* __restrict__ out, int out_w, int out_h, NormParams np) {
    preprocess_body<float>(descs, src, out, out_w, out_h, np);
}

extern "C" __global__ void __launch_bounds__(256)
fg_preprocess_f16(const FrameDesc* __restrict__ descs, const u8* __restrict__ src,
                  u16* __restrict__ out, int out_w, int out_h, NormParams np) {
    preprocess_body<u16>(descs, src, out, out_w, out_h, np);
}
