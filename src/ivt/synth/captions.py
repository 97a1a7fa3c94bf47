"""CUHK-PEDES-style captions and attribute phrases, built only from what one image shows."""
from __future__ import annotations

import random
import re

from ivt.synth.attributes import Identity

MIN_WORDS, MAX_WORDS = 15, 35
_TOKEN = re.compile(r"[a-z0-9]+(?:['-][a-z0-9]+)*")

PERSON = {"male": ("man", "man", "male", "guy", "gentleman", "young man", "person", "pedestrian"),
          "female": ("woman", "woman", "female", "lady", "girl", "young woman", "person", "pedestrian")}
PRONOUN = {"male": ("he", "his"), "female": ("she", "her")}
WEAR = ("is wearing", "wears", "is dressed in", "has on")
WEARING = ("wearing", "dressed in", "in")
CARRY = ("is carrying", "carries", "has")
# Colour names as people use them: several names for one colour, and "dark" for black now and then.
COLOUR_WORDS = {"grey": ("grey", "gray"), "navy": ("navy", "dark blue", "navy blue"), "blonde": ("blonde", "blond"),
                "black": ("black",) * 5 + ("dark",), "beige": ("beige", "beige", "tan", "khaki"),
                "light blue": ("light blue", "light blue", "pale blue", "sky blue")}
UPPER_WORDS = {
    "t-shirt": ("t-shirt", "tee shirt", "tee"), "shirt": ("shirt", "button-up shirt", "button-down shirt"),
    "blouse": ("blouse", "top"), "tank top": ("tank top", "vest top", "singlet"),
    "sweater": ("sweater", "jumper", "pullover"), "hoodie": ("hoodie", "hooded sweatshirt", "hooded top"),
    "jacket": ("jacket", "zip-up jacket"), "coat": ("coat", "overcoat", "long coat"), "dress": ("dress",),
}
LOWER_WORDS = {
    "trousers": ("trousers", "pants", "slacks"), "jeans": ("jeans", "denim jeans", "denim pants"),
    "shorts": ("shorts", "short pants"), "skirt": ("skirt", "short skirt"),
    "long skirt": ("long skirt", "maxi skirt", "ankle-length skirt"),
}
PLURAL_LOWER = {"trousers", "jeans", "shorts"}
SHOE_WORDS = {"sneakers": ("sneakers", "trainers", "running shoes"), "boots": ("boots", "ankle boots"),
              "sandals": ("sandals", "open sandals"), "leather shoes": ("leather shoes", "dress shoes", "loafers"),
              "high heels": ("high heels", "heels", "high-heeled shoes")}
BAG_WORDS = {"backpack": ("backpack", "rucksack", "knapsack"), "handbag": ("handbag", "purse", "bag"),
             "shoulder bag": ("shoulder bag", "messenger bag", "crossbody bag"),
             "tote bag": ("tote bag", "tote", "large bag")}
HEADWEAR_WORDS = {"cap": ("cap", "baseball cap"), "hat": ("hat", "brimmed hat", "sun hat"),
                  "beanie": ("beanie", "knit hat", "wool hat")}
HELD_WORDS = {"phone": ("phone", "cell phone", "mobile phone"), "umbrella": ("umbrella", "closed umbrella"),
              "bottle": ("bottle", "water bottle", "bottle of water")}
GLASSES_WORDS = ("glasses", "eyeglasses", "spectacles")
HAIR_LENGTH_WORDS = {"short": ("short",), "medium": ("shoulder-length", "medium-length", "medium length"),
                     "long": ("long",)}
PATTERN_WORDS = {"striped": ("striped",), "checked": ("checked", "plaid", "checkered"),
                 "dotted": ("polka-dot", "spotted")}
PATTERN_NOUN = {"striped": "stripes", "checked": "checks", "dotted": "dots"}
FILLERS = ("{P} is walking down the street.", "{P} appears to be walking alone.", "{P} seems to be in a hurry.",
           "{P} is walking on the sidewalk.", "{P} looks like {p} is going somewhere.")
VIEW_FILLERS = {"front": ("{P} is walking towards the camera.", "{P} is facing the camera."),
                "back": ("{P} is walking away from the camera.", "{P} has {p2} back to the camera."),
                "left": ("{P} is walking to the left.",), "right": ("{P} is walking to the right.",)}


def tokenize(text: str) -> list[str]:
    """Lower-cased word tokens, as in CUHK-PEDES ``processed_tokens``."""
    return _TOKEN.findall(text.lower())


def _c(rng: random.Random, colour: str) -> str:
    return rng.choice(COLOUR_WORDS.get(colour, (colour,)))


def _a(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _hair(ident: Identity, rng: random.Random) -> str:
    if ident.hair_length == "bald":
        return rng.choice(("a bald head", "a shaved head", "no hair"))
    length = rng.choice(HAIR_LENGTH_WORDS[ident.hair_length])
    colour = _c(rng, ident.hair_colour or "black")
    return f"{colour} hair that is {length}" if rng.random() < 0.12 else f"{length} {colour} hair"


def _upper(ident: Identity, rng: random.Random) -> str:
    noun = rng.choice(UPPER_WORDS[ident.upper_type])
    colour = _c(rng, ident.upper_colour)
    pat = ident.upper_pattern
    suffix = ""
    if pat != "plain":
        c2 = _c(rng, ident.upper_pattern_colour or "white")
        if rng.random() < 0.5:
            phrase = f"{colour} and {c2} {rng.choice(PATTERN_WORDS[pat])} {noun}"
        else:
            phrase, suffix = f"{colour} {noun}", f" with {c2} {PATTERN_NOUN[pat]}"
    elif noun.startswith("long "):
        phrase = f"long {colour} {noun[5:]}"
    else:
        phrase = f"{colour} {noun}"
    variable = ident.upper_type in ("shirt", "blouse", "dress")
    if rng.random() < (0.8 if variable else 0.15):
        if ident.sleeve == "sleeveless":
            phrase = "sleeveless " + phrase
        elif not suffix and rng.random() < 0.5:
            suffix = f" with {ident.sleeve} sleeves"
        else:
            phrase = f"{ident.sleeve}-sleeved {phrase}"
    return _a(phrase) + suffix


def _lower(ident: Identity, rng: random.Random) -> str:
    noun = rng.choice(LOWER_WORDS[ident.lower_type or "trousers"])
    colour = _c(rng, ident.lower_colour or "black")
    if ident.lower_type in PLURAL_LOWER:
        return f"a pair of {colour} {noun}" if rng.random() < 0.25 else f"{colour} {noun}"
    if noun.startswith("long "):
        return _a(f"long {colour} {noun[5:]}")
    return _a(f"{colour} {noun}")


def _shoes(ident: Identity, rng: random.Random) -> str:
    phrase = f"{_c(rng, ident.shoes_colour)} {rng.choice(SHOE_WORDS[ident.shoes_type])}"
    return f"a pair of {phrase}" if rng.random() < 0.25 else phrase


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _accessory_clauses(ident: Identity, visible: frozenset[str], rng: random.Random, poss: str) -> list[str]:
    out = []
    if "bag" in visible and ident.bag:
        bag = _a(f"{_c(rng, ident.bag_colour or 'black')} {rng.choice(BAG_WORDS[ident.bag])}")
        where = {"backpack": f" on {poss} back", "shoulder bag": f" over {poss} shoulder",
                 "tote bag": f" over {poss} shoulder", "handbag": f" in {poss} hand"}[ident.bag]
        out.append(f"{rng.choice(CARRY)} {bag}" + (where if rng.random() < 0.4 else ""))
    if "headwear" in visible and ident.headwear and rng.random() < 0.9:
        hw = _a(f"{_c(rng, ident.headwear_colour or 'black')} {rng.choice(HEADWEAR_WORDS[ident.headwear])}")
        out.append(rng.choice((f"wears {hw}", f"has {hw} on {poss} head", f"is wearing {hw}")))
    if "glasses" in visible and rng.random() < 0.9:
        g = rng.choice(GLASSES_WORDS)
        out.append(rng.choice((f"wears {g}", f"has {g} on", f"is wearing a pair of {g}")))
    if "held" in visible and ident.held and rng.random() < 0.85:
        item = _a(rng.choice(HELD_WORDS[ident.held]))
        out.append(rng.choice((f"is holding {item}", f"holds {item} in {poss} right hand",
                               f"has {item} in {poss} hand")))
    rng.shuffle(out)
    return out


def _sentences(ident: Identity, visible: frozenset[str], view: str, rng: random.Random,
               style: int) -> list[tuple[str, bool]]:
    """(sentence, optional) pairs; optional ones may be dropped to respect the length limit."""
    noun = rng.choice(PERSON[ident.gender])
    he, his = PRONOUN[ident.gender]
    det = rng.choice(("A", "The", "This")) if style != 2 else "A"
    if det == "A" and noun[0] in "aeiou":
        det = "An"
    hair = _hair(ident, rng)
    clothes = [_upper(ident, rng)]
    if "lower" in visible:
        clothes.append(_lower(ident, rng))
    shoes = _shoes(ident, rng) if "shoes" in visible and rng.random() < 0.85 else None
    shoes_apart = shoes is not None and rng.random() < 0.35
    if shoes is not None and not shoes_apart:
        clothes.append(shoes)
    if rng.random() < 0.2:
        rng.shuffle(clothes)
    out: list[tuple[str, bool]] = []
    if style == 0:
        out.append((f"{det} {noun} with {hair} {rng.choice(WEAR)} {_join(clothes)}.", False))
    elif style == 1:
        out.append((f"{det} {noun} {rng.choice(WEAR)} {_join(clothes)}.", False))
        out.append((f"{he} has {hair}.", False))
    elif style == 2:
        out.append((f"{det} {noun} {rng.choice(WEARING)} {_join(clothes)} is walking.", False))
        out.append((f"{he} has {hair}.", False))
    else:
        out.append((f"{det} {noun} has {hair}.", False))
        out.append((f"{he} {rng.choice(WEAR)} {_join(clothes)}.", False))
    if shoes_apart:
        out.append((rng.choice((f"{his} shoes are {shoes}.", f"{he} has {shoes} on {his} feet.",
                                f"{he} is also wearing {shoes}.")).replace("shoes are a pair of", "shoes are"), True))
    clauses = _accessory_clauses(ident, visible, rng, his)
    while clauses:
        take, clauses = clauses[:2], clauses[2:]
        also = " also" if out and rng.random() < 0.3 and not take[0].startswith(("is ", "has ", "holds")) else ""
        out.append((f"{he}{also} {_join(take)}.", True))
    return out


def _finish(sentences: list[str]) -> str:
    return " ".join(s[0].upper() + s[1:] for s in sentences)


def caption(ident: Identity, visible: frozenset[str], view: str, rng: random.Random, style: int | None = None) -> str:
    """One caption of 15-35 words mentioning only ``visible`` attributes."""
    he, his = PRONOUN[ident.gender]
    for attempt in range(30):
        st = rng.randrange(4) if style is None or attempt >= 10 else style
        parts = _sentences(ident, visible, view, rng, st)
        while len(tokenize(" ".join(s for s, _ in parts))) > MAX_WORDS:
            drop = max((i for i, (_, opt) in enumerate(parts) if opt), default=None)
            if drop is None:
                break
            parts.pop(drop)
        text = [s for s, _ in parts]
        fillers = list(FILLERS + VIEW_FILLERS[view])
        rng.shuffle(fillers)
        while len(tokenize(" ".join(text))) < MIN_WORDS and fillers:
            text.append(fillers.pop().format(P=he, p=he, p2=his))
        if MIN_WORDS <= len(tokenize(" ".join(text))) <= MAX_WORDS:
            return _finish(text)
    noun = PERSON[ident.gender][0]
    return _finish([f"the {noun} is wearing {_a(ident.upper_colour + ' ' + ident.upper_type)}.",
                    f"{he} has {_hair(ident, rng)}.", VIEW_FILLERS[view][0].format(P=he, p2=his),
                    FILLERS[0].format(P=he)])


def captions(ident: Identity, visible: frozenset[str], view: str, rng: random.Random, n: int = 2) -> list[str]:
    """``n`` different captions for one image, each in a different template style when possible."""
    styles = rng.sample(range(4), min(n, 4))
    out: list[str] = []
    for k in range(n):
        for _ in range(20):
            text = caption(ident, visible, view, rng, styles[k % len(styles)])
            if text not in out and MIN_WORDS <= len(tokenize(text)) <= MAX_WORDS:
                break
        out.append(text)
    return out


def attribute_phrases(ident: Identity, visible: frozenset[str]) -> list[str]:
    """Short canonical phrases ("red backpack", "long black hair") of the visible attributes."""
    out = ["bald head" if ident.hair_length == "bald" else f"{ident.hair_length} {ident.hair_colour} hair"]
    pattern = "" if ident.upper_pattern == "plain" else {"dotted": "polka-dot "}.get(
        ident.upper_pattern, ident.upper_pattern + " ")
    out.append(f"{ident.upper_colour} {pattern}{ident.upper_type}")
    if "lower" in visible:
        out.append(f"{ident.lower_colour} {ident.lower_type}")
    if "shoes" in visible:
        out.append(f"{ident.shoes_colour} {ident.shoes_type}")
    if "bag" in visible:
        out.append(f"{ident.bag_colour} {ident.bag}")
    if "headwear" in visible:
        out.append(f"{ident.headwear_colour} {ident.headwear}")
    if "glasses" in visible:
        out.append("glasses")
    if "held" in visible:
        out.append(str(ident.held))
    return out
