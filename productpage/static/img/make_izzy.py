#!/usr/bin/env python3
"""Generate izzy.png: a small avatar (a sailboat on a teal disc).

Uses only the Python standard library (zlib + struct). Each pixel is
supersampled for smooth, anti-aliased edges. Run from anywhere:

    python3 make_izzy.py            # writes izzy.png next to this script
    python3 make_izzy.py out.png    # writes to a chosen path
"""
import math
import os
import struct
import sys
import zlib

SIZE = 96
SS = 4  # supersamples per axis

SKY_TOP = (72, 170, 160)
SKY_BOTTOM = (40, 120, 128)
SEA = (28, 78, 110)
SEA_LIGHT = (60, 120, 150)
SUN = (255, 214, 102)
SAIL_MAIN = (250, 248, 240)
SAIL_JIB = (240, 120, 90)
HULL = (120, 72, 48)
MAST = (70, 50, 40)
RING = (255, 255, 255)


def in_triangle(px, py, a, b, c):
    def sign(p1, p2, p3):
        return (p1[0] - p3[0]) * (p2[1] - p3[1]) - (p2[0] - p3[0]) * (p1[1] - p3[1])

    d1 = sign((px, py), a, b)
    d2 = sign((px, py), b, c)
    d3 = sign((px, py), c, a)
    has_neg = d1 < 0 or d2 < 0 or d3 < 0
    has_pos = d1 > 0 or d2 > 0 or d3 > 0
    return not (has_neg and has_pos)


def lerp(c1, c2, t):
    return tuple(c1[i] + (c2[i] - c1[i]) * t for i in range(3))


def sample(x, y):
    """Return (r, g, b, a) in 0..1 range-ish floats for a point in [0, 1]^2."""
    cx, cy = 0.5, 0.5
    r = math.hypot(x - cx, y - cy)
    if r > 0.5:
        return (0.0, 0.0, 0.0, 0.0)
    if r > 0.47:
        return RING + (1.0,)

    # Background: sky gradient, then sea with gentle waves.
    wave = 0.012 * math.sin(x * 2 * math.pi * 3.0)
    horizon = 0.70 + wave
    if y < horizon:
        col = lerp(SKY_TOP, SKY_BOTTOM, y / horizon)
        if math.hypot(x - 0.74, y - 0.26) < 0.09:
            col = SUN
    else:
        band = math.sin((y - horizon) * 80.0 + x * 6.0)
        col = SEA_LIGHT if band > 0.85 else SEA

    # Hull: a trapezoid sitting on the waterline.
    hull_top, hull_bot = 0.64, 0.73
    if hull_top <= y <= hull_bot:
        t = (y - hull_top) / (hull_bot - hull_top)
        left = 0.24 + 0.07 * t
        right = 0.78 - 0.07 * t
        if left <= x <= right:
            col = HULL

    # Mast.
    if 0.495 <= x <= 0.515 and 0.18 <= y <= 0.64:
        col = MAST

    # Main sail (left of mast) and jib (right of mast).
    if in_triangle(x, y, (0.49, 0.19), (0.49, 0.60), (0.27, 0.60)):
        col = SAIL_MAIN
    if in_triangle(x, y, (0.53, 0.25), (0.53, 0.60), (0.70, 0.60)):
        col = SAIL_JIB

    return col + (1.0,)


def render():
    rows = []
    for py in range(SIZE):
        row = bytearray([0])  # PNG filter type: None
        for px in range(SIZE):
            acc = [0.0, 0.0, 0.0, 0.0]
            for sy in range(SS):
                for sx in range(SS):
                    x = (px + (sx + 0.5) / SS) / SIZE
                    y = (py + (sy + 0.5) / SS) / SIZE
                    r, g, b, a = sample(x, y)
                    acc[0] += r * a
                    acc[1] += g * a
                    acc[2] += b * a
                    acc[3] += a
            n = SS * SS
            alpha = acc[3] / n
            if alpha > 0:
                rgb = [acc[i] / acc[3] for i in range(3)]
            else:
                rgb = [0.0, 0.0, 0.0]
            row.extend(int(round(max(0, min(255, v)))) for v in rgb)
            row.append(int(round(alpha * 255)))
        rows.append(bytes(row))
    return b"".join(rows)


def chunk(kind, data):
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)


def write_png(path):
    raw = render()
    ihdr = struct.pack(">IIBBBBB", SIZE, SIZE, 8, 6, 0, 0, 0)  # 8-bit RGBA
    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )
    with open(path, "wb") as fh:
        fh.write(png)


if __name__ == "__main__":
    default = os.path.join(os.path.dirname(os.path.abspath(__file__)), "izzy.png")
    out = sys.argv[1] if len(sys.argv) > 1 else default
    write_png(out)
    print("wrote", out)
