"""Head, hair, glasses, headwear, bags and held items of a figure, in body units.

``d`` is 0 for frontal views, else the facing direction (+1 = image right). In frontal views
``left`` is the image side of the person's left (+1 in a front view, -1 in a back view).
"""
from __future__ import annotations

from ivt.synth.attributes import Identity
from ivt.synth.pen import RGB, Pen, Point, contrast, shade

DARK = (22, 22, 26)


def hair_behind(pen: Pen, ident: Identity, hair: RGB) -> None:
    """Front view: the hair mass behind the head and shoulders, drawn before the body."""
    if ident.hair_length == "medium":
        pen.rect(-0.44, 0.3, 0.44, 1.15, fill=hair, r=0.15)
    elif ident.hair_length == "long":
        pen.rect(-0.48, 0.3, 0.48, 2.15, fill=hair, r=0.25)


def long_hair_over_back(pen: Pen, ident: Identity, hair: RGB, d: int) -> None:
    """Back and side views: long hair falling over the back (drawn over a backpack)."""
    if ident.hair_length != "long":
        return
    if d == 0:
        pen.poly([(-0.42, 0.5), (0.42, 0.5), (0.46, 1.6), (0.36, 2.2), (-0.36, 2.2), (-0.46, 1.6)], hair)
    else:
        pen.poly([(-0.02 * d, 0.45), (-0.4 * d, 0.45), (-0.46 * d, 1.5), (-0.36 * d, 2.1), (-0.1 * d, 1.9)], hair)


def head(pen: Pen, ident: Identity, view: str, visible: frozenset[str], skin: RGB, hair: RGB, d: int,
         headwear: RGB) -> None:
    """Neck, head, hair, face features, glasses and headwear."""
    bald = ident.hair_length == "bald"
    neck = shade(skin, 0.88)
    if d == 0:
        pen.rect(-0.14, 0.8, 0.14, 1.3, fill=neck)
        if view == "back":
            pen.ell(0, 0.52, 0.36, 0.5, fill=skin)
            if not bald:
                pen.ell(0, 0.44, 0.41, 0.46, fill=hair)
                if ident.hair_length == "medium":
                    pen.rect(-0.42, 0.4, 0.42, 1.12, fill=hair, r=0.12)
        else:
            if bald:
                pen.ell(0, 0.52, 0.36, 0.5, fill=skin)
            else:
                pen.ell(0, 0.44, 0.41, 0.47, fill=hair)
                pen.ell(0, 0.62, 0.32, 0.41, fill=skin)
            pen.ell(-0.13, 0.58, 0.04, 0.035, fill=DARK)
            pen.ell(0.13, 0.58, 0.04, 0.035, fill=DARK)
            pen.line([(-0.08, 0.84), (0.08, 0.84)], shade(skin, 0.7), 0.035)
            if ident.hair_length in ("medium", "long"):
                bottom = 1.05 if ident.hair_length == "medium" else 1.9
                for s in (-1, 1):
                    pen.poly([(s * 0.3, 0.3), (s * 0.45, 0.4), (s * 0.46, bottom), (s * 0.3, bottom - 0.1),
                              (s * 0.27, 0.6)], hair)
            if "glasses" in visible:
                for s in (-1, 1):
                    pen.rect(s * 0.04, 0.5, s * 0.29, 0.66, outline=DARK, width=0.05, r=0.03)
                pen.line([(-0.05, 0.55), (0.05, 0.55)], DARK, 0.04)
    else:
        pen.rect(-0.16 + 0.02 * d, 0.8, 0.12 + 0.02 * d, 1.3, fill=neck)
        pen.ell(0.05 * d, 0.52, 0.34, 0.5, fill=skin)
        pen.poly([(0.36 * d, 0.5), (0.47 * d, 0.66), (0.36 * d, 0.7)], skin)
        if not bald:
            pen.ell(-0.05 * d, 0.42, 0.38, 0.43, fill=hair)
            pen.ell(0.15 * d, 0.64, 0.25, 0.38, fill=skin)
            if ident.hair_length == "medium":
                pen.rect(-0.42 * d, 0.4, -0.02 * d, 1.1, fill=hair, r=0.1)
        pen.ell(0.25 * d, 0.57, 0.035, 0.035, fill=DARK)
        if "glasses" in visible:
            pen.rect(0.17 * d, 0.5, 0.34 * d, 0.64, outline=DARK, width=0.05, r=0.03)
            pen.line([(0.17 * d, 0.54), (-0.08 * d, 0.53)], DARK, 0.045)
    if ident.headwear is not None:
        _headwear(pen, ident.headwear, view, d, headwear)


def _headwear(pen: Pen, kind: str, view: str, d: int, c: RGB) -> None:
    x = -0.03 * d
    if kind == "cap":
        pen.chord(x, 0.36, 0.43, 0.44, 180, 360, c)
        if d:
            pen.poly([(0.2 * d, 0.28), (0.74 * d, 0.34), (0.72 * d, 0.41), (0.2 * d, 0.38)], shade(c, 0.8))
        elif view == "front":
            pen.ell(0, 0.35, 0.38, 0.07, fill=shade(c, 0.8))
        else:
            pen.line([(-0.3, 0.34), (0.3, 0.34)], shade(c, 0.8), 0.05)
    elif kind == "hat":
        pen.ell(x, 0.2, 0.68, 0.1, fill=shade(c, 0.85))
        pen.rect(x - 0.35, -0.22, x + 0.35, 0.22, fill=c, r=0.12)
        pen.rect(x - 0.35, 0.08, x + 0.35, 0.17, fill=contrast(c, 0.35))
    else:
        pen.chord(x, 0.38, 0.43, 0.47, 180, 360, c)
        pen.rect(x - 0.43, 0.24, x + 0.43, 0.4, fill=shade(c, 0.85), r=0.05)


def bag(pen: Pen, kind: str | None, view: str, left: int, c: RGB, sw: float, wrist: Point, d: int) -> None:
    """A bag carried on the person's left (or on the back for a backpack)."""
    edge = contrast(c, 0.3)
    if kind == "backpack":
        if view == "front":
            for s in (-1, 1):
                pen.seg((s * 0.42, 1.2), (s * 0.47, 2.75), 0.17, 0.15, c)
        elif view == "back":
            pen.rect(-0.62 * sw / 0.9, 1.45, 0.62 * sw / 0.9, 3.35, fill=c, r=0.16)
            pen.rect(-0.44, 2.55, 0.44, 3.25, fill=shade(c, 0.85), outline=edge, width=0.03, r=0.1)
            pen.line([(-0.2, 1.42), (0.0, 1.3), (0.2, 1.42)], edge, 0.05)
        return
    side = left if d == 0 else 0
    wx, wy = wrist
    if kind == "handbag":
        bx = wx + side * 0.1
        pen.line([(bx - 0.18, wy + 0.22), (wx, wy - 0.02), (bx + 0.18, wy + 0.22)], shade(c, 0.7), 0.05)
        pen.poly([(bx - 0.25, wy + 0.18), (bx + 0.25, wy + 0.18), (bx + 0.32, wy + 0.72), (bx - 0.32, wy + 0.72)], c)
        pen.line([(bx - 0.25, wy + 0.3), (bx + 0.25, wy + 0.3)], edge, 0.03)
    elif kind == "shoulder bag":
        if d == 0:
            pen.line([(-side * 0.45, 1.22), (side * 0.72, 3.15)], shade(c, 0.8), 0.08)
            x0, x1 = sorted((side * 0.42, side * 1.0))
        else:
            pen.line([(0.08 * d, 1.22), (-0.12 * d, 3.1)], shade(c, 0.8), 0.08)
            x0, x1 = sorted((-0.38 * d, 0.22 * d))
        pen.rect(x0, 3.05, x1, 3.7, fill=c, r=0.06)
        pen.line([(x0, 3.3), (x1, 3.3)], edge, 0.03)
    elif kind == "tote bag":
        if d == 0:
            top_x = side * 0.8
            x0, x1 = sorted((side * 0.5, side * 1.15))
            pen.line([(side * 0.58, 1.28), (top_x, 2.9)], shade(c, 0.8), 0.07)
        else:
            x0, x1 = sorted((-0.38 * d, 0.3 * d))
            pen.line([(0.0, 1.28), (-0.02 * d, 2.9)], shade(c, 0.8), 0.07)
        pen.rect(x0, 2.85, x1, 3.85, fill=c, r=0.05)


def backpack_side(pen: Pen, d: int, c: RGB) -> None:
    """Side view: the backpack body behind the torso (drawn before it)."""
    x0, x1 = sorted((-0.28 * d, -0.84 * d))
    pen.rect(x0, 1.45, x1, 3.3, fill=c, r=0.15)
    p0, p1 = sorted((-0.62 * d, -0.9 * d))
    pen.rect(p0, 2.45, p1, 3.15, fill=shade(c, 0.85), outline=contrast(c, 0.3), width=0.03, r=0.08)


def held(pen: Pen, kind: str | None, wrist: Point, right: int, umbrella: RGB, d: int) -> None:
    """An item in the right hand at ``wrist`` (right: image side of the right hand, frontal views)."""
    wx, wy = wrist
    if kind == "phone":
        pen.rect(wx - 0.09, wy - 0.18, wx + 0.09, wy + 0.14, fill=DARK, r=0.02)
    elif kind == "bottle":
        pen.rect(wx - 0.09, wy - 0.15, wx + 0.09, wy + 0.42, fill=(168, 196, 214), r=0.04)
        pen.rect(wx - 0.05, wy - 0.24, wx + 0.05, wy - 0.14, fill=(40, 80, 150))
    elif kind == "umbrella":
        dx = right * 0.3 if d == 0 else d * 0.5
        pen.line([(wx, wy - 0.05), (wx, wy + 0.4)], DARK, 0.06)
        pen.seg((wx + dx * 0.12, wy + 0.45), (wx + dx, wy + 2.75), 0.3, 0.05, umbrella)
        pen.line([(wx, wy + 0.4), (wx + dx, wy + 2.9)], shade(umbrella, 0.6), 0.03)
