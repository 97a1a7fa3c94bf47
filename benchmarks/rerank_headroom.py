"""What re-ranking could gain, and what the models cannot yet see (issue: re-ranking with IVT's own
encoder). Four measurements on the test splits of fresh SynthPedes draws (never used to choose):

1. **Ceiling.** An oracle that reads from each caption every attribute its image shows, and knows
   every gallery identity's attributes, still cannot tell apart identities that agree on all of
   them: its R1 is the mean of 1 / (identities that agree). Told also which items the person has
   (a caption's silence about a bag hints there is none), it tells more apart; what a ranker can
   reach from the caption lies about between the two.
2. **Reach.** The share of text queries whose person is in the cosine's top K: what a perfect
   re-ranker of the top K reaches.
3. **One-word edits.** For each caption, the same caption with one attribute word replaced
   (``ivt.text.edits``, a fixed seed): the share whose own image scores the caption higher than
   the edit, by cosine and (a model with a matching head) by the ITM head; per kind of word.
   50 % is blind to that word.
4. **Failures.** For each query whose top-1 image is another person: in which slots the two
   identities differ among those the query's image shows (none: the oracle could not tell them
   apart either).

    python benchmarks/rerank_headroom.py --runs RUN [RUN ...] [--write]
    python benchmarks/rerank_headroom.py --write          # render the kept rows

Rows are kept in ``benchmarks/rerank_headroom_rows.json`` (runs/ is scratch).
"""
from __future__ import annotations

import argparse
import collections
import json
import re
import statistics
from pathlib import Path

import torch

from results_md import keep_rows, load_rows, write_section

ROWS = Path(__file__).with_name("rerank_headroom_rows.json")
REACH = (8, 16, 32)
RERANK_K = 8                                    # a matching head's R1 with its top 8 re-ranked
# The slots an image shows (ivt.synth.visibility) and the identity fields each one carries.
SLOT_FIELDS = {"gender": ("gender",), "hair": ("hair_length", "hair_colour"),
               "upper": ("upper_type", "upper_colour", "upper_pattern", "upper_pattern_colour"),
               "sleeve": ("sleeve",), "lower": ("lower_type", "lower_colour"), "shoes": ("shoes_type", "shoes_colour"),
               "bag": ("bag", "bag_colour"), "headwear": ("headwear", "headwear_colour"), "glasses": ("glasses",),
               "held": ("held",)}
# Kinds of edited word: a colour is named by the word after it (a shoe, bag or headwear word of
# ivt.text.edits, or one of these: the plain nouns, and words that start such a phrase, as "running
# shoes"); "shoes", "bag" and "headwear" count both their colour and their type.
_MODIFIER_KIND = {"shoes": "shoes", "bag": "bag", "running": "shoes", "shoulder": "bag", "messenger": "bag",
                  "crossbody": "bag", "baseball": "headwear", "knit": "headwear", "wool": "headwear",
                  "sun": "headwear", "brimmed": "headwear"}
ITEMS = ("bag", "headwear", "held", "glasses")
KINDS = ("hair colour", "garment colour", "shoes", "bag", "headwear", "garment type", "length")


def _slot_key(attributes: dict, slots: set[str]) -> tuple:
    return tuple(attributes[f] for s in sorted(slots) for f in SLOT_FIELDS[s])


def _truth(draw: Path) -> tuple[dict, dict[str, set[str]]]:
    """The generator's record of a draw: every identity's attributes, and the slots each image shows."""
    identities = json.loads((draw / "attributes.json").read_text())
    return identities, {im["file_path"]: set(im["visible"]) for v in identities.values() for im in v["images"]}


def ceiling(draw: Path) -> dict:
    """The oracle's R1 on the draw's test split (see the module docstring) and its query count:
    ``R1`` knows the attributes the query's image shows; ``R1_items`` also which items (bag,
    headwear, held item, glasses) the person has, shown or not (a caption's silence about a bag
    says a little: between the two lies what a text can tell)."""
    from ivt.data import load_dataset

    identities, visible = _truth(draw)
    records = load_dataset(draw).split("test")
    pids = {r.pid for r in records}
    shares, shares_items = [], []
    for r in records:
        shown = {p: _slot_key(identities[str(p)]["attributes"], visible[r.image]) for p in pids}
        items = {p: (shown[p], tuple(bool(identities[str(p)]["attributes"][f]) for f in ITEMS)) for p in pids}
        shares += [1 / sum(shown[p] == shown[r.pid] for p in pids)] * len(r.captions)
        shares_items += [1 / sum(items[p] == items[r.pid] for p in pids)] * len(r.captions)
    return {"R1": 100 * statistics.mean(shares), "R1_items": 100 * statistics.mean(shares_items),
            "queries": len(shares)}


def _kind(caption: str, edited: str) -> str:
    """The kind of the one word an edit replaced (:data:`KINDS`)."""
    from ivt.text.edits import GROUPS, attribute_words, word_class

    match = next(m for m, e in zip(attribute_words(caption), attribute_words(edited)) if m.group(1) != e.group(1))
    group = word_class(caption, match)[0]
    if group == "colour":
        after = re.match(r"[\s-]*([\w-]+)", caption[match.end():])
        word = after.group(1).lower() if after else ""
        return _MODIFIER_KIND.get(word) or next(
            (g for g in ("shoes", "bag", "headwear") if any(word in c for c in GROUPS[g])), "garment colour")
    return {"hair": "hair colour", "length": "length", "shoes": "shoes", "bag": "bag",
            "headwear": "headwear"}.get(group, "garment type")


def probe(model, draw: Path, seed: int = 0) -> dict:
    """Reach, one-word edits and failures of one model on one draw's test split."""
    from ivt.data import load_dataset
    from ivt.evaluate.metrics import ranking_metrics
    from ivt.evaluate.retrieval import embed_split, split_images
    from ivt.text.edits import contradict

    dataset = load_dataset(draw)
    records = dataset.split("test")
    images = split_images(model, dataset, records)
    emb = embed_split(model, dataset, records, images=images)
    sim = emb.text @ emb.image.T
    out = {"R1": ranking_metrics(sim, emb.text_pids, emb.image_pids)["R1"]}
    order = sim.argsort(dim=1, descending=True)
    hit = emb.image_pids[order] == emb.text_pids[:, None]
    out["reach"] = {str(k): 100 * hit[:, :k].any(1).float().mean().item() for k in REACH}
    if model.can_rerank:
        from ivt.evaluate.rerank import rerank_scores

        _, states = model.encode_images_with_states(images)
        ranked = rerank_scores(model, sim, emb.captions, states, RERANK_K)
        out["R1_reranked"] = ranking_metrics(ranked, emb.text_pids, emb.image_pids)["R1"]

    generator = torch.Generator().manual_seed(seed)
    edited = [contradict(c, generator) for c in emb.captions]
    rows = [i for i, e in enumerate(edited) if e is not None]
    own = emb.text_image[rows]
    edit_emb = model.encode_texts([edited[i] for i in rows])
    wins = {"cosine": ((emb.text[rows] * emb.image[own]).sum(1) > (edit_emb * emb.image[own]).sum(1)).tolist()}
    if model.can_rerank:
        _, cap_states, cap_mask = model.encode_texts_with_states([emb.captions[i] for i in rows])
        _, edit_states, edit_mask = model.encode_texts_with_states([edited[i] for i in rows])
        wins["itm"] = (model.match_scores(states[own], cap_states, cap_mask) >
                       model.match_scores(states[own], edit_states, edit_mask)).tolist()
    kinds = [_kind(emb.captions[i], edited[i]) for i in rows]
    out["edits"] = {how: {"all": [sum(w), len(w)],
                          **{k: [sum(x for x, kk in zip(w, kinds) if kk == k), kinds.count(k)] for k in KINDS}}
                    for how, w in wins.items()}

    identities, visible = _truth(draw)
    slots, counts = collections.Counter(), collections.Counter()
    for q in range(len(emb.captions)):
        p, g = int(emb.text_pids[q]), int(emb.image_pids[order[q, 0]])
        if p == g:
            continue
        shown = visible[records[int(emb.text_image[q])].image]
        a, b = identities[str(p)]["attributes"], identities[str(g)]["attributes"]
        differ = [s for s in shown if any(a[f] != b[f] for f in SLOT_FIELDS[s])]
        counts[min(len(differ), 2)] += 1
        slots.update(differ)
    out["failures"] = {"queries": len(emb.captions), "by_slots": {str(k): v for k, v in counts.items()},
                       "slots": dict(slots)}
    return out


def run_row(run: Path, draws: list[Path], ceilings: dict[str, dict], note: str) -> dict:
    """The row of one trained run: every draw's probe (with the draw's ``ceilings``), and what the
    run was."""
    from ivt.inference import load
    from ivt.runtime import cpu_info

    last = json.loads((run / "last.json").read_text())
    model = load(run, device="cpu", precision=last.get("precision") or "auto")
    state = json.loads((run / "last.state.json").read_text())
    return {"run": run.name, "note": note, "steps": last["step"], "train_min": round(state["train_seconds"] / 60, 1),
            "precision": last.get("precision"), "machine": cpu_info().describe(), "itm": model.can_rerank,
            "draws": {d.name: {"ceiling": ceilings[d.name], **probe(model, d)} for d in draws}}


def _pct(pairs: list[list[int]]) -> str:
    won, n = (sum(p[0] for p in pairs), sum(p[1] for p in pairs))
    return f"{100 * won / n:.0f} ({n})" if n else "—"


def render(rows: list[dict]) -> str:
    """Tables of the kept rows: ceiling and reach, one-word edits by kind, failures by slot."""
    if not rows:
        return "No rows kept yet."
    draws = sorted({d for r in rows for d in r["draws"]})
    first = rows[0]["draws"]
    ceil = statistics.mean(first[d]["ceiling"]["R1"] for d in draws if d in first)
    ceil_items = statistics.mean(first[d]["ceiling"]["R1_items"] for d in draws if d in first)
    lines = [f"`benchmarks/rerank_headroom.py`: test splits of fresh draws {', '.join(draws)} (never used to choose), "
             f"means over the draws. The oracle's ceiling (every attribute the query's image shows, read from its "
             f"caption) is **{ceil:.1f}** R1 (per draw "
             + ", ".join(f"{first[d]['ceiling']['R1']:.1f}" for d in draws if d in first)
             + f"), and **{ceil_items:.1f}** when it also knows which items (bag, headwear, held item, glasses) the "
             "person has; what a caption can tell lies between the two. "
             "Reach: the share of queries whose person is in the cosine's top K (a perfect re-ranker of the top K "
             "reaches it). One-word edits: % of captions whose own image scores the caption above the caption "
             "with one attribute word replaced (50 % = blind to that word; in brackets the number of edits).", "",
             "| run | what | steps (min) | R1 | R1, top 8 re-ranked by ITM | reach top " + " / ".join(map(str, REACH)) +
             " | unresolvable / one slot / more, of the failures | slots of the failures, most first |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        d = list(r["draws"].values())
        fails = collections.Counter()
        slots = collections.Counter()
        for x in d:
            fails.update(x["failures"]["by_slots"])
            slots.update(x["failures"]["slots"])
        total = sum(fails.values())
        lines.append(f"| {r['run']} | {r['note']} | {r['steps']:,} ({r['train_min']}) | "
                     f"{statistics.mean(x['R1'] for x in d):.2f} | "
                     + (f"{statistics.mean(x['R1_reranked'] for x in d):.2f} | " if r["itm"] else "— | ")
                     + " / ".join(f"{statistics.mean(x['reach'][str(k)] for x in d):.1f}" for k in REACH) + " | "
                     + " / ".join(f"{100 * fails.get(k, 0) / max(total, 1):.0f} %" for k in ("0", "1", "2")) + " | "
                     + ", ".join(f"{s} {n}" for s, n in slots.most_common(6)) + " |")
    lines += ["", "| run | scorer | all | " + " | ".join(KINDS) + " |", "|" + " --- |" * (3 + len(KINDS))]
    for r in rows:
        for how in ("cosine", "itm"):
            per = [x["edits"][how] for x in r["draws"].values() if how in x["edits"]]
            if per:
                lines.append(f"| {r['run']} | {how} | {_pct([p['all'] for p in per])} | "
                             + " | ".join(_pct([p[k] for p in per]) for k in KINDS) + " |")
    lines += ["", f"Machine: {rows[0]['machine']}; models in the precision they were trained in."]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=Path, nargs="*", default=[])
    ap.add_argument("--notes", nargs="*", default=[], help="one short description per run")
    ap.add_argument("--fresh", type=int, nargs="+", default=[7001, 7002, 7003, 7004, 7005])
    ap.add_argument("--ids", type=int, default=400)
    ap.add_argument("--write", action="store_true", help="regenerate the section in benchmarks/RESULTS.md")
    args = ap.parse_args()
    from learning import ensure_draw

    draws = [ensure_draw(Path("data/fresh") / f"seed{s}-{args.ids}", args.ids, s) for s in args.fresh]
    ceilings = {d.name: ceiling(d) for d in draws} if args.runs else {}
    rows = []
    for i, run in enumerate(args.runs):
        rows.append(run_row(run, draws, ceilings, args.notes[i] if i < len(args.notes) else ""))
        print(json.dumps(rows[-1])[:300], flush=True)
    if rows:
        keep_rows(ROWS, rows, lambda r: (r["run"], r["machine"]))
    text = render(load_rows(ROWS))
    print(text)
    if args.write:
        write_section("rerank-headroom", text, "What re-ranking could gain, and what the models cannot yet see")


if __name__ == "__main__":
    main()
