"""The bad-input suite: every case ends in one clear message naming the file/field/value and exit
status 2 on the CLI (or a typed ivt error from the Python API) — never a traceback — and leaves
every file the user had byte-for-byte unchanged (hashed before and after)."""
from __future__ import annotations

import hashlib
import io
import json
import shutil
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import write_toy_pedes
from ivt.cli import main
from ivt.errors import IvtError

TRAIN = ["model.size=tiny", "model.image_size=[32, 16]", "train.batch_size=8", "train.precision=fp32",
         "train.threads=2", "data.vocab_size=200", "data.max_text_len=24", "train.epochs=1"]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> dict[str, Path]:
    """A toy dataset and a trained run of it, copied by each case before it is spoiled."""
    root = tmp_path_factory.mktemp("base")
    data = write_toy_pedes(root / "toy")
    run = root / "run"
    assert main(["train", "--set", *TRAIN, f"data.path={data}", "--out", str(run)]) == 0
    other = root / "other"  # a run of another size, for "checkpoint of another size"
    assert main(["train", "--set", *TRAIN, "model.width=64", "model.num_heads=2", f"data.path={data}",
                 "--out", str(other)]) == 0
    return {"data": data, "run": run, "other": other}


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@dataclass
class Case:
    name: str
    prepare: Callable[[dict[str, Path]], list[str]]  # spoils the copies, returns argv
    expect: str                                       # a substring of the one-message error
    code: int = 2


def _entries(w):
    return json.loads((w["data"] / "reid_raw.json").read_text())


def _write_entries(w, entries):
    (w["data"] / "reid_raw.json").write_text(json.dumps(entries))


def _spoil_entry(field, value, index=0):
    def prepare(w):
        entries = _entries(w)
        entries[index][field] = value
        _write_entries(w, entries)
        return ["data", "check", str(w["data"])]
    return prepare


def _spoil_image(writer, command="data"):
    def prepare(w):
        victim = w["data"] / "imgs" / _entries(w)[0]["file_path"]
        writer(victim)
        if command == "data":
            return ["data", "check", str(w["data"])]
        if command == "train":
            return ["train", "--set", *TRAIN, f"data.path={w['data']}", "--out", str(w["tmp"] / "new")]
        return ["evaluate", "--checkpoint", str(w["run"]), "--data", str(w["data"]), "--split", "train"]
    return prepare


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def _train(*sets: str):
    return lambda w: ["train", "--set", *TRAIN, f"data.path={w['data']}", *sets, "--out", str(w["tmp"] / "new")]


def _eval(*extra: str):
    return lambda w: ["evaluate", "--checkpoint", str(w["run"]), "--data", str(w["data"]), *extra]


def _file(name: str, content: bytes | str, then: Callable[[dict[str, Path], Path], list[str]]):
    def prepare(w):
        p = w["tmp"] / name
        p.write_bytes(content if isinstance(content, bytes) else content.encode())
        return then(w, p)
    return prepare


def _png_bytes(format: str = "PNG") -> bytes:
    """A small image file's bytes."""
    buf = io.BytesIO()
    Image.new("RGB", (8, 16), (200, 30, 30)).save(buf, format)
    return buf.getvalue()


def _huge_png(path: Path) -> None:
    """A PNG whose header declares 20,000 x 20,000 pixels (a decompression bomb), a few bytes long."""
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4:ihdr + 12] = (20000).to_bytes(4, "big") * 2
    data[ihdr + 17:ihdr + 21] = zlib.crc32(bytes(data[ihdr:ihdr + 17])).to_bytes(4, "big")
    path.write_bytes(bytes(data))


def _swap_weights(w):
    """A checkpoint of another size in place of the run's (its metadata updated to match)."""
    run, other = w["run"], w["other"]
    shutil.copy(other / "best.safetensors", run / "best.safetensors")
    meta = json.loads((run / "best.json").read_text())
    meta["weights_sha256"] = json.loads((other / "best.json").read_text())["weights_sha256"]
    (run / "best.json").write_text(json.dumps(meta))
    return ["evaluate", "--checkpoint", str(run), "--data", str(w["data"])]


def _remove_best(w):
    for name in ("best.safetensors", "best.json"):
        (w["run"] / name).unlink()
    return ["evaluate", "--checkpoint", str(w["run"]), "--data", str(w["data"]), "--which", "best"]


def _tamper_weights(w):
    p = w["run"] / "best.safetensors"
    data = bytearray(p.read_bytes())
    data[-1] ^= 0xFF
    p.write_bytes(bytes(data))
    return _eval()(w)


CASES = [
    # --- annotation files (data check) ---
    Case("truncated-json", lambda w: (_truncate(w["data"] / "reid_raw.json"), ["data", "check", str(w["data"])])[1],
         "malformed JSON"),
    Case("top-level-object", lambda w: ((w["data"] / "reid_raw.json").write_text('{"a": 1}'),
                                        ["data", "check", str(w["data"])])[1], "reid_raw.json"),
    Case("id-is-a-word", _spoil_entry("id", "abc"), "id"),
    Case("id-is-a-float", _spoil_entry("id", 1.5), "id"),
    Case("captions-not-a-list", _spoil_entry("captions", 7), "captions"),
    Case("empty-caption", _spoil_entry("captions", [""]), "captions"),
    Case("whitespace-caption", _spoil_entry("captions", ["   \t "]), "captions"),
    Case("split-unknown", _spoil_entry("split", "training"), "split"),
    Case("file-path-absolute", _spoil_entry("file_path", "/etc/passwd"), "file_path"),
    Case("file-path-escapes-root", _spoil_entry("file_path", "../../secret.jpg"), "secret.jpg"),
    Case("duplicate-image-conflicting-ids", lambda w: (_write_entries(w, _entries(w) + [
        {**_entries(w)[0], "id": 999}]), ["data", "check", str(w["data"])])[1], "999"),
    Case("missing-annotation", lambda w: ["data", "check", str(w["tmp"] / "nowhere")], "nowhere"),
    Case("unknown-format", lambda w: ["data", "check", str(w["data"]), "--format", "coco"], "coco"),
    Case("annotation-is-an-image", _file("one.png", _png_bytes(), lambda w, p: ["data", "check", str(p)]),
         "one.png: this is an image file (PNG), not an annotation file; give the dataset's annotation file or "
         "its directory"),
    Case("images-option-given-an-image", _file("one.jpg", _png_bytes("JPEG"), lambda w, p: [
        "index", "build", "--checkpoint", str(w["run"]), "--images", str(p), "--out", str(w["tmp"] / "idx")]),
         "one.jpg: this is an image file (JPEG), but --images takes a folder of images (searched recursively) or "
         "a dataset annotation file (JSON or JSONL) listing them; to index this image, put it in a folder and give "
         "the folder"),
    Case("images-option-of-add-given-an-image", _file("one.gif", _png_bytes("GIF"), lambda w, p: [
        "index", "add", "--index", str(w["tmp"] / "idx"), "--images", str(p)]),
         "one.gif: this is an image file (GIF), but --images takes a folder"),
    Case("jsonl-bad-line", _file("d.jsonl", '{"image": "a.jpg", "id": 1, "split": "train", "caption": "x"}\n{oops\n',
                                 lambda w, p: ["data", "check", str(p)]), "line 2"),
    # --- images ---
    Case("missing-image", _spoil_image(lambda p: p.unlink()), "missing file"),
    Case("zero-byte-image", _spoil_image(lambda p: p.write_bytes(b"")), "cannot decode"),
    Case("truncated-image", _spoil_image(_truncate), "cannot decode"),
    Case("text-file-as-image", _spoil_image(lambda p: p.write_text("hello")), "cannot decode"),
    Case("huge-image", _spoil_image(_huge_png), "decompression bomb"),
    Case("missing-image-in-train", _spoil_image(lambda p: p.unlink(), "train"), "annotation entry"),
    Case("truncated-image-in-train", _spoil_image(_truncate, "train"), "annotation entry"),
    Case("missing-image-in-evaluate", _spoil_image(lambda p: p.unlink(), "evaluate"), "annotation entry"),
    # --- configuration ---
    Case("unknown-config-key", _train("train.epoch=3"), "unknown config key 'train.epoch'"),
    Case("wrongly-typed-config", _train("train.epochs=three"), "train.epochs: expected an integer"),
    Case("bad-enum-optimizer", _train("optim.name=adam"), "optim.name: 'adam' is not one of adamw, sgd"),
    Case("bad-enum-loss", _train("loss.name=triplet"), "loss.name"),
    Case("negative-lr", _train("optim.lr=-1"), "optim.lr"),
    Case("batch-not-multiple-of-k", _train("train.sampler=identity", "train.k_per_id=3"), "k_per_id"),
    Case("all-levels-off", _train("align.word=false", "align.phrase=false", "align.sentence=false"), "align"),
    Case("override-without-equals", _train("train.epochs"), "key=value"),
    Case("config-not-yaml", _file("c.yaml", "train: [1, 2\n", lambda w, p: ["train", "--config", str(p)]),
         "not valid YAML"),
    Case("config-top-level-list", _file("c.yaml", "- 1\n- 2\n", lambda w, p: ["train", "--config", str(p)]),
         "mapping"),
    Case("config-file-missing", lambda w: ["train", "--config", str(w["tmp"] / "none.yaml")], "not found"),
    Case("tokenizer-not-a-tokenizer", _file("vocab.json", "{}", lambda w, p: _train(f"data.tokenizer={p}")(w)),
         "tokenizer"),
    Case("tokenizer-does-not-fit-checkpoint",
         lambda w: _train("model.init=" + str(Path(__file__).parent / "fixtures" / "official_checkpoint_tiny.pth"),
                          "model.width=64", "model.depth=2", "model.num_heads=4", "model.image_size=[64, 32]")(w),
         "vocabulary of 120"),
    Case("init-contradicts-size",
         lambda w: _train("model.init=" + str(Path(__file__).parent / "fixtures" / "official_checkpoint_tiny.pth"))(w),
         "does not fit the configured model size"),
    Case("bad-device", _train("train.device=gpu"), "train.device"),
    Case("cuda-without-cuda", lambda w: ["train", "--set", *TRAIN, f"data.path={w['data']}", "--device", "cuda:0",
                                         "--out", str(w["tmp"] / "new")], "CUDA"),
    # --- run directories and checkpoints ---
    Case("out-dir-holds-a-run", lambda w: ["train", "--set", *TRAIN, f"data.path={w['data']}", "--out",
                                           str(w["run"])], "already holds a training run"),
    Case("resume-not-a-run", lambda w: ["train", "--resume", str(w["data"])], "config.yaml"),
    Case("evaluate-not-a-run", lambda w: ["evaluate", "--checkpoint", str(w["data"]), "--data", str(w["data"])],
         "not an ivt run directory"),
    Case("evaluate-best-missing", _remove_best, "no best checkpoint"),
    Case("evaluate-tampered-weights", _tamper_weights, "does not match"),
    Case("evaluate-checkpoint-of-another-size", _swap_weights, "shape mismatches"),
    Case("evaluate-unknown-split", _eval("--split", "query"), "no 'query' split"),
    # --- SynthPedes generation ---
    Case("synth-too-few-ids", lambda w: ["synth", "--out", str(w["tmp"] / "new"), "--ids", "-1", "--quiet"],
         "num_ids must be an integer >= 3"),
    Case("synth-images-per-id-reversed", lambda w: ["synth", "--out", str(w["tmp"] / "new"), "--ids", "3",
                                                    "--images-per-id", "5", "2", "--quiet"], "images_per_id"),
    Case("synth-into-a-dataset", lambda w: ["synth", "--out", str(w["data"]), "--ids", "3", "--quiet"],
         "not a previous SynthPedes output"),
    Case("demo-images-per-id-reversed", _train("synth.images_per_id=[5, 2]"), "synth.images_per_id"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_one_clear_message(case: Case, base, tmp_path, capsys):
    work = {"data": tmp_path / "toy", "run": tmp_path / "run", "other": base["other"], "tmp": tmp_path}
    shutil.copytree(base["data"], work["data"])
    shutil.copytree(base["run"], work["run"])
    argv = case.prepare(work)
    before = _hashes(tmp_path)
    code = main(argv)
    err = capsys.readouterr().err
    assert code == case.code, err
    assert "Traceback" not in err and err.startswith(f"ivt {argv[0]}: error: "), err
    assert case.expect.lower() in err.lower(), err
    assert _hashes(tmp_path) == before, "the user's files were modified"
    assert not (tmp_path / "new" / "config.yaml").exists()


def test_the_suite_is_large_enough():
    assert len(CASES) >= 30


def test_unusual_but_valid_images_are_read_correctly(tmp_path, capsys):
    """CMYK, 16-bit, grey and palette files are converted, not refused, and read as the same colour."""
    from ivt.transforms import load_image

    rgb = (200, 40, 90)
    Image.new("CMYK", (8, 16), (0, 200, 120, 40)).save(tmp_path / "cmyk.jpg")
    Image.new("L", (8, 16), 77).save(tmp_path / "grey.png")
    pal = Image.new("P", (8, 16), 1)
    pal.putpalette([0, 0, 0, *rgb] + [0] * (256 * 3 - 6))
    pal.save(tmp_path / "pal.png")
    Image.fromarray(np.full((16, 8), 40000, dtype=np.uint16)).save(tmp_path / "deep.png")
    assert load_image(tmp_path / "grey.png", (16, 8)).unique().tolist() == [77]
    assert load_image(tmp_path / "pal.png", (16, 8))[:, 0, 0].tolist() == list(rgb)
    deep = load_image(tmp_path / "deep.png", (16, 8))
    assert deep.unique().tolist() == [round(40000 / 65535 * 255)]  # scaled, not clipped to 255
    cmyk = load_image(tmp_path / "cmyk.jpg", (16, 8))[:, 4, 4].tolist()
    assert cmyk[0] > 150 and cmyk[1] < 80  # a red-ish colour survives the CMYK conversion


def test_long_and_non_ascii_captions_are_accepted(tmp_path, capsys):
    data = write_toy_pedes(tmp_path / "toy")
    entries = json.loads((data / "reid_raw.json").read_text())
    entries[0]["captions"] = ["Une femme en manteau rouge, café au lait — 穿红色外套的女人. " * 3]
    entries[1]["captions"] = ["a man in a red shirt " * 400]
    (data / "reid_raw.json").write_text(json.dumps(entries))
    assert main(["data", "check", str(data)]) == 0
    assert main(["train", "--set", *TRAIN, f"data.path={data}", "--out", str(tmp_path / "run")]) == 0


API_CASES = {
    "load-not-a-run": lambda m, w: __import__("ivt").load(w["data"]),
    "encode-missing-image": lambda m, w: m.encode_images([w["data"] / "nope.jpg"]),
    "encode-bad-tensor": lambda m, w: m.encode_images([np.zeros((3, 4, 4))]),
    "encode-float-tensor": lambda m, w: m.encode_images([__import__("torch").zeros(3, 8, 8)]),
    "encode-non-string-text": lambda m, w: m.encode_texts(["ok", 3]),
}


@pytest.mark.parametrize("name", sorted(API_CASES))
def test_python_api_raises_typed_errors(name, base):
    import ivt

    model = ivt.load(base["run"], device="cpu")
    before = _hashes(base["run"].parent)
    with pytest.raises(IvtError):
        API_CASES[name](model, base)
    assert _hashes(base["run"].parent) == before
