"""Which attribute slots one rendered view shows; renderer and captioner both obey this."""
from __future__ import annotations

from ivt.synth.attributes import Identity

# "left"/"right": the person's left/right side faces the camera (they walk towards image left/right).
VIEWS = ("front", "back", "left", "right")


def visible_slots(ident: Identity, view: str, occluder: str | None) -> frozenset[str]:
    """Attribute slots an observer can see: a back view hides glasses and a phone held in front,
    a side view hides what is carried on the far side, a car in front hides the shoes.

    Bags hang on the person's left, held items are in the right hand.
    """
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}; expected one of {VIEWS}")
    vis = {"gender", "hair", "upper", "sleeve"}
    if ident.lower_type is not None:
        vis.add("lower")
    if occluder != "car":
        vis.add("shoes")
    if ident.headwear is not None:
        vis.add("headwear")
    if ident.glasses and view != "back":
        vis.add("glasses")
    if ident.bag is not None and (ident.bag == "backpack" or view != "right"):
        vis.add("bag")
    if ident.held is not None and view != "left" and not (ident.held == "phone" and view == "back"):
        vis.add("held")
    return frozenset(vis)
