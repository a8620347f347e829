"""Small PNG images made with the standard library, for seeded outputs."""

from __future__ import annotations

import base64
import math
import struct
import zlib

RGB = tuple[int, int, int]


def png(width: int, height: int, pixels: list[list[RGB]]) -> bytes:
    """An 8-bit RGB PNG from rows of (r, g, b)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + bytes(channel for pixel in row for channel in pixel) for row in pixels)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def gradient_png(width: int = 60, height: int = 30) -> str:
    """Base64 of a small gradient (what a kernel puts in image/png)."""
    rows = [[(x * 255 // width, y * 255 // height, 160) for x in range(width)] for y in range(height)]
    return base64.b64encode(png(width, height, rows)).decode()


def plot_png(width: int = 520, height: int = 220) -> str:
    """Base64 of a little line chart: two damped waves on a grid (for the README screenshot)."""
    white, grid, axis = (255, 255, 255), (234, 237, 241), (120, 126, 134)
    blue, orange = (31, 111, 235), (230, 120, 20)
    img = [[white for _ in range(width)] for _ in range(height)]
    left, right, top, bottom = 36, width - 12, 12, height - 26

    def dot(x: int, y: int, color: RGB, r: int = 1) -> None:
        for dy in range(-r, r + 1):
            for dx in range(-r, r + 1):
                if 0 <= x + dx < width and 0 <= y + dy < height and dx * dx + dy * dy <= r * r + 1:
                    img[y + dy][x + dx] = color

    for gx in range(left, right + 1, 40):
        for y in range(top, bottom):
            img[y][gx] = grid
    for gy in range(top, bottom + 1, 30):
        for x in range(left, right):
            img[gy][x] = grid
    for y in range(top, bottom + 1):
        img[y][left] = axis
    for x in range(left, right + 1):
        img[bottom][x] = axis

    def curve(f: object, color: RGB) -> None:
        previous: tuple[int, int] | None = None
        for x in range(left + 1, right):
            t = (x - left) / (right - left) * 4 * math.pi
            value = f(t)  # type: ignore[operator]
            y = int((top + bottom) / 2 - value * (bottom - top) / 2.3)
            if previous is not None:
                steps = max(abs(y - previous[1]), 1)
                for s in range(steps + 1):
                    dot(previous[0] + (x - previous[0]) * s // steps, previous[1] + (y - previous[1]) * s // steps, color)
            previous = (x, y)

    curve(lambda t: math.exp(-t / 9) * math.sin(t * 1.5), blue)
    curve(lambda t: math.exp(-t / 6) * math.cos(t), orange)
    return base64.b64encode(png(width, height, img)).decode()
