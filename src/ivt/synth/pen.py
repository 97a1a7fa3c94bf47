"""Drawing in body units: a pen maps (x, y) in head-heights around the figure to canvas pixels."""
from __future__ import annotations

import math
import random

import numpy as np
from PIL import Image, ImageDraw

RGB = tuple[int, int, int]
Point = tuple[float, float]


def clamp_rgb(c: tuple[float, float, float]) -> RGB:
    """Round and clip a colour to 0..255."""
    return tuple(int(max(0, min(255, round(v)))) for v in c)  # type: ignore[return-value]


def shade(c: RGB, f: float) -> RGB:
    """Scale a colour's brightness."""
    return clamp_rgb((c[0] * f, c[1] * f, c[2] * f))


def contrast(c: RGB, amount: float = 0.3) -> RGB:
    """A detail colour that stands out from ``c``: darker for light colours, lighter for dark ones."""
    lum = 0.3 * c[0] + 0.59 * c[1] + 0.11 * c[2]
    if lum < 70:
        return clamp_rgb(tuple(v + (255 - v) * amount * 0.8 for v in c))
    return shade(c, 1.0 - amount)


def jitter(c: RGB, rng: random.Random, sd: float = 7.0, bright: float = 0.12) -> RGB:
    """Per-image variation of a base colour: overall brightness plus small per-channel noise."""
    f = 1.0 + rng.uniform(-bright, bright)
    return clamp_rgb(tuple(v * f + rng.gauss(0.0, sd) for v in c))


class Pen:
    """Draws primitives at body-unit coordinates: x right, y down, both in head heights."""

    def __init__(self, draw: ImageDraw.ImageDraw, cx: float, top: float, h: float) -> None:
        self.draw, self.cx, self.top, self.h = draw, cx, top, h

    def on(self, draw: ImageDraw.ImageDraw) -> Pen:
        """The same coordinate frame drawing onto another image."""
        return Pen(draw, self.cx, self.top, self.h)

    def pt(self, x: float, y: float) -> Point:
        """Canvas pixel of a body-unit point."""
        return (self.cx + x * self.h, self.top + y * self.h)

    def poly(self, pts: list[Point], fill) -> None:
        """Filled polygon."""
        self.draw.polygon([self.pt(x, y) for x, y in pts], fill=fill)

    def ell(self, x: float, y: float, rx: float, ry: float, fill=None, outline=None, width: float = 0) -> None:
        """Ellipse centred at (x, y) with radii rx, ry."""
        x0, y0 = self.pt(x - rx, y - ry)
        x1, y1 = self.pt(x + rx, y + ry)
        self.draw.ellipse((x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)), fill=fill, outline=outline,
                          width=max(1, int(width * self.h)) if outline is not None else 0)

    def chord(self, x: float, y: float, rx: float, ry: float, start: float, end: float, fill) -> None:
        """Filled chord of an ellipse between two angles (degrees, clockwise from 3 o'clock)."""
        x0, y0 = self.pt(x - rx, y - ry)
        x1, y1 = self.pt(x + rx, y + ry)
        self.draw.chord((x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)), start, end, fill=fill)

    def rect(self, x0: float, y0: float, x1: float, y1: float, fill=None, r: float = 0.0,
             outline=None, width: float = 0) -> None:
        """Rectangle with optional rounded corners (radius r) and outline."""
        (a, b), (c, d) = self.pt(min(x0, x1), min(y0, y1)), self.pt(max(x0, x1), max(y0, y1))
        w = max(1, int(width * self.h)) if outline is not None else 0
        box = (a, b, max(c, a + 1), max(d, b + 1))
        if r * self.h < 1.0:  # Pillow's rounded_rectangle fails on sub-pixel radii of tiny boxes
            self.draw.rectangle(box, fill=fill, outline=outline, width=w)
        else:
            self.draw.rounded_rectangle(box, radius=r * self.h, fill=fill, outline=outline, width=w)

    def line(self, pts: list[Point], fill, width: float) -> None:
        """Polyline of the given width."""
        self.draw.line([self.pt(x, y) for x, y in pts], fill=fill, width=max(1, int(round(width * self.h))),
                       joint="curve")

    def seg(self, a: Point, b: Point, wa: float, wb: float, fill) -> None:
        """A tapered limb from a to b with rounded ends (widths in head units)."""
        (x0, y0), (x1, y1) = self.pt(*a), self.pt(*b)
        dx, dy = x1 - x0, y1 - y0
        n = math.hypot(dx, dy) or 1e-6
        nx, ny = -dy / n, dx / n
        ra, rb = wa * self.h / 2, wb * self.h / 2
        self.draw.polygon([(x0 + nx * ra, y0 + ny * ra), (x1 + nx * rb, y1 + ny * rb),
                           (x1 - nx * rb, y1 - ny * rb), (x0 - nx * ra, y0 - ny * ra)], fill=fill)
        self.draw.ellipse((x0 - ra, y0 - ra, x0 + ra, y0 + ra), fill=fill)
        self.draw.ellipse((x1 - rb, y1 - rb, x1 + rb, y1 + rb), fill=fill)


def along(a: Point, b: Point, t: float) -> Point:
    """The point a fraction t of the way from a to b."""
    return (a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t)


def limb_end(start: Point, length: float, angle: float, d: float = 1.0) -> Point:
    """End of a limb of ``length`` hanging from ``start``, swung ``angle`` radians towards +x*d."""
    return (start[0] + d * length * math.sin(angle), start[1] + length * math.cos(angle))


def fill_garment(img: Image.Image, pen: Pen, shapes, colour: RGB, pattern: str = "plain",
                 colour2: RGB | None = None, light: float = 0.4) -> None:
    """Paint the union of ``shapes(mask_pen)`` with a garment colour and optional pattern.

    ``shapes`` draws with fill 255 on a mask pen; the pattern (stripes, checks, dots) is clipped
    to the mask so it follows the garment's outline and sleeves; ``light`` (0 = left edge,
    1 = right edge) is where the garment is brightest, the rest shades off for volume.
    """
    mask = Image.new("L", img.size, 0)
    shapes(pen.on(ImageDraw.Draw(mask)))
    box = mask.getbbox()
    if box is None:
        return
    w, h = box[2] - box[0], box[3] - box[1]
    layer = Image.new("RGB", (w, h), colour)
    if pattern != "plain" and colour2 is not None:
        d = ImageDraw.Draw(layer)
        unit = pen.h
        if pattern == "striped":
            period, band = 0.26 * unit, max(1.0, 0.11 * unit)
            y = (pen.top - box[1]) % period
            while y < h:
                d.rectangle((0, y, w, y + band), fill=colour2)
                y += period
        elif pattern == "checked":
            period, band = 0.36 * unit, max(1.0, 0.1 * unit)
            mixed = clamp_rgb(tuple((a + b) / 2 for a, b in zip(colour, colour2)))
            t = 0.0
            while t < max(w, h):
                d.rectangle((0, t, w, t + band), fill=mixed)
                d.rectangle((t, 0, t + band, h), fill=mixed)
                t += period
            t = 0.0
            while t < max(w, h):
                d.rectangle((0, t + band * 0.3, w, t + band * 0.7), fill=colour2)
                d.rectangle((t + band * 0.3, 0, t + band * 0.7, h), fill=colour2)
                t += period
        elif pattern == "dotted":
            period, r = 0.24 * unit, max(1.0, 0.055 * unit)
            row = 0
            y = period / 2
            while y < h:
                x = period / 2 + (period / 2 if row % 2 else 0)
                while x < w:
                    d.ellipse((x - r, y - r, x + r, y + r), fill=colour2)
                    x += period
                y += period
                row += 1
    if w > 2:
        layer.paste(shade(colour, 0.6), (0, 0, w, h), _side_shadow(w, h, light))
    img.paste(layer, box[:2], mask.crop(box))


def _side_shadow(w: int, h: int, light: float) -> Image.Image:
    """A horizontal mask that darkens towards the edges away from the light (light in [0, 1])."""
    t = np.linspace(0.0, 1.0, w, dtype=np.float32)
    amount = np.clip(np.abs(t - light) * 1.25, 0.0, 1.0) ** 1.6 * 150.0
    return Image.fromarray(amount.astype(np.uint8)[None, :], "L").resize((w, h), Image.Resampling.NEAREST)
