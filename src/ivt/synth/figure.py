"""A full-body pedestrian drawn from primitives in one of four views.

Body proportions follow the usual 7.5-head canon. Coordinates are in head heights (see
:class:`~ivt.synth.pen.Pen`); the figure's feet rest at y = 7.5.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

from ivt.synth import accessories as acc
from ivt.synth.attributes import COLOURS, HAIR_COLOURS, SKIN_TONES, Identity
from ivt.synth.pen import RGB, Pen, Point, clamp_rgb, contrast, fill_garment, jitter, limb_end, shade

SH_Y, ARMPIT_Y, WAIST_Y, HIP_Y, CROTCH_Y, KNEE_Y, ANKLE_Y, SOLE_Y = 1.35, 1.95, 3.0, 3.6, 3.85, 5.55, 7.12, 7.5
HEM_Y = {"coat": 5.3, "dress": 5.15, "jacket": 3.95}
FAR = 0.78  # brightness of limbs on the far side


@dataclass
class Palette:
    """Per-image colours of every part (base colours jittered)."""

    skin: RGB
    hair: RGB
    upper: RGB
    upper2: RGB | None
    lower: RGB
    shoes: RGB
    bag: RGB
    headwear: RGB
    umbrella: RGB

    @staticmethod
    def make(ident: Identity, rng: random.Random) -> Palette:
        def col(name: str | None, table: dict = COLOURS) -> RGB:
            return jitter(table[name], rng) if name else (0, 0, 0)

        lower = col(ident.lower_colour)
        if ident.lower_type == "jeans":  # denim: a washed-out, slightly greyed version of the colour
            grey = sum(lower) / 3
            lower = clamp_rgb(tuple(0.7 * v + 0.3 * grey + 8 for v in lower))
        return Palette(
            skin=jitter(SKIN_TONES[ident.skin], rng, sd=4.0, bright=0.08),
            hair=col(ident.hair_colour, HAIR_COLOURS), upper=col(ident.upper_colour),
            upper2=col(ident.upper_pattern_colour) if ident.upper_pattern_colour else None,
            lower=lower, shoes=col(ident.shoes_colour), bag=col(ident.bag_colour),
            headwear=col(ident.headwear_colour),
            umbrella=col(rng.choice(["black", "navy", "red", "blue", "grey", "green"])),
        )


@dataclass
class Pose:
    """Walking pose and body shape for one image."""

    swing: float       # leg swing amplitude (radians)
    near_forward: bool  # side views: near leg is the forward one
    arm_out: float     # frontal views: arm angle away from the body
    lift: float        # frontal views: one foot lifted (stride foreshortening)
    lift_left: bool
    sw: float          # shoulder half-width
    ww: float          # waist half-width
    hw: float          # hip half-width
    light: float       # where garments are brightest across their width (0..1)

    @staticmethod
    def make(ident: Identity, rng: random.Random) -> Pose:
        b = ident.build
        male = ident.gender == "male"
        return Pose(swing=rng.uniform(0.08, 0.42), near_forward=rng.random() < 0.5,
                    arm_out=rng.uniform(0.05, 0.16), lift=rng.uniform(0.0, 0.3), lift_left=rng.random() < 0.5,
                    sw=(0.98 if male else 0.86) * b, ww=(0.64 if male else 0.54) * b,
                    hw=(0.7 if male else 0.76) * b, light=rng.uniform(0.25, 0.75))


def _hem(ident: Identity) -> float:
    return HEM_Y.get(ident.upper_type, 3.75)


def _frontal_torso(p: Pose, ident: Identity) -> list[Point]:
    sw, ww, hw, hem = p.sw, p.ww, p.hw, _hem(ident)
    top = sw - 0.28 if ident.sleeve == "sleeveless" else sw
    flare = {"dress": 0.36, "coat": 0.12}.get(ident.upper_type, 0.02)
    half = [(0.22, 1.12), (top - 0.06, SH_Y - 0.07), (top, SH_Y + 0.08), (sw - 0.1, ARMPIT_Y), (ww, WAIST_Y),
            (hw, HIP_Y), (hw + flare, hem)]
    return [(-x, y) for x, y in half] + [(x, y) for x, y in reversed(half)]


def _side_torso(p: Pose, ident: Identity, d: int) -> list[Point]:
    chest = 0.5 if ident.gender == "female" else 0.42
    hem = _hem(ident)
    flare = {"dress": 0.22, "coat": 0.1}.get(ident.upper_type, 0.0)
    pts = [(-0.3, 1.15), (0.18, 1.2), (0.34, SH_Y + 0.1), (chest, 2.0), (0.34, WAIST_Y), (0.4, HIP_Y),
           (0.42 + flare, hem), (-0.44 - flare, hem), (-0.4, HIP_Y), (-0.34, WAIST_Y), (-0.44, 1.9), (-0.38, 1.35)]
    return [(x * d, y) for x, y in pts]


def _legs_frontal(p: Pose) -> list[tuple[Point, Point, Point]]:
    legs = []
    for side in (-1, 1):
        hip = (side * 0.34 * p.hw / 0.72, HIP_Y + 0.1)
        lift = p.lift if (side == -1) == p.lift_left else 0.0
        ankle = (side * 0.3, ANKLE_Y - lift)
        knee = ((hip[0] + ankle[0]) / 2 + side * 0.03, (hip[1] + ankle[1]) / 2 - lift * 0.3)
        legs.append((hip, knee, ankle))
    return legs


def _legs_side(p: Pose, d: int) -> tuple[tuple[Point, Point, Point], tuple[Point, Point, Point]]:
    """(near leg, far leg) as hip, knee, ankle."""
    hip = (-0.02 * d, HIP_Y + 0.1)
    out = []
    for forward in (p.near_forward, not p.near_forward):
        a = p.swing if forward else -p.swing * 0.8
        knee = limb_end(hip, KNEE_Y - hip[1], a, d)
        shin = a * 0.2 if forward else a - 0.35 * p.swing
        out.append((hip, knee, limb_end(knee, ANKLE_Y - KNEE_Y, shin, d)))
    return out[0], out[1]


def _draw_leg(img: Image.Image, pen: Pen, leg: tuple[Point, Point, Point], ident: Identity, pal: Palette,
              f: float) -> None:
    hip, knee, ankle = leg
    skin, lower = shade(pal.skin, f), shade(pal.lower, f)
    pen.seg(hip, knee, 0.5, 0.38, skin)
    pen.seg(knee, ankle, 0.38, 0.26, skin)
    lt = ident.lower_type
    if lt in ("trousers", "jeans"):
        w = (0.6, 0.46, 0.4) if lt == "trousers" else (0.56, 0.41, 0.34)
        pen.seg(hip, knee, w[0], w[1], lower)
        pen.seg(knee, ankle, w[1], w[2], lower)
        if lt == "jeans":
            pen.line([knee, ankle], contrast(lower, 0.15), 0.03)
    elif lt == "shorts":
        pen.seg(hip, (hip[0] + (knee[0] - hip[0]) * 0.6, hip[1] + (knee[1] - hip[1]) * 0.6), 0.62, 0.56, lower)


def _draw_shoe(pen: Pen, ankle: Point, ident: Identity, pal: Palette, d: int, f: float) -> None:
    """A shoe at ``ankle``; d = 0 for frontal views, else the facing direction."""
    c = shade(pal.shoes, f)
    x, y = ankle
    kind = ident.shoes_type
    if kind == "boots":
        pen.seg((x, y - 0.55), (x, y + 0.05), 0.38, 0.36, c)
    if kind == "sandals":
        pen.ell(x + d * 0.12, y + 0.22, 0.2 if d == 0 else 0.3, 0.12, fill=shade(pal.skin, f))
        pen.line([(x - 0.15 + d * 0.1, y + 0.2), (x + 0.15 + d * 0.1, y + 0.2)], c, 0.08)
        pen.rect(x - 0.2 + d * 0.1, y + 0.3, x + 0.2 + d * 0.25, y + 0.36, fill=c)
        return
    if d == 0:
        rx = {"high heels": 0.14, "leather shoes": 0.19}.get(kind, 0.21)
        pen.ell(x, y + 0.2, rx, 0.16, fill=c)
    else:
        toe = 0.38 if kind == "high heels" else 0.48
        top = 0.1 if kind == "high heels" else 0.02
        pen.poly([(x - d * 0.16, y + top), (x + d * 0.12, y + top), (x + d * toe, y + 0.24),
                  (x + d * toe, y + 0.38), (x - d * 0.18, y + 0.38)], c)
        if kind == "high heels":
            pen.rect(x - d * 0.16, y + 0.3, x - d * 0.1, y + 0.45, fill=c)
    if kind == "sneakers":
        pen.line([(x - 0.16 - (0.02 if d else 0), y + 0.34), (x + 0.16 + d * 0.3, y + 0.34)],
                 contrast(c, 0.35) if pal.shoes != (0, 0, 0) else (200, 200, 200), 0.05)


def _skirt(pen: Pen, p: Pose, ident: Identity, d: int) -> None:
    long = ident.lower_type == "long skirt"
    bottom, flare = (6.95, 0.45) if long else (5.05, 0.26)
    if d == 0:
        pen.poly([(-p.ww, WAIST_Y - 0.05), (p.ww, WAIST_Y - 0.05), (p.hw + flare, bottom),
                  (-p.hw - flare, bottom)], 255)
    else:
        pen.poly([(-0.34 * d, WAIST_Y - 0.05), (0.34 * d, WAIST_Y - 0.05), ((0.45 + flare) * d, bottom),
                  (-(0.5 + flare) * d, bottom)], 255)


def _arm_frontal(p: Pose, side: int, raised: bool) -> tuple[Point, Point, Point]:
    sh = (side * (p.sw - 0.15), SH_Y + 0.1)
    if raised:
        elbow = (side * (p.sw - 0.05), SH_Y + 1.3)
        return sh, elbow, (side * 0.12, SH_Y + 1.05)
    elbow = limb_end(sh, 1.4, p.arm_out, side)
    return sh, elbow, limb_end(elbow, 1.25, p.arm_out * 0.5, side)


def _arm_side(p: Pose, d: int, near: bool, raised: bool) -> tuple[Point, Point, Point]:
    sh = (-0.05 * d, SH_Y + 0.12)
    leg_fwd = p.near_forward if near else not p.near_forward
    a = -p.swing * 0.8 if leg_fwd else p.swing * 0.8
    elbow = limb_end(sh, 1.4, a, d)
    if raised:
        return sh, elbow, (elbow[0] + d * 0.9, elbow[1] - 0.45)
    return sh, elbow, limb_end(elbow, 1.25, a + 0.2, d)


def _sleeves(pen: Pen, arm: tuple[Point, Point, Point], sleeve: str, fill) -> None:
    sh, elbow, wrist = arm
    if sleeve == "long":
        pen.seg(sh, elbow, 0.44, 0.38, fill)
        pen.seg(elbow, wrist, 0.38, 0.33, fill)
    elif sleeve == "short":
        pen.seg(sh, (sh[0] + (elbow[0] - sh[0]) * 0.5, sh[1] + (elbow[1] - sh[1]) * 0.5), 0.48, 0.44, fill)


def _bare_arm(pen: Pen, arm: tuple[Point, Point, Point], skin: RGB) -> None:
    sh, elbow, wrist = arm
    pen.seg(sh, elbow, 0.32, 0.27, skin)
    pen.seg(elbow, wrist, 0.27, 0.22, skin)
    pen.ell(wrist[0], wrist[1] + 0.08, 0.12, 0.15, fill=skin)


def _torso_details(pen: Pen, ident: Identity, pal: Palette, view: str, p: Pose) -> None:
    line = contrast(pal.upper, 0.3)
    hem = _hem(ident)
    t = ident.upper_type
    if view == "front":
        if t in ("shirt", "jacket", "coat"):
            pen.line([(0, 1.2), (0, hem)], line, 0.035)
            pen.poly([(-0.24, 1.08), (0, 1.32), (-0.1, 1.45), (-0.3, 1.2)], line)
            pen.poly([(0.24, 1.08), (0, 1.32), (0.1, 1.45), (0.3, 1.2)], line)
        if t == "coat":
            for y in (2.2, 2.8, 3.4):
                pen.ell(-0.14, y, 0.04, 0.04, fill=line)
                pen.ell(0.14, y, 0.04, 0.04, fill=line)
        if t == "hoodie":
            pen.rect(-0.4, 2.9, 0.4, 3.5, outline=line, width=0.04, r=0.1)
            pen.line([(-0.1, 1.2), (-0.12, 1.9)], line, 0.03)
            pen.line([(0.1, 1.2), (0.12, 1.9)], line, 0.03)
    elif t == "hoodie":
        pen.poly([(-0.35, 1.15), (0.35, 1.15), (0.2, 1.95), (-0.2, 1.95)], shade(pal.upper, 0.85))
    if t in ("sweater", "hoodie") and view in ("front", "back"):
        pen.rect(-p.hw - 0.02, hem - 0.12, p.hw + 0.02, hem, fill=shade(pal.upper, 0.85))


def _upper_shapes(torso: list[Point], arms: list[tuple[Point, Point, Point]], sleeve: str):
    def shapes(mp: Pen) -> None:
        mp.poly(torso, 255)
        for arm in arms:
            _sleeves(mp, arm, sleeve, 255)
    return shapes


def draw_person(img: Image.Image, ident: Identity, view: str, visible: frozenset[str], cx: float,
                top: float, h: float, rng: random.Random, shadow: RGB) -> dict[str, float]:
    """Draw the identity into ``img`` (feet at top + 7.5h) and return landmark heights in pixels."""
    pen = Pen(ImageDraw.Draw(img), cx, top, h)
    pal, p = Palette.make(ident, rng), Pose.make(ident, rng)
    pen.ell(0, SOLE_Y - 0.02, 1.0, 0.16, fill=shadow)
    phone = "held" in visible and ident.held == "phone"
    if view in ("front", "back"):
        _draw_frontal(img, pen, ident, view, visible, pal, p, phone)
    else:
        _draw_side(img, pen, ident, view, visible, pal, p, phone)
    return {"knee": pen.pt(0, KNEE_Y)[1], "ankle": pen.pt(0, ANKLE_Y)[1], "hand": pen.pt(0, CROTCH_Y + 0.5)[1],
            "left": pen.pt(-1.3, 0)[0], "right": pen.pt(1.3, 0)[0], "head": top}


def _draw_frontal(img: Image.Image, pen: Pen, ident: Identity, view: str, visible: frozenset[str],
                  pal: Palette, p: Pose, phone: bool) -> None:
    left = 1 if view == "front" else -1       # image side of the person's left
    if view == "front":
        acc.hair_behind(pen, ident, pal.hair)
    for leg in _legs_frontal(p):
        _draw_leg(img, pen, leg, ident, pal, 1.0)
    for leg in _legs_frontal(p):
        _draw_shoe(pen, leg[2], ident, pal, 0, 1.0)
    if ident.lower_type in ("skirt", "long skirt"):
        fill_garment(img, pen, lambda mp: _skirt(mp, p, ident, 0), pal.lower, light=p.light)
    elif ident.lower_type is not None:
        pen.poly([(-p.ww, WAIST_Y - 0.05), (p.ww, WAIST_Y - 0.05), (p.hw, HIP_Y), (p.hw * 0.9, CROTCH_Y + 0.2),
                  (0, CROTCH_Y), (-p.hw * 0.9, CROTCH_Y + 0.2), (-p.hw, HIP_Y)], pal.lower)
    raised = phone and view == "front"
    arms = [_arm_frontal(p, side, raised and side == -left) for side in (-1, 1)]
    for arm, side in zip(arms, (-1, 1)):
        if not (raised and side == -left):
            _bare_arm(pen, arm, pal.skin)
    if view == "front" and ident.upper_type == "hoodie":
        pen.ell(0, 1.15, 0.45, 0.22, fill=shade(pal.upper, 0.8))
    sleeve_arms = [a for a, s in zip(arms, (-1, 1)) if not (raised and s == -left)]
    fill_garment(img, pen, _upper_shapes(_frontal_torso(p, ident), sleeve_arms, ident.sleeve),
                 pal.upper, ident.upper_pattern, pal.upper2, p.light)
    _torso_details(pen, ident, pal, view, p)
    acc.head(pen, ident, view, visible, pal.skin, pal.hair, 0, pal.headwear)
    if "bag" in visible:
        wrist = arms[0 if left == -1 else 1][2]
        acc.bag(pen, ident.bag, view, left, pal.bag, p.sw, wrist, 0)
    if view == "back":
        acc.long_hair_over_back(pen, ident, pal.hair, 0)
    if raised:
        arm = arms[0 if left == 1 else 1]
        pen.seg(arm[1], arm[2], 0.27, 0.22, pal.skin)
        if ident.sleeve == "long":
            pen.seg(arm[1], arm[2], 0.38, 0.33, pal.upper)
        if ident.sleeve != "sleeveless":
            _sleeves(pen, arm, ident.sleeve, pal.upper)
    if "held" in visible:
        wrist = arms[0 if left == 1 else 1][2]
        acc.held(pen, ident.held, wrist, -left, pal.umbrella, 0)


def _draw_side(img: Image.Image, pen: Pen, ident: Identity, view: str, visible: frozenset[str],
               pal: Palette, p: Pose, phone: bool) -> None:
    d = -1 if view == "left" else 1
    near_leg, far_leg = _legs_side(p, d)
    far_arm = _arm_side(p, d, False, False)
    near_arm = _arm_side(p, d, True, phone and view == "right")
    _bare_arm(pen, far_arm, shade(pal.skin, FAR))
    _sleeves(pen, far_arm, ident.sleeve, shade(pal.upper, FAR))
    _draw_leg(img, pen, far_leg, ident, pal, FAR)
    _draw_shoe(pen, far_leg[2], ident, pal, d, FAR)
    if ident.bag == "backpack" and "bag" in visible:
        acc.backpack_side(pen, d, pal.bag)
    _draw_leg(img, pen, near_leg, ident, pal, 1.0)
    _draw_shoe(pen, near_leg[2], ident, pal, d, 1.0)
    if ident.lower_type in ("skirt", "long skirt"):
        fill_garment(img, pen, lambda mp: _skirt(mp, p, ident, d), pal.lower, light=p.light)
    elif ident.lower_type is not None:
        pen.ell(0, HIP_Y, 0.42, 0.45, fill=pal.lower)
    fill_garment(img, pen, lambda mp: mp.poly(_side_torso(p, ident, d), 255), pal.upper,
                 ident.upper_pattern, pal.upper2, p.light)
    if ident.upper_type == "hoodie":
        pen.ell(-0.3 * d, 1.25, 0.22, 0.3, fill=shade(pal.upper, 0.85))
    acc.head(pen, ident, view, visible, pal.skin, pal.hair, d, pal.headwear)
    acc.long_hair_over_back(pen, ident, pal.hair, d)
    if ident.bag == "backpack" and "bag" in visible:
        pen.line([(0.1 * d, SH_Y - 0.05), (0.3 * d, ARMPIT_Y + 0.2)], pal.bag, 0.12)
    _bare_arm(pen, near_arm, pal.skin)
    _sleeves(pen, near_arm, ident.sleeve, pal.upper)
    if "bag" in visible and ident.bag != "backpack":
        acc.bag(pen, ident.bag, view, 0, pal.bag, p.sw, near_arm[2], d)
    if "held" in visible:
        acc.held(pen, ident.held, near_arm[2], 0, pal.umbrella, d)


__all__ = ["draw_person", "Palette", "Pose"]
