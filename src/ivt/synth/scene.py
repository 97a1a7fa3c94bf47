"""Surveillance-style scenes: cameras, backgrounds, occluders and sensor effects around a figure."""
from __future__ import annotations

import io
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from ivt.synth.attributes import Identity
from ivt.synth.figure import draw_person
from ivt.synth.pen import RGB, clamp_rgb, jitter, shade
from ivt.synth.shading import composite, shade_figure

WALLS = ("brick", "panels", "glass", "foliage", "plain")
GROUNDS = ("tiles", "asphalt", "road", "grass")
_WALL_COLOURS: tuple[RGB, ...] = ((150, 120, 100), (170, 165, 155), (120, 125, 130), (190, 180, 160),
                                  (95, 100, 95), (140, 90, 75), (200, 195, 185), (80, 85, 95))
_GROUND_COLOURS = {"tiles": (150, 145, 138), "asphalt": (92, 92, 96), "road": (80, 82, 86), "grass": (86, 120, 70)}
_CLUTTER: tuple[RGB, ...] = ((60, 60, 64), (180, 60, 50), (50, 90, 150), (210, 200, 170), (90, 110, 80),
                             (130, 130, 135), (200, 170, 60), (40, 40, 44))


@dataclass(frozen=True)
class Camera:
    """One fixed camera: its scene style and its colour/optics/sensor character."""

    index: int
    wall: str
    wall_colour: RGB
    ground: str
    horizon: float         # fraction of image height
    gains: tuple[float, float, float]
    brightness: float
    contrast: float
    blur: float            # Gaussian radius at output resolution
    noise: float           # sensor noise sd, in 8-bit levels
    lowres: float          # probability of a low-resolution (upscaled) capture
    jpeg: int              # quality of the camera's own JPEG compression
    elevated: bool         # looking down from above: the ground fills most of the frame

    def to_dict(self) -> dict:
        """Plain JSON-ready dict."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def make_cameras(rng: random.Random, n: int = 6) -> list[Camera]:
    """``n`` cameras with distinct scene styles and colour casts."""
    cams = []
    for i in range(n):
        warm = rng.uniform(-0.1, 0.1)
        elevated = i % 3 == 2
        cams.append(Camera(
            index=i + 1, wall=WALLS[(i + rng.randrange(len(WALLS))) % len(WALLS)],
            wall_colour=rng.choice(_WALL_COLOURS), ground=rng.choice(GROUNDS),
            horizon=rng.uniform(0.02, 0.2) if elevated else rng.uniform(0.45, 0.72),
            gains=(round(1 + warm + rng.uniform(-0.04, 0.04), 3), round(1 + rng.uniform(-0.05, 0.05), 3),
                   round(1 - warm + rng.uniform(-0.04, 0.04), 3)),
            brightness=round(rng.uniform(-18, 14), 2), contrast=round(rng.uniform(0.72, 1.05), 3),
            blur=round(rng.uniform(0.0, 0.9), 3), noise=round(rng.uniform(1.5, 5.5), 2),
            lowres=round(rng.uniform(0.05, 0.5), 3), jpeg=rng.randrange(35, 90), elevated=elevated))
    return cams


def _wall(draw: ImageDraw.ImageDraw, cam: Camera, w: int, y1: int, s: float, rng: random.Random) -> None:
    base = jitter(cam.wall_colour, rng, sd=6, bright=0.15)
    draw.rectangle((0, 0, w, y1), fill=base)
    line = shade(base, 0.82)
    if cam.wall == "brick":
        step = int(rng.uniform(6, 9) * s)
        for row, y in enumerate(range(0, y1, step)):
            draw.line((0, y, w, y), fill=line, width=max(1, int(s)))
            for x in range((row % 2) * step, w, 2 * step):
                draw.line((x, y, x, y + step), fill=line, width=max(1, int(s)))
    elif cam.wall == "panels":
        step = int(rng.uniform(0.25, 0.5) * w)
        for x in range(rng.randrange(step), w, step):
            draw.rectangle((x, 0, x + 2 * s, y1), fill=line)
        draw.rectangle((0, int(y1 * 0.6), w, int(y1 * 0.6 + 3 * s)), fill=line)
    elif cam.wall == "glass":
        x = rng.uniform(-0.2, 0.1) * w
        while x < w:
            ww = rng.uniform(0.3, 0.6) * w
            dark = shade((70, 90, 105), rng.uniform(0.7, 1.3))
            draw.rectangle((x, y1 * rng.uniform(0.05, 0.2), x + ww, y1 * 0.97), fill=dark)
            draw.line((x + ww * 0.3, y1 * 0.2, x + ww * 0.55, y1 * 0.6), fill=shade(dark, 1.5), width=int(3 * s))
            x += ww + 4 * s
    elif cam.wall == "foliage":
        for _ in range(14):
            r = rng.uniform(0.1, 0.3) * w
            g = clamp_rgb((rng.uniform(40, 90), rng.uniform(80, 140), rng.uniform(40, 80)))
            cx, cy = rng.uniform(0, w), rng.uniform(0, y1)
            draw.ellipse((cx - r, cy - r, cx + r, min(cy + r, y1)), fill=g)
    for _ in range(rng.randrange(0, 4)):
        x0, y0 = rng.uniform(-0.2, 1.0) * w, rng.uniform(0.05, 0.8) * y1
        draw.rectangle((x0, y0, x0 + rng.uniform(0.1, 0.5) * w, min(y1, y0 + rng.uniform(0.05, 0.3) * y1)),
                       fill=jitter(rng.choice(_CLUTTER), rng))


def _ground(draw: ImageDraw.ImageDraw, cam: Camera, w: int, h: int, y0: int, s: float, rng: random.Random) -> None:
    base = jitter(_GROUND_COLOURS[cam.ground], rng, sd=5, bright=0.15)
    draw.rectangle((0, y0, w, h), fill=base)
    line = shade(base, 0.8 if cam.ground != "road" else 2.4)
    vx = rng.uniform(-0.5, 1.5) * w
    if cam.ground == "tiles":
        for k in range(-6, 10):
            draw.line((vx, y0, vx + k * 0.35 * w * 3, h + 2 * h), fill=line, width=max(1, int(s)))
        y, gap = y0 + 3 * s, 3 * s
        while y < h:
            draw.line((0, y, w, y), fill=line, width=max(1, int(s)))
            gap *= 1.45
            y += gap
    elif cam.ground in ("asphalt", "grass"):
        for _ in range(60):
            x, y = rng.uniform(0, w), rng.uniform(y0, h)
            c = shade(base, rng.uniform(0.75, 1.25))
            draw.rectangle((x, y, x + s * rng.uniform(1, 3), y + s), fill=c)
    else:
        x = rng.uniform(0.1, 0.9) * w
        draw.polygon([(x - 2 * s, y0), (x + 2 * s, y0), (x + 14 * s, h), (x - 6 * s, h)],
                     fill=(200, 190, 140) if rng.random() < 0.3 else line)
    draw.rectangle((0, y0, w, y0 + 2 * s), fill=shade(base, 0.75))


def _bystander(draw: ImageDraw.ImageDraw, w: int, h: int, y0: int, rng: random.Random) -> None:
    """A small, partly cut-off background pedestrian."""
    hh = (h - y0) * rng.uniform(0.7, 1.1) / 7.5
    x = rng.choice((rng.uniform(-0.1, 0.12), rng.uniform(0.88, 1.1))) * w
    foot = y0 + (h - y0) * rng.uniform(0.5, 0.9)
    top = foot - 7.5 * hh
    c1, c2 = jitter(rng.choice(_CLUTTER), rng), jitter(rng.choice(_CLUTTER), rng)
    draw.ellipse((x - 0.35 * hh, top, x + 0.35 * hh, top + hh), fill=(170, 130, 105))
    draw.rounded_rectangle((x - 0.9 * hh, top + 1.1 * hh, x + 0.9 * hh, top + 3.9 * hh), radius=0.3 * hh, fill=c1)
    draw.rectangle((x - 0.6 * hh, top + 3.8 * hh, x + 0.6 * hh, foot), fill=c2)


def _occlude(draw: ImageDraw.ImageDraw, kind: str, marks: dict[str, float], w: int, h: int, s: float,
             rng: random.Random) -> None:
    unit = (marks["ankle"] - marks["head"]) / 7.12
    if kind == "pole":
        x = rng.uniform(marks["left"] + 0.3 * unit, marks["right"] - 0.3 * unit)
        pw = rng.uniform(0.22, 0.4) * unit
        c = jitter(rng.choice(((120, 122, 126), (60, 90, 70), (50, 50, 54), (170, 160, 120))), rng)
        draw.rectangle((x, 0, x + pw, h), fill=c)
        draw.rectangle((x + pw * 0.2, 0, x + pw * 0.35, h), fill=shade(c, 1.35))
    elif kind == "car":
        top = marks["ankle"] - rng.uniform(0.5, 1.5) * unit
        x0 = min(rng.uniform(-0.8, 0.1) * w, marks["left"] - 0.4 * unit)
        x1 = max(rng.uniform(0.9, 1.8) * w, marks["right"] + 0.4 * unit)
        c = jitter(rng.choice(((190, 190, 195), (30, 30, 34), (150, 30, 35), (40, 60, 120), (200, 200, 200))), rng)
        draw.rounded_rectangle((x0, top, x1, h + 10 * s), radius=6 * s, fill=c)
        draw.rectangle((x0, top + (h - top) * 0.35, x1, top + (h - top) * 0.42), fill=shade(c, 0.7))
        for wx in (x0 + 0.18 * (x1 - x0), x1 - 0.18 * (x1 - x0)):
            r = 0.09 * (x1 - x0)
            draw.ellipse((wx - r, h - 0.3 * r, wx + r, h + 1.7 * r), fill=(20, 20, 22))


def _sensor(img: Image.Image, cam: Camera, rng: random.Random, nrng: np.random.Generator) -> Image.Image:
    w, h = img.size
    if rng.random() < cam.lowres:
        f = rng.uniform(0.45, 0.75)
        img = img.resize((max(8, int(w * f)), max(8, int(h * f))), Image.Resampling.BILINEAR).resize(
            (w, h), Image.Resampling.BILINEAR)
    radius = max(0.0, cam.blur + rng.uniform(-0.2, 0.3))
    if radius > 0.15:
        img = img.filter(ImageFilter.GaussianBlur(radius))
    arr = np.asarray(img, dtype=np.float32)
    gains = np.array(cam.gains, dtype=np.float32) * np.float32(rng.uniform(0.93, 1.07))
    ramp = np.linspace(-1.0, 1.0, h if rng.random() < 0.5 else w, dtype=np.float32)
    ramp = ramp * np.float32(rng.uniform(-0.12, 0.12))
    ramp = ramp[:, None, None] if ramp.shape[0] == h else ramp[None, :, None]
    arr = (arr - 128.0) * np.float32(cam.contrast) + 128.0 + np.float32(cam.brightness + rng.uniform(-8, 8))
    arr = arr * gains * (1.0 + ramp)
    arr += nrng.normal(0.0, cam.noise, size=arr.shape).astype(np.float32)
    img = Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), "RGB")
    buf = io.BytesIO()  # the camera's own compression (the dataset file is compressed again)
    img.save(buf, "JPEG", quality=max(20, min(95, cam.jpeg + rng.randrange(-10, 11))))
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def render_image(ident: Identity, view: str, visible: frozenset[str], occluder: str | None, cam: Camera,
                 size: tuple[int, int], rng: random.Random, nrng: np.random.Generator,
                 scale: int = 3) -> Image.Image:
    """One camera image of the identity, ``size`` = (height, width), drawn at ``scale``x and reduced."""
    oh, ow = size
    w, h = ow * scale, oh * scale
    img = Image.new("RGB", (w, h))
    draw = ImageDraw.Draw(img)
    horizon = int(h * min(0.85, max(0.0, cam.horizon + rng.uniform(-0.06, 0.06))))
    _wall(draw, cam, w, horizon, scale, rng)
    _ground(draw, cam, w, h, horizon, scale, rng)
    if rng.random() < 0.3:
        _bystander(draw, w, h, horizon, rng)
    if rng.random() < 0.6:
        img = img.filter(ImageFilter.BoxBlur(rng.uniform(0.5, 1.5) * scale))
        draw = ImageDraw.Draw(img)
    fig_h = h * rng.uniform(0.72, 0.92) * min(1.0, ident.height / 1.05 + 0.03)
    unit = fig_h / 7.5
    feet = h * rng.uniform(0.9, 0.995)
    top = max(h * 0.01, feet - fig_h)
    cx = w / 2 + rng.uniform(-0.08, 0.08) * w
    ground = _GROUND_COLOURS[cam.ground]
    figure = Image.new("RGBA", img.size, (0, 0, 0, 0))
    marks = draw_person(figure, ident, view, visible, cx, top, unit, rng, shade(ground, 0.6))
    img, coverage = composite(img, figure)
    if occluder is not None:  # in front of the figure: its pixels are no longer the figure's
        front = Image.new("RGBA", img.size, (0, 0, 0, 0))
        _occlude(ImageDraw.Draw(front), occluder, marks, w, h, scale, rng)
        img, hidden = composite(img, front)
        coverage = ImageChops.subtract(coverage, hidden)
    if scale > 1:
        img, coverage, unit = img.reduce(scale), coverage.reduce(scale), unit / scale
    return _sensor(shade_figure(img, coverage, unit, nrng), cam, rng, nrng)
