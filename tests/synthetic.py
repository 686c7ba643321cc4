"""Procedural 'bedrooms' for tests and benchmarks: a wall, a floor, a bed, a window.

Random colours and positions give a distribution with structure a model can
learn in minutes (and that a test can recognise), unlike pure noise.
"""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw


def room(rng: random.Random, size: int = 64) -> Image.Image:
    wall = tuple(rng.randint(150, 235) for _ in range(3))
    floor = tuple(rng.randint(60, 130) for _ in range(3))
    image = Image.new("RGB", (size, size), wall)
    draw = ImageDraw.Draw(image)
    horizon = int(size * rng.uniform(0.55, 0.7))
    draw.rectangle([0, horizon, size, size], fill=floor)
    wx = int(size * rng.uniform(0.1, 0.6))
    draw.rectangle([wx, int(size * 0.15), wx + size // 4, int(size * 0.4)], fill=(170, 210, 250))
    bx = int(size * rng.uniform(0.05, 0.45))
    bed = tuple(rng.randint(120, 255) for _ in range(3))
    draw.rectangle([bx, horizon - size // 8, bx + size // 2, horizon + size // 6], fill=bed)
    draw.rectangle([bx, horizon - size // 5, bx + size // 12, horizon + size // 6], fill=(90, 60, 40))
    return image


def write_rooms(folder: Path, count: int, size: int = 64, seed: int = 0, ext: str = "png") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    paths = []
    for i in range(count):
        path = folder / f"room-{i:05d}.{ext}"
        room(rng, size).save(path)
        paths.append(path)
    return paths
