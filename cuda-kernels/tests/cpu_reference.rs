//! CPU-only tests of the reference implementation: geometry, known small
//! images, NV12 conversion, channel order, normalisation. Always run.

use framegate_cuda::{
    pick_arch, preprocess_cpu, preprocess_cpu_f16, taps, yuv_to_rgb, ArchChoice, ChannelOrder,
    FrameError, FrameRef, InputError, OutputDType, PixelFormat, Placement, PreprocessSpec,
    ResizeMode,
};

fn stretch(w: u32, h: u32) -> PreprocessSpec {
    PreprocessSpec {
        out_width: w,
        out_height: h,
        resize: ResizeMode::Stretch,
        channel_order: ChannelOrder::Rgb,
        mean: [0.0; 3],
        std: [1.0; 3],
        dtype: OutputDType::F32,
    }
}

fn letterbox(w: u32, h: u32, fill: [u8; 3]) -> PreprocessSpec {
    PreprocessSpec {
        resize: ResizeMode::Letterbox { fill },
        ..stretch(w, h)
    }
}

fn run(frames: &[FrameRef<'_>], spec: &PreprocessSpec) -> Vec<f32> {
    let mut out = vec![f32::NAN; frames.len() * spec.image_len()];
    preprocess_cpu(frames, spec, &mut out).unwrap();
    assert!(out.iter().all(|v| v.is_finite()), "every element written");
    out
}

fn close(a: f32, b: f32) -> bool {
    (a - b).abs() <= 1e-5
}

/// `a` is a 0..1 output, `b` a 0..255 pixel value.
fn close255(a: f32, b: f32) -> bool {
    (a * 255.0 - b).abs() <= 1e-3
}

#[test]
fn letterbox_geometry_1080p_to_416() {
    let p = Placement::new(1920, 1080, &letterbox(416, 416, [114; 3]));
    assert_eq!((p.left, p.top, p.width, p.height), (0, 91, 416, 234));
    assert!(close(p.scale_x, 1920.0 / 416.0));
    assert!(close(p.scale_y, 1080.0 / 234.0));
}

#[test]
fn letterbox_geometry_cases() {
    let spec = letterbox(416, 416, [0; 3]);
    let cases = [
        // (w, h) -> (left, top, nw, nh)
        ((640, 480), (0, 52, 416, 312)),
        ((480, 640), (52, 0, 312, 416)),
        ((1, 1), (0, 0, 416, 416)),
        ((17, 9), (0, 98, 416, 220)),
        ((641, 479), (0, 52, 416, 311)),
        ((416, 416), (0, 0, 416, 416)),
    ];
    for ((w, h), want) in cases {
        let p = Placement::new(w, h, &spec);
        assert_eq!((p.left, p.top, p.width, p.height), want, "{w}x{h}");
    }
    // Odd padding: the extra pixel goes to the bottom/right.
    let p = Placement::new(3, 2, &letterbox(8, 8, [0; 3]));
    assert_eq!((p.left, p.top, p.width, p.height), (0, 1, 8, 5));
    // Stretch uses the whole output.
    let p = Placement::new(17, 9, &stretch(10, 20));
    assert_eq!((p.left, p.top, p.width, p.height), (0, 0, 10, 20));
    assert!(close(p.scale_x, 1.7) && close(p.scale_y, 0.45));
    // Mapping back to source coordinates.
    let p = Placement::new(1920, 1080, &letterbox(416, 416, [0; 3]));
    assert!((p.to_source_y(91.0)).abs() < 1e-4);
    assert!((p.to_source_x(416.0) - 1920.0).abs() < 1e-3);
}

#[test]
fn tap_convention() {
    // Downscale 4 -> 2: centres at 0.5 and 2.5.
    assert_eq!(taps(2, 2.0, 4), vec![(0, 1, 0.5), (2, 3, 0.5)]);
    // Upscale 2 -> 4: clamped at both ends.
    assert_eq!(
        taps(4, 0.5, 2),
        vec![(0, 1, 0.0), (0, 1, 0.25), (0, 1, 0.75), (1, 1, 0.0)]
    );
    // One source pixel.
    assert_eq!(taps(3, 1.0 / 3.0, 1), vec![(0, 0, 0.0); 3]);
}

#[test]
fn identity_resize_reproduces_pixels() {
    let data: Vec<u8> = (0..2 * 2 * 3).map(|i| (i * 20) as u8).collect();
    let out = run(&[FrameRef::rgb8(&data, 2, 2)], &stretch(2, 2));
    // plane c, pixel i = data[3 i + c] / 255
    for c in 0..3 {
        for i in 0..4 {
            assert!(close(out[c * 4 + i], data[3 * i + c] as f32 / 255.0));
        }
    }
}

#[test]
fn known_downscale_and_upscale() {
    // 4x1 grey ramp -> 2x1: averages of pairs.
    let px = [0u8, 100, 200, 250];
    let data: Vec<u8> = px.iter().flat_map(|&v| [v, v, v]).collect();
    let out = run(&[FrameRef::rgb8(&data, 4, 1)], &stretch(2, 1));
    assert!(close255(out[0], 50.0) && close255(out[1], 225.0));
    // 2x1 -> 4x1.
    let data = [0u8, 0, 0, 200, 200, 200];
    let out = run(&[FrameRef::rgb8(&data, 2, 1)], &stretch(4, 1));
    let want = [0.0, 50.0, 150.0, 200.0];
    for i in 0..4 {
        assert!(close255(out[i], want[i]), "{i}: {}", out[i] * 255.0);
    }
    // 1x1 -> 3x2: constant.
    let out = run(&[FrameRef::rgb8(&[10, 20, 30], 1, 1)], &stretch(3, 2));
    for c in 0..3 {
        for i in 0..6 {
            assert!(close255(out[c * 6 + i], [10.0, 20.0, 30.0][c]));
        }
    }
}

#[test]
fn bt601_limited_range() {
    let k = |v: [f32; 3], w: [f32; 3], tol: f32| v.iter().zip(w).all(|(a, b)| (a - b).abs() <= tol);
    assert!(k(yuv_to_rgb(16.0, 128.0, 128.0), [0.0; 3], 1e-4));
    assert!(k(yuv_to_rgb(235.0, 128.0, 128.0), [255.0; 3], 1e-3));
    assert!(k(yuv_to_rgb(126.0, 128.0, 128.0), [128.08; 3], 0.01));
    // BT.601 limited-range primaries.
    assert!(
        k(yuv_to_rgb(81.0, 90.0, 240.0), [254.5, 0.0, 0.0], 1.0),
        "red"
    );
    assert!(
        k(yuv_to_rgb(145.0, 54.0, 34.0), [0.0, 255.0, 0.0], 1.5),
        "green"
    );
    assert!(
        k(yuv_to_rgb(41.0, 240.0, 110.0), [0.0, 0.0, 255.0], 1.5),
        "blue"
    );
    // Clamped, not wrapped.
    assert!(k(
        yuv_to_rgb(255.0, 255.0, 255.0),
        [255.0, 125.3, 255.0],
        0.1
    ));
    assert!(k(yuv_to_rgb(0.0, 0.0, 0.0), [0.0, 135.58, 0.0], 0.1));
}

#[test]
fn nv12_frame_uses_block_chroma() {
    // 3x3 NV12, stride 4: Y rows then 2 UV rows of 2 pairs.
    let stride = 4;
    let mut data = vec![0u8; 3 * stride + 2 * stride];
    let ys = [[16u8, 235, 126], [81, 145, 41], [200, 60, 128]];
    for (y, row) in ys.iter().enumerate() {
        data[y * stride..y * stride + 3].copy_from_slice(row);
    }
    let uv = [[(128u8, 128u8), (90, 240)], [(54, 34), (240, 110)]];
    for (y, row) in uv.iter().enumerate() {
        for (x, &(u, v)) in row.iter().enumerate() {
            data[3 * stride + y * stride + 2 * x] = u;
            data[3 * stride + y * stride + 2 * x + 1] = v;
        }
    }
    let frame = FrameRef::nv12(&data, 3, 3);
    assert_eq!(frame.stride, 4);
    let out = run(&[frame], &stretch(3, 3));
    for y in 0..3 {
        for x in 0..3 {
            let (u, v) = uv[y / 2][x / 2];
            let want = yuv_to_rgb(ys[y][x] as f32, u as f32, v as f32);
            for c in 0..3 {
                assert!(close255(out[c * 9 + y * 3 + x], want[c]), "({x},{y}) c{c}");
            }
        }
    }
}

#[test]
fn channel_orders_agree() {
    let rgb: Vec<u8> = (0..5 * 3 * 3).map(|i| (i * 7 % 256) as u8).collect();
    let bgr: Vec<u8> = rgb.chunks(3).flat_map(|p| [p[2], p[1], p[0]]).collect();
    let spec = letterbox(4, 7, [1, 2, 3]);
    let a = run(&[FrameRef::rgb8(&rgb, 5, 3)], &spec);
    let b = run(&[FrameRef::bgr8(&bgr, 5, 3)], &spec);
    assert_eq!(a, b, "RGB8 and BGR8 inputs of the same image");
    let spec_bgr = PreprocessSpec {
        channel_order: ChannelOrder::Bgr,
        ..spec
    };
    let c = run(&[FrameRef::rgb8(&rgb, 5, 3)], &spec_bgr);
    let plane = 4 * 7;
    assert_eq!(&c[..plane], &a[2 * plane..]);
    assert_eq!(&c[plane..2 * plane], &a[plane..2 * plane]);
    assert_eq!(&c[2 * plane..], &a[..plane]);
}

#[test]
fn letterbox_fill_and_normalisation() {
    let data = vec![255u8; 4 * 2 * 3];
    let spec = PreprocessSpec {
        mean: [0.485, 0.456, 0.406],
        std: [0.229, 0.224, 0.225],
        ..letterbox(4, 4, [114, 0, 255])
    };
    let out = run(&[FrameRef::rgb8(&data, 4, 2)], &spec);
    // 4x2 -> 4x2 at top 1: rows 0 and 3 are fill.
    for c in 0..3 {
        let fill = ([114.0, 0.0, 255.0][c] / 255.0 - spec.mean[c]) / spec.std[c];
        let white = (1.0 - spec.mean[c]) / spec.std[c];
        for y in 0..4 {
            for x in 0..4 {
                let v = out[c * 16 + y * 4 + x];
                let want = if y == 0 || y == 3 { fill } else { white };
                assert!((v - want).abs() < 1e-5, "c{c} ({x},{y}) {v} vs {want}");
            }
        }
    }
}

#[test]
fn f16_is_rounded_f32() {
    let data: Vec<u8> = (0..13 * 7 * 3).map(|i| (i * 31 % 256) as u8).collect();
    let frames = [FrameRef::bgr8(&data, 13, 7)];
    let spec = PreprocessSpec {
        mean: [0.5; 3],
        std: [0.3; 3],
        ..letterbox(9, 11, [114; 3])
    };
    let a = run(&frames, &spec);
    let mut b = vec![half::f16::NAN; a.len()];
    preprocess_cpu_f16(&frames, &spec, &mut b).unwrap();
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(half::f16::from_f32(*x).to_bits(), y.to_bits());
    }
}

#[test]
fn batch_of_mixed_frames_and_strides() {
    let a: Vec<u8> = (0..6 * 4 * 3).map(|i| i as u8).collect();
    // Same image with a padded stride of 20 bytes.
    let mut padded = vec![0xAAu8; 20 * 4];
    for y in 0..4 {
        padded[y * 20..y * 20 + 18].copy_from_slice(&a[y * 18..y * 18 + 18]);
    }
    let spec = letterbox(5, 5, [114; 3]);
    let out = run(
        &[
            FrameRef::rgb8(&a, 6, 4),
            FrameRef::rgb8(&padded, 6, 4).with_stride(20),
        ],
        &spec,
    );
    let n = spec.image_len();
    assert_eq!(&out[..n], &out[n..]);
}

#[test]
fn invalid_inputs_are_refused() {
    let spec = stretch(4, 4);
    let data = vec![0u8; 10];
    let mut out = vec![0.0f32; spec.image_len()];
    let e = preprocess_cpu(&[FrameRef::rgb8(&data, 2, 2)], &spec, &mut out).unwrap_err();
    assert_eq!(
        e,
        InputError::Frame {
            index: 0,
            source: FrameError::Short { have: 10, need: 12 }
        }
    );
    let e = preprocess_cpu(
        &[FrameRef::rgb8(&data, 2, 1).with_stride(5)],
        &spec,
        &mut out,
    )
    .unwrap_err();
    assert!(matches!(
        e,
        InputError::Frame {
            source: FrameError::Stride { stride: 5, min: 6 },
            ..
        }
    ));
    let e = preprocess_cpu(&[FrameRef::rgb8(&data, 0, 1)], &spec, &mut out).unwrap_err();
    assert!(matches!(
        e,
        InputError::Frame {
            source: FrameError::Empty,
            ..
        }
    ));
    let e = preprocess_cpu(&[FrameRef::rgb8(&data, 1, 1)], &spec, &mut out[1..]).unwrap_err();
    assert!(matches!(e, InputError::OutputLen { .. }));
    let bad = PreprocessSpec {
        std: [1.0, 0.0, 1.0],
        ..spec
    };
    assert!(matches!(
        preprocess_cpu(&[], &bad, &mut []).unwrap_err(),
        InputError::Spec(_)
    ));
    // NV12 with an odd width needs an even row.
    assert_eq!(PixelFormat::Nv12.min_stride(3), 4);
    assert_eq!(PixelFormat::Nv12.frame_len(3, 3, 4), 3 * 4 + 4 + 4);
}

#[test]
fn arch_choice() {
    let s = [75, 80, 86, 89, 90, 100, 120];
    assert_eq!(pick_arch(90, &s), Some(ArchChoice::Cubin(90)));
    assert_eq!(pick_arch(87, &s), Some(ArchChoice::Ptx(86)));
    assert_eq!(pick_arch(130, &s), Some(ArchChoice::Ptx(120)));
    assert_eq!(pick_arch(70, &s), None);
    assert_eq!(ArchChoice::Ptx(86).option(), "compute_86");
    assert_eq!(ArchChoice::Cubin(90).option(), "sm_90");
}
