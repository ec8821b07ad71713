#!/usr/bin/env python3
"""Write framegate's hostile test inputs into server/tests/data/.

Standard library only (struct, zlib, hashlib); every output is deterministic.

  truncated.jpg     the first 40 % of dog.jpg (SOI, headers and part of the
                    scan; no EOI): a decoder must fail cleanly, not hang/panic.
  huge-header.png   a well-formed PNG (valid CRCs, valid zlib stream) whose
                    IHDR declares 30000 x 30000 RGB 8-bit, but whose single
                    IDAT holds only the first scanline (~100 bytes of file).
                    Decoding it fully would need 2.7 GB; a gateway must reject
                    it from the header (pixel limit) before allocating.
  huge-header.jpg   a baseline JPEG: SOI, APP0 JFIF, DQT, SOF0 declaring
                    30000 x 30000 with 3 components (no subsampling), standard
                    Annex K luminance Huffman tables, SOS and the entropy data
                    of one all-grey MCU, then EOI (~400 bytes).  Same purpose.
  random.bin        4096 pseudo-random bytes: SHA-256 in counter mode,
                    block i = sha256(b"framegate/random.bin/" + u32be(i)).

``--self-test`` also builds 8 x 8 versions of both crafted images with the
same code and checks (with Pillow, if installed) that they decode to the
expected uniform images, and that Pillow reads 30000 x 30000 from the huge
headers without decoding them.

Usage: tools/make_bad_images.py [--out-dir server/tests/data] [--dog PATH] [--self-test]
"""
import argparse
import hashlib
import io
import os
import struct
import sys
import zlib

HUGE = 30000


# ---------------------------------------------------------------- PNG -----
def png_chunk(kind, data):
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)


def make_png(width, height, rows_present):
    """RGB 8-bit PNG of width x height; the IDAT holds `rows_present`
    scanlines (filter 0, black).  rows_present == height gives a complete
    image."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    raw = (b"\x00" + b"\x00" * (3 * width)) * rows_present
    idat = zlib.compress(raw, 9)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)
            + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b""))


# --------------------------------------------------------------- JPEG -----
# ITU-T T.81 Annex K.3, table K.3 (DC luminance) and K.5 (AC luminance).
DC_LUM_BITS = [0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0]
DC_LUM_VALS = list(range(12))
AC_LUM_BITS = [0, 2, 1, 3, 3, 2, 4, 3, 5, 5, 4, 4, 0, 0, 1, 0x7D]
AC_LUM_VALS = [
    0x01, 0x02, 0x03, 0x00, 0x04, 0x11, 0x05, 0x12, 0x21, 0x31, 0x41, 0x06,
    0x13, 0x51, 0x61, 0x07, 0x22, 0x71, 0x14, 0x32, 0x81, 0x91, 0xA1, 0x08,
    0x23, 0x42, 0xB1, 0xC1, 0x15, 0x52, 0xD1, 0xF0, 0x24, 0x33, 0x62, 0x72,
    0x82, 0x09, 0x0A, 0x16, 0x17, 0x18, 0x19, 0x1A, 0x25, 0x26, 0x27, 0x28,
    0x29, 0x2A, 0x34, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3A, 0x43, 0x44, 0x45,
    0x46, 0x47, 0x48, 0x49, 0x4A, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59,
    0x5A, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6A, 0x73, 0x74, 0x75,
    0x76, 0x77, 0x78, 0x79, 0x7A, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89,
    0x8A, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9A, 0xA2, 0xA3,
    0xA4, 0xA5, 0xA6, 0xA7, 0xA8, 0xA9, 0xAA, 0xB2, 0xB3, 0xB4, 0xB5, 0xB6,
    0xB7, 0xB8, 0xB9, 0xBA, 0xC2, 0xC3, 0xC4, 0xC5, 0xC6, 0xC7, 0xC8, 0xC9,
    0xCA, 0xD2, 0xD3, 0xD4, 0xD5, 0xD6, 0xD7, 0xD8, 0xD9, 0xDA, 0xE1, 0xE2,
    0xE3, 0xE4, 0xE5, 0xE6, 0xE7, 0xE8, 0xE9, 0xEA, 0xF1, 0xF2, 0xF3, 0xF4,
    0xF5, 0xF6, 0xF7, 0xF8, 0xF9, 0xFA,
]
assert sum(DC_LUM_BITS) == len(DC_LUM_VALS) and sum(AC_LUM_BITS) == len(AC_LUM_VALS) == 162


def segment(marker, payload):
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def make_jpeg(width, height):
    """Baseline JPEG declaring width x height, 3 components 1x1 sampling, all
    using quant table 0 and Huffman tables 0.  The scan holds one MCU (three
    blocks, each DC diff 0 = code '00' and EOB = code '1010'), i.e. a mid-grey
    8x8 image; for larger sizes the scan data simply ends early."""
    out = bytearray(b"\xFF\xD8")                                   # SOI
    out += segment(0xE0, b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00")  # APP0
    out += segment(0xDB, b"\x00" + bytes([1] * 64))                # DQT 0, all ones
    sof = struct.pack(">BHHB", 8, height, width, 3)
    for cid in (1, 2, 3):
        sof += bytes([cid, 0x11, 0])
    out += segment(0xC0, sof)                                      # SOF0
    out += segment(0xC4, b"\x00" + bytes(DC_LUM_BITS) + bytes(DC_LUM_VALS))  # DHT DC0
    out += segment(0xC4, b"\x10" + bytes(AC_LUM_BITS) + bytes(AC_LUM_VALS))  # DHT AC0
    sos = bytes([3, 1, 0x00, 2, 0x00, 3, 0x00, 0, 63, 0])
    out += segment(0xDA, sos)                                      # SOS
    # bits: 00 1010 | 00 1010 | 00 1010 | pad 111111
    out += bytes([0x28, 0xA2, 0xBF])
    out += b"\xFF\xD9"                                             # EOI
    return bytes(out)


# -------------------------------------------------------------- other -----
def random_bin(n=4096):
    out = bytearray()
    i = 0
    while len(out) < n:
        out += hashlib.sha256(b"framegate/random.bin/" + struct.pack(">I", i)).digest()
        i += 1
    return bytes(out[:n])


def truncated(src_bytes, fraction=0.4):
    return src_bytes[: int(len(src_bytes) * fraction)]


def self_test(out_dir):
    try:
        from PIL import Image
    except ImportError:
        print("self-test: Pillow not installed, structural checks only", file=sys.stderr)
        Image = None
    small_png = make_png(8, 8, 8)
    small_jpg = make_jpeg(8, 8)
    if Image is not None:
        im = Image.open(io.BytesIO(small_png))
        im.load()
        assert im.size == (8, 8) and im.tobytes() == bytes(8 * 8 * 3), "8x8 PNG"
        im = Image.open(io.BytesIO(small_jpg))
        im.load()
        px = set(im.convert("RGB").tobytes())
        assert im.size == (8, 8) and px == {128}, ("8x8 JPEG", px)
        for name in ("huge-header.png", "huge-header.jpg"):
            Image.MAX_IMAGE_PIXELS = None
            im = Image.open(os.path.join(out_dir, name))   # header only, no decode
            assert im.size == (HUGE, HUGE), (name, im.size)
    data = open(os.path.join(out_dir, "huge-header.png"), "rb").read()
    assert struct.unpack(">II", data[16:24]) == (HUGE, HUGE)
    data = open(os.path.join(out_dir, "huge-header.jpg"), "rb").read()
    sof = data.index(b"\xFF\xC0")
    assert struct.unpack(">HH", data[sof + 5:sof + 9]) == (HUGE, HUGE)
    print("self-test ok", file=sys.stderr)


def main():
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out-dir", default=os.path.join(repo, "server/tests/data"))
    ap.add_argument("--dog", default=None, help="source for truncated.jpg (default OUT_DIR/dog.jpg)")
    ap.add_argument("--self-test", action="store_true")
    args = ap.parse_args()
    dog = args.dog or os.path.join(args.out_dir, "dog.jpg")
    files = {
        "truncated.jpg": truncated(open(dog, "rb").read()),
        "huge-header.png": make_png(HUGE, HUGE, 1),
        "huge-header.jpg": make_jpeg(HUGE, HUGE),
        "random.bin": random_bin(4096),
    }
    for name, data in files.items():
        with open(os.path.join(args.out_dir, name), "wb") as f:
            f.write(data)
        print(f"{name}\t{len(data)}\t{hashlib.sha256(data).hexdigest()}")
    if args.self_test:
        self_test(args.out_dir)


if __name__ == "__main__":
    main()
