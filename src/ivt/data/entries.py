"""Validate the fields of one annotation entry, reporting every bad field to a Problems list."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ivt.data.problems import Problems, describe
from ivt.data.records import SPLITS


@dataclass(frozen=True)
class Spec:
    """How one format lays out its entries."""

    container: str  # "list" (entries carry a split), "splits" (dict keyed by split) or "lines"
    image_key: str
    per_caption: bool
    splits: tuple[str, ...] = SPLITS
    ignored_splits: tuple[str, ...] = ()
    attr_key: str = "att"


@dataclass
class Entry:
    """One parsed annotation entry (an image, or one caption of an image)."""

    where: str
    split: str
    image: str
    pid: int
    captions: list[str]
    attributes: list[str] = field(default_factory=list)
    caption_attributes: list[tuple[str, ...]] = field(default_factory=list)  # per caption (per-caption formats)


def json_kind(value: Any) -> str:
    """How a JSON value is named in messages: "an object", "an array" or its description."""
    return {dict: "an object", list: "an array"}.get(type(value), describe(value))


def parse_entry(obj: Any, spec: Spec, where: str, split: str | None,
                problems: Problems) -> Entry | None:
    """Validate one entry's fields; report each bad field and return None if any is bad."""
    if not isinstance(obj, dict):
        problems.add(where, f"expected a JSON object, got {json_kind(obj)}")
        return None
    before = len(problems)
    image = obj.get(spec.image_key)
    if isinstance(image, str) and image.strip():
        where = f"{where} ({image})"
    image = _field_image(obj, spec.image_key, where, problems)
    pid = _field_id(obj, where, problems)
    if split is None:
        split = _field_split(obj, spec.splits, where, problems)
    captions = _field_captions(obj, spec, where, problems)
    attributes = _field_attributes(obj, spec.attr_key, where, problems)
    if len(problems) > before or image is None or pid is None or split is None or captions is None:
        return None
    own = [tuple(attributes)] if spec.per_caption else []
    return Entry(where, split, image, pid, captions, attributes, own)


def _missing(key: str) -> str:
    """The message for an absent required field."""
    return f"missing field {key!r}"


def _field_image(obj: dict, key: str, where: str, problems: Problems) -> str | None:
    """The image path: a non-empty string (relative to the image root)."""
    if key not in obj:
        problems.add(where, _missing(key))
        return None
    value = obj[key]
    if not isinstance(value, str) or not value.strip():
        problems.add(where, f"field {key!r}: expected a non-empty path string, "
                            f"got {describe(value)}")
        return None
    return value  # where it leads is judged against the image root (readers._check_inside_root)


def _field_id(obj: dict, where: str, problems: Problems) -> int | None:
    """The person id: a JSON integer (not a boolean, not a string) >= 0."""
    if "id" not in obj:
        problems.add(where, _missing("id"))
        return None
    value = obj["id"]
    if not isinstance(value, int) or isinstance(value, bool):
        problems.add(where, f"field 'id': expected an integer, got {describe(value)}")
        return None
    if value < 0:
        problems.add(where, f"field 'id': must be >= 0, got {value}")
        return None
    return value


def _field_split(obj: dict, allowed: tuple[str, ...], where: str, problems: Problems) -> str | None:
    """The split name, one of ``allowed``."""
    if "split" not in obj:
        problems.add(where, _missing("split"))
        return None
    value = obj["split"]
    if value not in allowed:
        shown = repr(value) if isinstance(value, str) else describe(value)
        problems.add(where, f"field 'split': unknown split {shown} (allowed: {', '.join(allowed)})")
        return None
    return value


def _caption(value: Any, label: str, where: str, problems: Problems) -> str | None:
    """One caption: a string that is not blank, returned stripped."""
    if not isinstance(value, str):
        problems.add(where, f"{label}: expected a string, got {describe(value)}")
        return None
    if not value.strip():
        problems.add(where, f"{label}: empty caption ({describe(value)})")
        return None
    return value.strip()


def _field_captions(obj: dict, spec: Spec, where: str, problems: Problems) -> list[str] | None:
    """The entry's captions: a string in per-caption formats, else a non-empty list of strings
    (JSONL also takes a single ``caption`` string)."""
    if spec.per_caption:
        if "captions" not in obj:
            problems.add(where, _missing("captions"))
            return None
        value = obj["captions"]
        if not isinstance(value, str):
            problems.add(where, f"field 'captions': expected one caption string (this format has "
                                f"one entry per caption), got {describe(value)}")
            return None
        caption = _caption(value, "field 'captions'", where, problems)
        return None if caption is None else [caption]
    if spec.container == "lines" and "caption" in obj:
        if "captions" in obj:
            problems.add(where, "give either 'captions' (a list) or 'caption' (a string), not both")
            return None
        caption = _caption(obj["caption"], "field 'caption'", where, problems)
        return None if caption is None else [caption]
    if "captions" not in obj:
        either = " (or 'caption')" if spec.container == "lines" else ""
        problems.add(where, _missing("captions") + either)
        return None
    value = obj["captions"]
    if not isinstance(value, list):
        problems.add(where, f"field 'captions': expected an array of strings, "
                            f"got {describe(value)}")
        return None
    if not value:
        problems.add(where, "field 'captions': empty list, at least one caption is needed")
        return None
    captions = [_caption(c, f"field 'captions'[{i}]", where, problems) for i, c in enumerate(value)]
    return None if any(c is None for c in captions) else [c for c in captions if c is not None]


def _field_attributes(obj: dict, key: str, where: str, problems: Problems) -> list[str]:
    """Attribute phrases from a list or a dict's values; blank phrases are dropped."""
    value = obj.get(key)
    if value is None:
        return []
    if isinstance(value, dict):
        items = [(f"field {key!r}[{k!r}]", v) for k, v in value.items()]
    elif isinstance(value, list):
        items = [(f"field {key!r}[{i}]", v) for i, v in enumerate(value)]
    else:
        problems.add(where, f"field {key!r}: expected an array or object of attribute phrases, "
                            f"got {describe(value)}")
        return []
    phrases: list[str] = []
    for label, phrase in items:
        if not isinstance(phrase, str):
            problems.add(where, f"{label}: expected a string, got {describe(phrase)}")
        elif phrase.strip() and phrase.strip() not in phrases:
            phrases.append(phrase.strip())
    return phrases
