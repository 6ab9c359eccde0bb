#!/usr/bin/env python3
"""Writes a synthetic MR data set for the ingest benchmark, with the Python standard library only.

Each file is a DICOM Part-10 file (MR Image Storage, explicit VR little endian): 128-byte preamble,
"DICM", the file meta group with its group length, then the MR dataset in tag order with a 16-bit
(12 bits stored) 256x256 PixelData (OW). About 133 kB each.

The instances form `--series` sagittal knee series (default 8 of 125 slices = 1000 instances), two
series per study, so that the 8-association run sends one whole series per association. Every UID
is unique (2.25.<uuid4>).

Usage: gen_mr.py OUT_DIR [--count 1000] [--series 8] [--size 256]
Files land in OUT_DIR/s01/0001.dcm ... ; OUT_DIR/COMPLETE is written last.
"""

import argparse
import os
import struct
import sys
import uuid

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
# The implementation class UID of this generator (fixed, so files say who wrote them).
IMPLEMENTATION_UID = "2.25.164602530869512401117766843524573066912"
LONG_VRS = {b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"SQ", b"UT", b"UN", b"UC", b"UR", b"SV", b"UV"}


def uid():
    return "2.25.%d" % uuid.uuid4().int


def element(group, elem, vr, value):
    """One explicit-VR little-endian element; strings are padded to even length."""
    vr_b = vr.encode("ascii")
    if isinstance(value, str):
        data = value.encode("iso8859-1")
        if len(data) % 2:
            data += b"\0" if vr == "UI" else b" "
    elif vr == "US":
        data = b"".join(struct.pack("<H", v) for v in (value if isinstance(value, (list, tuple)) else [value]))
    elif vr == "UL":
        data = struct.pack("<I", value)
    else:
        data = bytes(value)
        if len(data) % 2:
            data += b"\0"
    head = struct.pack("<HH", group, elem) + vr_b
    if vr_b in LONG_VRS:
        head += b"\0\0" + struct.pack("<I", len(data))
    else:
        if len(data) > 0xFFFF:
            raise ValueError("value too long for a short VR")
        head += struct.pack("<H", len(data))
    return head + data


def ds(x):
    """A decimal string of at most 16 characters."""
    s = ("%.6f" % x).rstrip("0").rstrip(".")
    if s == "-0":
        s = "0"
    return s[:16]


def meta(sop_instance):
    body = b"".join(
        [
            element(0x0002, 0x0001, "OB", b"\x00\x01"),
            element(0x0002, 0x0002, "UI", MR_IMAGE_STORAGE),
            element(0x0002, 0x0003, "UI", sop_instance),
            element(0x0002, 0x0010, "UI", EXPLICIT_VR_LE),
            element(0x0002, 0x0012, "UI", IMPLEMENTATION_UID),
            element(0x0002, 0x0013, "SH", "KNEENODE_BENCH"),
        ]
    )
    return element(0x0002, 0x0000, "UL", len(body)) + body


def pixels(size, slice_index, slices):
    """A cylinder-ish phantom: a disc whose radius follows the slice, on a row-wise ramp.

    Built row by row from repeated 2-byte words, so 1000 slices take seconds, not minutes.
    """
    c = size / 2.0
    # The radius grows and shrinks across the series like a femur cut sagittally.
    t = (slice_index + 0.5) / slices
    r = size * (0.15 + 0.25 * (1.0 - abs(2.0 * t - 1.0)))
    rows = []
    for y in range(size):
        bg = struct.pack("<H", 40 + (y * 200) // size)
        fg = struct.pack("<H", 1500 + (y * 1000) // size + (slice_index % 7) * 10)
        dy = y + 0.5 - c
        if abs(dy) < r:
            half = (r * r - dy * dy) ** 0.5
            x0 = max(0, int(c - half))
            x1 = min(size, int(c + half))
        else:
            x0 = x1 = 0
        rows.append(bg * x0 + fg * (x1 - x0) + bg * (size - x1))
    return b"".join(rows)


def instance(study, series, sop, frame_of_ref, k_study, k_series, index, slices, size, pixel_data):
    spacing = 0.7
    pixel_spacing = 160.0 / size
    x = -0.5 * slices * spacing + index * spacing
    half = 0.5 * size * pixel_spacing
    position = "\\".join(ds(v) for v in (x, -half, half))
    elements = [
        element(0x0008, 0x0005, "CS", "ISO_IR 100"),
        element(0x0008, 0x0008, "CS", "ORIGINAL\\PRIMARY\\OTHER"),
        element(0x0008, 0x0016, "UI", MR_IMAGE_STORAGE),
        element(0x0008, 0x0018, "UI", sop),
        element(0x0008, 0x0020, "DA", "20240105"),
        element(0x0008, 0x0021, "DA", "20240105"),
        element(0x0008, 0x0023, "DA", "20240105"),
        element(0x0008, 0x0030, "TM", "101500"),
        element(0x0008, 0x0031, "TM", "1016%02d" % k_series),
        element(0x0008, 0x0033, "TM", "1016%02d" % k_series),
        element(0x0008, 0x0050, "SH", "BENCH%04d" % k_study),
        element(0x0008, 0x0060, "CS", "MR"),
        element(0x0008, 0x0070, "LO", "kneenode bench"),
        element(0x0008, 0x0090, "PN", ""),
        element(0x0008, 0x103E, "LO", "SAG 3D DESS BENCH %d" % k_series),
        element(0x0010, 0x0010, "PN", "Bench^Knee%d" % k_study),
        element(0x0010, 0x0020, "LO", "BENCH%04d" % k_study),
        element(0x0010, 0x0030, "DA", "19700101"),
        element(0x0010, 0x0040, "CS", "O"),
        element(0x0018, 0x0015, "CS", "KNEE"),
        element(0x0018, 0x0020, "CS", "GR"),
        element(0x0018, 0x0021, "CS", "SS\\SP"),
        element(0x0018, 0x0022, "CS", ""),
        element(0x0018, 0x0023, "CS", "3D"),
        element(0x0018, 0x0050, "DS", ds(spacing)),
        element(0x0018, 0x0080, "DS", "16.3"),
        element(0x0018, 0x0081, "DS", "4.7"),
        element(0x0018, 0x0083, "DS", "1"),
        element(0x0018, 0x0086, "IS", "1"),
        element(0x0018, 0x0087, "DS", "3"),
        element(0x0018, 0x0088, "DS", ds(spacing)),
        element(0x0018, 0x0091, "IS", "1"),
        element(0x0018, 0x1030, "LO", "knee dess bench"),
        element(0x0018, 0x1314, "DS", "25"),
        element(0x0018, 0x5100, "CS", "FFS"),
        element(0x0020, 0x000D, "UI", study),
        element(0x0020, 0x000E, "UI", series),
        element(0x0020, 0x0010, "SH", "%d" % k_study),
        element(0x0020, 0x0011, "IS", "%d" % k_series),
        element(0x0020, 0x0012, "IS", "1"),
        element(0x0020, 0x0013, "IS", "%d" % (index + 1)),
        element(0x0020, 0x0032, "DS", position),
        element(0x0020, 0x0037, "DS", "0\\1\\0\\0\\0\\-1"),
        element(0x0020, 0x0052, "UI", frame_of_ref),
        element(0x0020, 0x0060, "CS", "R"),
        element(0x0020, 0x1002, "IS", "%d" % slices),
        element(0x0020, 0x1040, "LO", ""),
        element(0x0020, 0x1041, "DS", ds(x)),
        element(0x0028, 0x0002, "US", 1),
        element(0x0028, 0x0004, "CS", "MONOCHROME2"),
        element(0x0028, 0x0010, "US", size),
        element(0x0028, 0x0011, "US", size),
        element(0x0028, 0x0030, "DS", "%s\\%s" % (ds(pixel_spacing), ds(pixel_spacing))),
        element(0x0028, 0x0100, "US", 16),
        element(0x0028, 0x0101, "US", 12),
        element(0x0028, 0x0102, "US", 11),
        element(0x0028, 0x0103, "US", 0),
        element(0x0028, 0x1050, "DS", "1200"),
        element(0x0028, 0x1051, "DS", "2400"),
        element(0x7FE0, 0x0010, "OW", pixel_data),
    ]
    return b"\0" * 128 + b"DICM" + meta(sop) + b"".join(elements)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--series", type=int, default=8)
    ap.add_argument("--size", type=int, default=256)
    a = ap.parse_args()
    if a.count % a.series:
        sys.exit("gen_mr.py: --count must be a multiple of --series")
    slices = a.count // a.series
    os.makedirs(a.out, exist_ok=True)
    pix = [pixels(a.size, i, slices) for i in range(slices)]
    total = 0
    study = None
    for s in range(a.series):
        if s % 2 == 0:
            study = uid()
            frame_of_ref = uid()
        series = uid()
        d = os.path.join(a.out, "s%02d" % (s + 1))
        os.makedirs(d, exist_ok=True)
        for i in range(slices):
            blob = instance(study, series, uid(), frame_of_ref, s // 2 + 1, s + 1, i, slices, a.size, pix[i])
            tmp = os.path.join(d, ".%04d.tmp" % (i + 1))
            with open(tmp, "wb") as f:
                f.write(blob)
            os.replace(tmp, os.path.join(d, "%04d.dcm" % (i + 1)))
            total += len(blob)
    with open(os.path.join(a.out, "COMPLETE"), "w") as f:
        f.write("count=%d series=%d size=%d bytes=%d\n" % (a.count, a.series, a.size, total))
    print("gen_mr.py: wrote %d instances (%d bytes) in %d series to %s" % (a.count, total, a.series, a.out))


if __name__ == "__main__":
    main()
