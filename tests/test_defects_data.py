"""Regression tests of input-handling defects found by trying bad inputs: each ends in one clear
message naming the file/field/value with exit status 2 (or a typed ivt error), and leaves what the
user already had unchanged."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from PIL import Image

from helpers import write_toy_pedes
from ivt.cli import main
from ivt.errors import ConfigError, RunDirError

REPO = Path(__file__).resolve().parents[1]
TRAIN = ["model.size=tiny", "model.image_size=[32, 16]", "train.batch_size=8", "train.precision=fp32",
         "train.threads=2", "data.vocab_size=200", "data.max_text_len=24", "train.epochs=1"]
SYNTH = ["--ids", "3", "--height", "48", "--width", "16", "--images-per-id", "1", "1", "--quiet"]


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _error(capsys: pytest.CaptureFixture[str], command: str) -> str:
    """The CLI's stderr, checked to be one error line of ``command`` (no traceback)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith(f"ivt {command}: error: "), err
    assert err.count("\n") == 1, err
    return err


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> dict[str, Path]:
    """A toy dataset and a run trained on it (tiny settings, a few seconds)."""
    root = tmp_path_factory.mktemp("toy")
    data = write_toy_pedes(root / "toy")
    run = root / "run"
    assert main(["train", "--set", *TRAIN, f"data.path={data}", "--out", str(run)]) == 0
    return {"data": data, "run": run}


# --- 1. synth --out on an existing output ------------------------------------------------------

def test_synth_refuses_to_replace_an_existing_output_without_force(tmp_path, capsys):
    out = tmp_path / "sp"
    assert main(["synth", "--out", str(out), *SYNTH]) == 0
    before = _hashes(out)
    capsys.readouterr()
    assert main(["synth", "--out", str(out), *SYNTH, "--seed", "5"]) == 2
    err = _error(capsys, "synth")
    assert f"{out} already holds a SynthPedes output" in err and "pass --force to replace it" in err
    assert _hashes(out) == before
    assert main(["synth", "--out", str(out), *SYNTH, "--seed", "5", "--force"]) == 0
    marker = json.loads((out / "synthpedes.json").read_text())
    assert marker["params"]["seed"] == 5 and marker["complete"] is True


def test_synth_force_never_replaces_a_directory_that_is_not_an_output(tmp_path, capsys):
    foreign = tmp_path / "mine"
    (foreign / "imgs").mkdir(parents=True)
    (foreign / "imgs" / "photo.jpg").write_bytes(b"precious")
    (foreign / "reid_raw.json").write_text("[]")
    before = _hashes(foreign)
    assert main(["synth", "--out", str(foreign), *SYNTH, "--force"]) == 2
    err = _error(capsys, "synth")
    assert "is not a previous SynthPedes output" in err and "even with --force" in err
    assert _hashes(foreign) == before


def test_an_unfinished_output_is_not_reused_and_force_replaces_it(tmp_path, capsys):
    from ivt.demo import _ensure_synth

    out = tmp_path / "sp"
    assert main(["synth", "--out", str(out), *SYNTH]) == 0
    (out / "synthpedes.json").write_text(json.dumps({"generator": "synthpedes", "made_by": "demo",
                                                     "complete": False}))  # as a crash leaves it
    _ensure_synth(out, 3, 0, images_per_id=(1, 1))
    assert "generated" in capsys.readouterr().out
    assert json.loads((out / "synthpedes.json").read_text())["complete"] is True


def test_demo_reuses_its_draw_regenerates_only_its_own_and_keeps_other_draws(tmp_path, capsys):
    from ivt.demo import _ensure_synth

    mine = tmp_path / "synth"
    assert main(["synth", "--out", str(mine), "--ids", "4", "--images-per-id", "1", "1", "--quiet"]) == 0
    before = _hashes(mine)
    with pytest.raises(ConfigError, match="holds a SynthPedes draw that ivt demo did not make"):
        _ensure_synth(mine, 3, 0, images_per_id=(1, 1))
    assert _hashes(mine) == before
    own = tmp_path / "demo-data"
    _ensure_synth(own, 3, 0, images_per_id=(1, 1))
    _ensure_synth(own, 3, 0, images_per_id=(1, 1))
    assert "reusing it" in capsys.readouterr().out
    _ensure_synth(own, 3, 0, images_per_id=(2, 2))
    assert len(json.loads((own / "reid_raw.json").read_text())) == 6


def test_demo_refuses_a_foreign_run_dir_as_a_user_error(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    foreign = tmp_path / "run"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError):
        from ivt.demo import _prepare_run_dir

        _prepare_run_dir(foreign)
    assert main(["demo", "--data", str(tmp_path / "data"), "--out", str(foreign), "--ids", "3"]) == 2
    assert "is not a previous demo run" in _error(capsys, "demo")
    assert (foreign / "notes.txt").read_text() == "mine"


# --- 2. preview arguments ----------------------------------------------------------------------

@pytest.mark.parametrize("extra, expect", [
    (["--preview-only", "--preview", "{tmp}/p.png", "--out", "{tmp}/missing"], "no such dataset directory"),
    (["--preview", "{tmp}/p.png", "--preview-count", "0"], "--preview-count) must be an integer >= 1, got 0"),
    (["--preview", "{tmp}/p.png", "--preview-count", "-2"], "must be an integer >= 1, got -2"),
    (["--preview", "{tmp}"], "is a directory; give the PNG file to write"),
    (["--preview-only"], "--preview-only writes the preview of an existing --out: give --preview PNG"),
])
def test_synth_preview_arguments_are_one_line_errors(tmp_path, capsys, extra, expect):
    argv = ["synth", "--out", str(tmp_path / "new"), *SYNTH, *(a.format(tmp=tmp_path) for a in extra)]
    assert main(argv) == 2
    assert expect in _error(capsys, "synth")
    assert not (tmp_path / "new").exists()  # refused before generating anything
    assert not (tmp_path / "p.png").exists()


# --- 3. size and count bounds ------------------------------------------------------------------

@pytest.mark.parametrize("extra, expect", [
    (["--height", "100000", "--width", "100000"], "height and width must be at most 2048 pixels"),
    (["--height", "4096", "--width", "64"], "at most 2048 pixels (the renderer needs about 200 bytes"),
    (["--ids", "1000000"], "5,000,000 images exceeds 1,000,000"),
    (["--images-per-id", "1", "1000"], "images_per_id: at most 100 images of one identity"),
    (["--images-per-id", "0", "2"], "images_per_id must be (min, max) with 1 <= min <= max"),
    (["--images-per-id", "4", "2"], "images_per_id must be (min, max) with 1 <= min <= max"),
    (["--ids", "0"], "num_ids must be an integer >= 3"),
])
def test_synth_sizes_and_counts_are_bounded_before_anything_is_rendered(tmp_path, capsys, monkeypatch,
                                                                        extra, expect):
    import ivt.synth.generate as generate

    def started(*args, **kwargs):  # on a regression: fail at once instead of exhausting memory
        raise AssertionError("generation started")

    monkeypatch.setattr(generate, "_prepare", started)
    monkeypatch.setattr(generate, "sample_identities", started)
    assert main(["synth", "--out", str(tmp_path / "new"), "--quiet", *extra]) == 2
    assert expect in _error(capsys, "synth")
    assert not (tmp_path / "new").exists()


# --- 4. scientific notation ---------------------------------------------------------------------

def test_scientific_notation_is_a_float_in_files_and_overrides(tmp_path):
    from ivt.config import load_config

    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 1e-4\n  weight_decay: 5E-3\n  clip_grad: 1.0e+3\nloss:\n  temperature: .5\n"
                    "data:\n  tokenizer: 1e-4\n")
    cfg = load_config(path, ["optim.warmup_epochs=2", "optim.min_lr_ratio=2.5e-1", "model.image_mean=[5e-1, .5, 1]"])
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.clip_grad) == (1e-4, 5e-3, 1000.0)
    assert cfg.loss.temperature == 0.5 and cfg.optim.warmup_epochs == 2.0 and cfg.optim.min_lr_ratio == 0.25
    assert cfg.model.image_mean == [0.5, 0.5, 1.0]
    assert cfg.data.tokenizer == "1e-4"  # a string field keeps the text
    assert load_config(None, ["optim.lr=1e-4"]).optim.lr == 1e-4
    with pytest.raises(ConfigError, match="optim.lr: -300.0 must be >= 0"):
        load_config(None, ["optim.lr=-3e2"])
    with pytest.raises(ConfigError, match="train.epochs: expected an integer, got '1e3'"):
        load_config(None, ["train.epochs=1e3"])
    with pytest.raises(ConfigError, match="train.epochs: expected an integer, got 2.5"):
        load_config(None, ["train.epochs=2.5"])
    with pytest.raises(ConfigError, match="optim.lr: expected a number, got '1e'"):
        load_config(None, ["optim.lr=1e"])


# --- 5. YAML syntax errors ----------------------------------------------------------------------

def test_a_yaml_syntax_error_is_one_line_naming_file_line_and_column(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  lr: [1e-4\ntrain:\n  epochs: 2\n")
    assert main(["train", "--config", str(bad), "--out", str(tmp_path / "run")]) == 2
    err = _error(capsys, "train")
    assert f"{bad}: not valid YAML: line 3, column 6: expected ',' or ']', but got ':'" in err
    assert main(["train", "--set", "optim.lr=[1", "--out", str(tmp_path / "run")]) == 2
    assert "override 'optim.lr=[1': value is not valid YAML (line 1, column 3:" in _error(capsys, "train")
    assert not (tmp_path / "run").exists()


# --- 6. a diverging loss ------------------------------------------------------------------------

def test_a_diverging_loss_is_a_user_error_and_keeps_the_checkpoints(toy, tmp_path, capsys):
    run = tmp_path / "run"   # paused after its first step, still in the warmup from ~0
    assert main(["train", "--set", *TRAIN, f"data.path={toy['data']}", "optim.lr=100000.0", "train.epochs=2",
                 "train.log_every=1", "train.stop_after_steps=1", "--out", str(run)]) == 0
    saved = {k: v for k, v in _hashes(run).items() if "safetensors" in k or k.endswith(".json")}
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--set", "train.stop_after_steps=null"]) == 2
    err = _error(capsys, "train")
    assert "training diverged: the loss became nan by step 4 (epoch 1) with optim.lr=100000" in err
    assert "lower optim.lr (e.g. --set optim.lr=10000)" in err and "its checkpoints are unchanged" in err
    assert {k: v for k, v in _hashes(run).items() if k in saved} == saved
    fresh = tmp_path / "fresh"  # fewer steps than log_every: caught before the end-of-epoch save
    assert main(["train", "--set", *TRAIN, f"data.path={toy['data']}", "optim.lr=100000.0",
                 "--out", str(fresh)]) == 2
    err = _error(capsys, "train")
    assert "training diverged: the loss became nan by step 4 (epoch 1) with optim.lr=100000" in err
    assert "no checkpoint was written" in err
    assert not (fresh / "last.safetensors").exists()


# --- 7. model.init that is missing or a directory ------------------------------------------------

@pytest.mark.parametrize("init, expect", [
    ("missing.pth", "model.init: checkpoint not found: missing.pth"),
    ("{tmp}", "model.init: {tmp} is a directory, not a checkpoint file"),
])
def test_a_missing_init_file_is_a_checkpoint_error(toy, tmp_path, capsys, init, expect):
    from ivt.config import load_config
    from ivt.errors import CheckpointError
    from ivt.train.encoder_from_config import build_encoder

    init = init.format(tmp=tmp_path)
    cfg = load_config(None, [*TRAIN, f"model.init={init}"])
    with pytest.raises(CheckpointError, match="model.init: "):
        build_encoder(cfg.model, 200, 24)
    out = tmp_path / "run"
    assert main(["train", "--set", *TRAIN, f"data.path={toy['data']}", f"model.init={init}",
                 "--out", str(out)]) == 2
    assert expect.format(tmp=tmp_path) in _error(capsys, "train")
    assert not out.exists()


# --- 8. file_path values that escape the image root ------------------------------------------------

def _escape_link(data: Path) -> str:
    outside = data.parent / "outside.jpg"
    Image.new("RGB", (16, 32)).save(outside)
    (data / "imgs" / "train" / "link.jpg").symlink_to(outside)
    return "train/link.jpg"


@pytest.mark.parametrize("make, expect", [
    (lambda data: "../../../x.jpg", "(it goes up with '..')"),
    (lambda data: "train/../../imgs/train/0001_0.jpg", "(it goes up with '..')"),
    (lambda data: str(data / "imgs" / "train" / "0001_0.jpg"), "(it is an absolute path)"),
    (_escape_link, "through a symbolic link"),
])
def test_image_paths_outside_the_root_are_refused_when_loading(toy, tmp_path, capsys, make, expect):
    data = write_toy_pedes(tmp_path / "toy")
    entries = json.loads((data / "reid_raw.json").read_text())
    entries[2]["file_path"] = make(data)
    (data / "reid_raw.json").write_text(json.dumps(entries))
    before = _hashes(tmp_path)
    assert main(["data", "check", str(data)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = f"entry [2] ({entries[2]['file_path']}): field 'file_path': {entries[2]['file_path']!r} must be relative"
    assert line in err and expect in err, err
    assert main(["index", "build", "--checkpoint", str(toy["run"]), "--images", str(data / "reid_raw.json"),
                 "--out", str(tmp_path / "index"), "--quiet"]) == 2
    assert line in capsys.readouterr().err
    assert not (tmp_path / "index").exists()
    assert _hashes(tmp_path) == before


def test_search_and_data_loading_share_one_rule(tmp_path):
    """The index store and the gallery judge item paths with the rule data loading uses."""
    from ivt.files import ConfinedRoot, relative_path_problem
    from ivt.index import gallery, store

    assert gallery.ConfinedRoot is ConfinedRoot and store.relative_path_problem is relative_path_problem
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    (root / "a" / "in.jpg").write_bytes(b"x")
    (root / "a" / "out.jpg").symlink_to(tmp_path / "elsewhere.jpg")
    confined = ConfinedRoot(root)
    assert confined.resolve("a/in.jpg") == (root / "a" / "in.jpg").resolve()
    assert [confined.resolve(p) for p in ("a/out.jpg", "../x", "/etc/passwd", "a\\b", "")] == [None] * 5


# --- 9. GIFs and other image-like files in a gallery folder ---------------------------------------

def test_a_gallery_folder_indexes_gifs_and_lists_what_it_skips(toy, tmp_path, capsys):
    gallery = tmp_path / "gallery"
    (gallery / "sub").mkdir(parents=True)
    src = toy["data"] / "imgs" / "train"
    Image.open(src / "0001_0.jpg").save(gallery / "a.jpg")
    Image.open(src / "0001_1.jpg").save(gallery / "b.gif")
    frames = [Image.new("RGB", (16, 32), (80 * i, 20, 20)) for i in range(3)]
    frames[0].save(gallery / "sub" / "moving.gif", save_all=True, append_images=frames[1:])
    (gallery / "c.heic").write_bytes(b"not read")
    (gallery / "notes.txt").write_text("not an image")
    (gallery / "link.jpg").symlink_to(src / "0002_0.jpg")
    index = tmp_path / "index"
    assert main(["index", "build", "--checkpoint", str(toy["run"]), "--images", str(gallery),
                 "--out", str(index), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "3 new item(s), 3 in total" in out
    assert "2 file(s) not indexed:" in out
    assert f"{gallery / 'c.heic'}: .heic images are not indexed (indexed: " in out
    assert f"{gallery / 'link.jpg'}: outside {gallery} (it resolves to " in out
    assert "notes.txt" not in out
    items = [json.loads(line)["path"] for v in sorted(index.glob("v*")) for line in (v / "items.jsonl").open()]
    assert sorted(items) == ["a.jpg", "b.gif", "sub/moving.gif"]
