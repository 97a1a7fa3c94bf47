"""Attribute vocabularies, the colour table and identity sampling (including hard negatives).

An identity is an :class:`Identity`: the textual attributes a caption can mention plus a few
nuisance fields (skin tone, body build) that change the pixels but never the text. Two
identities are the same person for retrieval purposes exactly when their textual keys match.
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass, fields

# Base RGB of each clothing colour as a camera tends to record it: muted, slightly dark.
COLOURS: dict[str, tuple[int, int, int]] = {
    "black": (30, 30, 34),
    "white": (222, 222, 216),
    "grey": (122, 122, 126),
    "red": (168, 38, 44),
    "blue": (46, 86, 164),
    "navy": (32, 40, 74),
    "green": (52, 116, 64),
    "yellow": (214, 188, 62),
    "pink": (222, 140, 168),
    "purple": (106, 60, 130),
    "brown": (110, 74, 48),
    "orange": (218, 118, 42),
    "beige": (194, 174, 138),
    "light blue": (126, 164, 206),
}
COLOUR_WEIGHTS: dict[str, float] = {
    "black": 3.0, "white": 2.0, "grey": 1.6, "red": 1.3, "blue": 1.5, "navy": 1.0, "green": 1.0,
    "yellow": 0.8, "pink": 0.9, "purple": 0.7, "brown": 1.0, "orange": 0.7, "beige": 0.9, "light blue": 0.9,
}
HAIR_COLOURS: dict[str, tuple[int, int, int]] = {
    "black": (24, 22, 22), "brown": (92, 60, 38), "blonde": (200, 166, 104),
    "grey": (156, 154, 150), "red": (146, 66, 34),
}
HAIR_COLOUR_WEIGHTS = {"black": 5.0, "brown": 2.5, "blonde": 1.2, "grey": 0.8, "red": 0.5}
SKIN_TONES: tuple[tuple[int, int, int], ...] = (
    (236, 200, 172), (222, 180, 148), (198, 150, 116), (164, 116, 84), (120, 82, 58), (88, 60, 44),
)

GENDERS = ("male", "female")
HAIR_LENGTHS = {"male": {"short": 8.0, "medium": 1.2, "bald": 0.8},
                "female": {"long": 5.5, "medium": 2.5, "short": 1.5}}
# type -> (allowed sleeves, allowed patterns, genders, weight)
UPPER_TYPES: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], float]] = {
    "t-shirt": (("short",), ("plain", "striped"), GENDERS, 3.0),
    "shirt": (("short", "long"), ("plain", "striped", "checked"), GENDERS, 2.0),
    "blouse": (("short", "long", "sleeveless"), ("plain", "striped", "dotted"), ("female",), 1.2),
    "tank top": (("sleeveless",), ("plain", "striped"), GENDERS, 0.7),
    "sweater": (("long",), ("plain", "striped"), GENDERS, 1.5),
    "hoodie": (("long",), ("plain",), GENDERS, 1.2),
    "jacket": (("long",), ("plain",), GENDERS, 2.0),
    "coat": (("long",), ("plain", "checked"), GENDERS, 1.4),
    "dress": (("short", "long", "sleeveless"), ("plain", "striped", "dotted", "checked"), ("female",), 1.6),
}
PATTERN_WEIGHTS = {"plain": 6.0, "striped": 1.5, "checked": 1.0, "dotted": 1.0}
# type -> (genders, weight, allowed colours or None for all)
LOWER_TYPES: dict[str, tuple[tuple[str, ...], float, tuple[str, ...] | None]] = {
    "trousers": (GENDERS, 3.0, None),
    "jeans": (GENDERS, 3.0, ("blue", "navy", "black", "grey", "white", "light blue")),
    "shorts": (GENDERS, 1.5, None),
    "skirt": (("female",), 1.5, None),
    "long skirt": (("female",), 0.8, None),
}
SHOE_TYPES: dict[str, tuple[tuple[str, ...], float]] = {
    "sneakers": (GENDERS, 4.0), "boots": (GENDERS, 1.5), "sandals": (GENDERS, 1.0),
    "leather shoes": (GENDERS, 1.8), "high heels": (("female",), 1.2),
}
BAG_TYPES: dict[str, tuple[tuple[str, ...], float]] = {
    "backpack": (GENDERS, 3.0), "handbag": (("female",), 1.5),
    "shoulder bag": (GENDERS, 1.8), "tote bag": (GENDERS, 0.9),
}
HEADWEAR_TYPES = ("cap", "hat", "beanie")
HELD_ITEMS = ("phone", "umbrella", "bottle")
P_BAG, P_HEADWEAR, P_GLASSES, P_HELD = 0.55, 0.2, 0.22, 0.2

# Attribute slots compared by attribute_diff and changed by hard-negative derivation.
SLOTS = ("gender", "hair_length", "hair_colour", "upper_type", "upper_colour", "upper_pattern",
         "sleeve", "lower_type", "lower_colour", "shoes_type", "shoes_colour", "bag", "bag_colour",
         "headwear", "headwear_colour", "glasses", "held")
MUTATION_WEIGHTS = {
    "gender": 0.3, "hair_length": 1.0, "hair_colour": 1.0, "upper_type": 1.0, "upper_colour": 3.0,
    "upper_pattern": 1.2, "sleeve": 0.8, "lower_type": 1.0, "lower_colour": 2.5, "shoes_type": 0.8,
    "shoes_colour": 1.5, "bag": 1.5, "bag_colour": 1.5, "headwear": 0.8, "headwear_colour": 0.5,
    "glasses": 1.0, "held": 0.8,
}


@dataclass(frozen=True)
class Identity:
    """One person: textual attributes (``None`` = absent) plus nuisance body fields."""

    gender: str
    hair_length: str
    hair_colour: str | None
    upper_type: str
    upper_colour: str
    upper_pattern: str
    upper_pattern_colour: str | None
    sleeve: str
    lower_type: str | None
    lower_colour: str | None
    shoes_type: str
    shoes_colour: str
    bag: str | None
    bag_colour: str | None
    headwear: str | None
    headwear_colour: str | None
    glasses: bool
    held: str | None
    skin: int = 0
    height: float = 1.0
    build: float = 1.0

    def key(self) -> tuple:
        """The textual attributes only: equal keys mean indistinguishable by description."""
        return tuple(getattr(self, f.name) for f in fields(self) if f.name not in ("skin", "height", "build"))

    def to_dict(self) -> dict:
        """Plain JSON-ready dict of every field."""
        return asdict(self)


def _pick(rng: random.Random, weights: dict[str, float], exclude: tuple = ()) -> str:
    items = [(k, w) for k, w in weights.items() if k not in exclude]
    return rng.choices([k for k, _ in items], weights=[w for _, w in items])[0]


def _colour(rng: random.Random, exclude: tuple = (), allowed: tuple[str, ...] | None = None) -> str:
    weights = {k: w for k, w in COLOUR_WEIGHTS.items() if allowed is None or k in allowed}
    return _pick(rng, weights, exclude)


def _upper_weights(gender: str) -> dict[str, float]:
    return {t: s[3] for t, s in UPPER_TYPES.items() if gender in s[2]}


def _lower_weights(gender: str) -> dict[str, float]:
    return {t: s[1] for t, s in LOWER_TYPES.items() if gender in s[0]}


def _gendered(table: dict[str, tuple[tuple[str, ...], float]], gender: str) -> dict[str, float]:
    return {t: s[1] for t, s in table.items() if gender in s[0]}


def _fix_upper(d: dict, rng: random.Random) -> None:
    """Make sleeve, pattern and pattern colour consistent with the upper type."""
    sleeves, patterns, _, _ = UPPER_TYPES[d["upper_type"]]
    if d["sleeve"] not in sleeves:
        d["sleeve"] = rng.choice(sleeves)
    if d["upper_pattern"] not in patterns:
        d["upper_pattern"] = "plain"
    if d["upper_pattern"] == "plain":
        d["upper_pattern_colour"] = None
    elif d["upper_pattern_colour"] in (None, d["upper_colour"]):
        d["upper_pattern_colour"] = _colour(rng, exclude=(d["upper_colour"],))


def _fix_lower(d: dict, rng: random.Random) -> None:
    """Dresses have no lower garment; other uppers need one with an allowed colour."""
    if d["upper_type"] == "dress":
        d["lower_type"] = d["lower_colour"] = None
        return
    if d["lower_type"] is None or d["gender"] not in LOWER_TYPES[d["lower_type"]][0]:
        d["lower_type"] = _pick(rng, _lower_weights(d["gender"]))
    allowed = LOWER_TYPES[d["lower_type"]][2]
    if d["lower_colour"] is None or (allowed is not None and d["lower_colour"] not in allowed):
        d["lower_colour"] = _colour(rng, allowed=allowed)


def sample_identity(rng: random.Random) -> Identity:
    """Draw a fresh identity from the priors."""
    gender = rng.choice(GENDERS)
    hair_length = _pick(rng, HAIR_LENGTHS[gender])
    d: dict = {
        "gender": gender,
        "hair_length": hair_length,
        "hair_colour": None if hair_length == "bald" else _pick(rng, HAIR_COLOUR_WEIGHTS),
        "upper_type": _pick(rng, _upper_weights(gender)),
        "upper_colour": _colour(rng),
        "upper_pattern": "plain", "upper_pattern_colour": None, "sleeve": "",
        "lower_type": None, "lower_colour": None,
        "shoes_type": _pick(rng, _gendered(SHOE_TYPES, gender)),
        "shoes_colour": _colour(rng),
        "bag": None, "bag_colour": None, "headwear": None, "headwear_colour": None,
        "glasses": rng.random() < P_GLASSES,
        "held": rng.choice(HELD_ITEMS) if rng.random() < P_HELD else None,
        "skin": rng.randrange(len(SKIN_TONES)),
        "height": round(rng.uniform(0.93, 1.05), 3),
        "build": round(rng.uniform(0.9, 1.12), 3),
    }
    patterns = UPPER_TYPES[d["upper_type"]][1]
    d["upper_pattern"] = _pick(rng, {p: PATTERN_WEIGHTS[p] for p in patterns})
    _fix_upper(d, rng)
    _fix_lower(d, rng)
    if rng.random() < P_BAG:
        d["bag"] = _pick(rng, _gendered(BAG_TYPES, gender))
        d["bag_colour"] = _colour(rng)
    if rng.random() < P_HEADWEAR:
        d["headwear"] = rng.choice(HEADWEAR_TYPES)
        d["headwear_colour"] = _colour(rng)
    return Identity(**d)


def is_valid(ident: Identity) -> bool:
    """Whether an identity obeys the vocabulary constraints (gendered items, dress/lower, ...)."""
    sleeves, patterns, genders, _ = UPPER_TYPES[ident.upper_type]
    if ident.gender not in genders or ident.sleeve not in sleeves or ident.upper_pattern not in patterns:
        return False
    if (ident.upper_pattern == "plain") != (ident.upper_pattern_colour is None):
        return False
    if ident.upper_pattern_colour == ident.upper_colour:
        return False
    if (ident.hair_length == "bald") != (ident.hair_colour is None):
        return False
    if ident.hair_length not in HAIR_LENGTHS[ident.gender]:
        return False
    if (ident.upper_type == "dress") != (ident.lower_type is None):
        return False
    if ident.lower_type is not None:
        genders_l, _, allowed = LOWER_TYPES[ident.lower_type]
        if ident.gender not in genders_l or (allowed is not None and ident.lower_colour not in allowed):
            return False
    if ident.gender not in SHOE_TYPES[ident.shoes_type][0]:
        return False
    if ident.bag is not None and ident.gender not in BAG_TYPES[ident.bag][0]:
        return False
    return (ident.bag is None) == (ident.bag_colour is None) and \
        (ident.headwear is None) == (ident.headwear_colour is None)


def attribute_diff(a: Identity, b: Identity) -> list[str]:
    """Slots in which two identities differ; a colour of an item absent in either is not counted."""
    out = []
    for slot in SLOTS:
        if slot == "upper_pattern":
            if (a.upper_pattern, a.upper_pattern_colour) != (b.upper_pattern, b.upper_pattern_colour):
                out.append(slot)
            continue
        owner = {"hair_colour": "hair_colour", "lower_colour": "lower_type", "bag_colour": "bag",
                 "headwear_colour": "headwear"}.get(slot)
        if owner and (getattr(a, owner) is None or getattr(b, owner) is None):
            continue
        if getattr(a, slot) != getattr(b, slot):
            out.append(slot)
    return out


def _mutate_slot(d: dict, slot: str, rng: random.Random) -> None:
    g = d["gender"]
    if slot == "gender":
        d["gender"] = "female" if g == "male" else "male"
        if d["hair_length"] not in HAIR_LENGTHS[d["gender"]]:
            d["hair_length"] = "short"
            d["hair_colour"] = d["hair_colour"] or _pick(rng, HAIR_COLOUR_WEIGHTS)
    elif slot == "hair_length":
        d["hair_length"] = _pick(rng, HAIR_LENGTHS[g], exclude=(d["hair_length"],))
        if d["hair_length"] == "bald":
            d["hair_colour"] = None
        elif d["hair_colour"] is None:
            d["hair_colour"] = _pick(rng, HAIR_COLOUR_WEIGHTS)
    elif slot == "hair_colour" and d["hair_colour"] is not None:
        d["hair_colour"] = _pick(rng, HAIR_COLOUR_WEIGHTS, exclude=(d["hair_colour"],))
    elif slot == "upper_type":
        d["upper_type"] = _pick(rng, _upper_weights(g), exclude=(d["upper_type"],))
    elif slot == "upper_colour":
        d["upper_colour"] = _colour(rng, exclude=(d["upper_colour"], d["upper_pattern_colour"]))
    elif slot == "upper_pattern":
        options = UPPER_TYPES[d["upper_type"]][1]
        d["upper_pattern"] = rng.choice(options)
        d["upper_pattern_colour"] = None
    elif slot == "sleeve":
        d["sleeve"] = rng.choice(UPPER_TYPES[d["upper_type"]][0])
    elif slot == "lower_type" and d["lower_type"] is not None:
        d["lower_type"] = _pick(rng, _lower_weights(g), exclude=(d["lower_type"],))
    elif slot == "lower_colour" and d["lower_type"] is not None:
        d["lower_colour"] = _colour(rng, exclude=(d["lower_colour"],), allowed=LOWER_TYPES[d["lower_type"]][2])
    elif slot == "shoes_type":
        d["shoes_type"] = _pick(rng, _gendered(SHOE_TYPES, g), exclude=(d["shoes_type"],))
    elif slot == "shoes_colour":
        d["shoes_colour"] = _colour(rng, exclude=(d["shoes_colour"],))
    elif slot == "bag":
        d["bag"] = None if d["bag"] and rng.random() < 0.4 else _pick(rng, _gendered(BAG_TYPES, g), (d["bag"],))
        d["bag_colour"] = None if d["bag"] is None else (d["bag_colour"] or _colour(rng))
    elif slot == "bag_colour" and d["bag"] is not None:
        d["bag_colour"] = _colour(rng, exclude=(d["bag_colour"],))
    elif slot == "headwear":
        options = [h for h in HEADWEAR_TYPES if h != d["headwear"]] + ([None] if d["headwear"] else [])
        d["headwear"] = rng.choice(options)
        d["headwear_colour"] = None if d["headwear"] is None else (d["headwear_colour"] or _colour(rng))
    elif slot == "headwear_colour" and d["headwear"] is not None:
        d["headwear_colour"] = _colour(rng, exclude=(d["headwear_colour"],))
    elif slot == "glasses":
        d["glasses"] = not d["glasses"]
    elif slot == "held":
        d["held"] = rng.choice([h for h in (*HELD_ITEMS, None) if h != d["held"]])


def derive_hard_negative(base: Identity, rng: random.Random, taken: set[tuple],
                         tries: int = 60) -> tuple[Identity, list[str]] | None:
    """An identity that differs from ``base`` in one or two slots and whose key is not in ``taken``."""
    slots = list(MUTATION_WEIGHTS)
    weights = list(MUTATION_WEIGHTS.values())
    for _ in range(tries):
        d = asdict(base)
        chosen: list[str] = []
        while len(chosen) < (1 if rng.random() < 0.6 else 2):
            s = rng.choices(slots, weights=weights)[0]
            if s not in chosen:
                chosen.append(s)
        for s in chosen:
            _mutate_slot(d, s, rng)
        _fix_upper(d, rng)
        _fix_lower(d, rng)
        d["skin"] = rng.randrange(len(SKIN_TONES)) if rng.random() < 0.5 else base.skin
        cand = Identity(**d)
        diff = attribute_diff(base, cand)
        if is_valid(cand) and 1 <= len(diff) <= 2 and cand.key() not in taken:
            return cand, diff
    return None


@dataclass(frozen=True)
class IdentityEntry:
    """An identity with its dataset id, split and (for hard negatives) where it came from."""

    pid: int
    split: str
    identity: Identity
    derived_from: int | None = None
    changed: tuple[str, ...] = ()


def sample_identities(split_counts: dict[str, int], hard_negative_fraction: float,
                      rng: random.Random) -> list[IdentityEntry]:
    """All identities, numbered 1..N split by split; hard negatives derive from the same split."""
    taken: set[tuple] = set()
    out: list[IdentityEntry] = []
    pid = 0
    for split, count in split_counts.items():
        in_split: list[IdentityEntry] = []
        for _ in range(count):
            pid += 1
            entry = None
            if in_split and rng.random() < hard_negative_fraction:
                base = rng.choice(in_split)
                derived = derive_hard_negative(base.identity, rng, taken)
                if derived is not None:
                    entry = IdentityEntry(pid, split, derived[0], base.pid, tuple(derived[1]))
            while entry is None:
                ident = sample_identity(rng)
                if ident.key() not in taken:
                    entry = IdentityEntry(pid, split, ident)
            taken.add(entry.identity.key())
            in_split.append(entry)
        out.extend(in_split)
    return out


__all__ = ["COLOURS", "HAIR_COLOURS", "SKIN_TONES", "Identity", "IdentityEntry", "attribute_diff",
           "derive_hard_negative", "is_valid", "sample_identities", "sample_identity"]
