"""Command-line defects of issue 16: control characters escaped in terminal output, bad option
values told in one line (exit 2) naming the option and the value, one device grammar accepted by
every command, and the minor hints (``--which``, ``--format``) and the demo recipe found from the package."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import ivt
from helpers import trained_toy_run, write_toy_pedes
from ivt.cli import build_parser, main
from ivt.errors import ConfigError, DeviceError, IndexStoreError
from ivt.index.build import build_index
from ivt.index.ingest import image_source

REPO = Path(__file__).resolve().parents[1]
TRAIN = ["model.size=tiny", "model.image_size=[32, 16]", "train.batch_size=8", "train.precision=fp32",
         "train.threads=2", "data.vocab_size=200", "data.max_text_len=24", "train.epochs=1"]
ESC, CSI = "\x1b", "\x9b"
#: Gallery file names that would clear the screen, break the table or start a C1 control sequence.
EVIL = {"evil\x1b[2J.jpg": "evil\\x1b[2J.jpg", "new\nline.jpg": "new\\nline.jpg", "c1\x9b31m.jpg": "c1\\x9b31m.jpg"}


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> dict[str, Path]:
    """A toy dataset, a trained run of it, and an index of a folder whose file names hold control characters."""
    root = tmp_path_factory.mktemp("cli")
    data, run = trained_toy_run(root, TRAIN)
    gallery = root / "gallery"
    gallery.mkdir()
    sources = sorted((data / "imgs" / "test").glob("*.jpg"))
    for name, src in zip(["plain.jpg", *EVIL], sources):
        shutil.copy(src, gallery / name)
    (gallery / "skip\x1b[31m.heic").write_bytes(b"not read")
    index = root / "idx"
    build_index(index, ivt.load(run, device="cpu"), images=image_source(gallery), progress=False)
    return {"data": data, "run": run, "gallery": gallery, "index": index}


def _usage_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """The message of an argparse usage error (exit status 2), its last line."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err
    return err.strip().splitlines()[-1]


def _user_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """The one-line message of a user error (exit status 2)."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


# --- 1. control characters in terminal output -------------------------------------------------


def test_printable_escapes_c0_del_c1_and_bidi_controls():
    from ivt.terminal import printable

    assert printable("a\x1b[2J\nb\r\tc\x00\x07\x7f\x9b\u202ed é 中") == \
        "a\\x1b[2J\\nb\\r\\tc\\x00\\x07\\x7f\\x9b\\u202ed é 中"
    assert printable("two\nlines\x1b", keep="\n") == "two\nlines\\x1b"
    assert printable(Path("/x/\x1b.jpg")) == "/x/\\x1b.jpg"


def test_search_table_escapes_the_query_and_file_names(base, capsys):
    query = "a person\x1b]0;owned\x07 in red"
    assert main(["search", query, "--index", str(base["index"]), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert ESC not in out and CSI not in out and "\x07" not in out
    lines = out.splitlines()
    assert lines[0].startswith('query: "a person\\x1b]0;owned\\x07 in red"  (4 indexed images, exact search')
    # header, column titles, one line per hit (no name broke a line), the words left out
    assert len(lines) == 2 + 4 + 1 and lines[-1].startswith("left out (words this model never saw")
    assert "owned" in lines[-1]
    shown = {line.split(None, 3)[3] for line in lines[2:-1]}
    assert shown == {"plain.jpg", *EVIL.values()}


def test_search_json_keeps_the_exact_strings(base, capsys):
    query = "a person\x1b[2J in red"
    assert main(["search", query, "--index", str(base["index"]), "--device", "cpu", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["text"] == query
    assert {hit["provenance"]["path"] for hit in result["results"]} == {"plain.jpg", *EVIL}


def test_index_build_report_escapes_listed_file_names(base, tmp_path, capsys):
    assert main(["index", "build", "--checkpoint", str(base["run"]), "--images", str(base["gallery"]),
                 "--out", str(tmp_path / "idx"), "--device", "cpu", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert ESC not in out and CSI not in out
    assert f"    {base['gallery']}/skip\\x1b[31m.heic: .heic images are not indexed (indexed: " in out


def test_errors_and_dataset_tables_escape_control_characters(base, tmp_path, capsys):
    missing = tmp_path / "no\x1b[2Jdata"
    message = _user_error(capsys, ["data", "check", str(missing)])
    assert message == f"ivt data: error: {tmp_path}/no\\x1b[2Jdata: no such file or directory"
    odd = tmp_path / "toy\x1b[31m"
    shutil.copytree(base["data"], odd)
    assert main(["data", "check", str(odd), "--no-images"]) == 0
    out = capsys.readouterr().out
    assert ESC not in out
    assert out.splitlines()[0] == (f"cuhk-pedes: {tmp_path}/toy\\x1b[31m/reid_raw.json "
                                   f"(images under {tmp_path}/toy\\x1b[31m/imgs)")


# --- 2. bad option values: one line, exit 2, naming the option and the value --------------------


BUILD = ["index", "build", "--checkpoint", "c", "--out", "o", "--images", "i"]
ADD = ["index", "add", "--index", "i", "--images", "i"]
EVALUATE = ["evaluate", "--checkpoint", "c", "--data", "d"]
AT_LEAST_1 = "must be an integer >= 1, got"
PORT = "must be an integer from 1 to 65535, got"


@pytest.mark.parametrize("argv, expected", [
    ([*BUILD, "--every", "0"], f"ivt index build: error: argument --every: {AT_LEAST_1} '0'"),
    ([*BUILD, "--every", "-2"], f"ivt index build: error: argument --every: {AT_LEAST_1} '-2'"),
    ([*ADD, "--every", "0"], f"ivt index add: error: argument --every: {AT_LEAST_1} '0'"),
    ([*BUILD, "--batch-size", "0"], f"ivt index build: error: argument --batch-size: {AT_LEAST_1} '0'"),
    ([*ADD, "--batch-size", "-1"], f"ivt index add: error: argument --batch-size: {AT_LEAST_1} '-1'"),
    ([*EVALUATE, "--batch-size", "0"], f"ivt evaluate: error: argument --batch-size: {AT_LEAST_1} '0'"),
    ([*EVALUATE, "--batch-size", "-1"], f"ivt evaluate: error: argument --batch-size: {AT_LEAST_1} '-1'"),
    (["serve", "--index", "i", "--port", "99999"], f"ivt serve: error: argument --port: {PORT} '99999'"),
    (["serve", "--index", "i", "--port", "-1"], f"ivt serve: error: argument --port: {PORT} '-1'"),
    (["serve", "--index", "i", "--port", "0"], f"ivt serve: error: argument --port: {PORT} '0'"),
    (["serve", "--index", "i", "--port", "http"], f"ivt serve: error: argument --port: {PORT} 'http'"),
])
def test_bad_numbers_are_usage_errors_naming_option_and_value(argv, expected, capsys):
    assert _usage_error(capsys, argv) == expected


@pytest.mark.parametrize("argv, option", [
    (["search", "x", "--index", "i", "--html", "{dir}"], "--html"),
    (["explain", "x", "--checkpoint", "c", "--image", "i", "--out", "{dir}"], "--out"),
    (["evaluate", "--checkpoint", "c", "--data", "d", "--json", "{dir}"], "--json"),
])
def test_an_output_file_that_is_a_directory_is_a_usage_error(argv, option, tmp_path, capsys):
    argv = [a.replace("{dir}", str(tmp_path)) for a in argv]
    assert _usage_error(capsys, argv) == (f"ivt {argv[0]}: error: argument {option}: '{tmp_path}' is a directory; "
                                          f"give the file to write")
    blocked = tmp_path / "file.txt"
    blocked.write_text("x")
    argv = [str(blocked / "out.x") if a == str(tmp_path) else a for a in argv]
    assert _usage_error(capsys, argv) == (f"ivt {argv[0]}: error: argument {option}: cannot write "
                                          f"'{blocked}/out.x': {blocked} is not a directory")


@pytest.mark.parametrize("argv, option", [
    (["search", "x", "--index", "i", "--html", "/proc/ivt-out.x"], "--html"),
    (["explain", "x", "--checkpoint", "c", "--image", "i", "--out", "/proc/ivt-out.x"], "--out"),
    (["evaluate", "--checkpoint", "c", "--data", "d", "--json", "/proc/ivt-out.x"], "--json"),
])
def test_an_output_file_in_a_folder_that_takes_no_files_is_a_usage_error(argv, option, capsys):
    assert _usage_error(capsys, argv) == (f"ivt {argv[0]}: error: argument {option}: cannot write '/proc/ivt-out.x': "
                                          f"cannot create files in /proc (No such file or directory)")


def test_index_build_out_under_a_file_or_in_proc_is_a_user_error_before_any_work(base, tmp_path, capsys,
                                                                                   monkeypatch):
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    monkeypatch.setattr(ivt, "load", lambda *a, **k: pytest.fail("the model was loaded before --out was checked"))
    for out, reason in ((target / "sub", f"{target} is not a directory"),
                        (Path("/proc/ivt-index"), "cannot create files in /proc (No such file or directory)")):
        message = _user_error(capsys, ["index", "build", "--checkpoint", str(base["run"]), "--images",
                                       str(base["gallery"]), "--out", str(out), "--device", "cpu", "--quiet"])
        assert message == (f"ivt index: error: cannot write '{out}': {reason}; give --out a new or empty directory "
                           f"(nothing was changed)")
    assert target.read_text() == "mine"
    monkeypatch.undo()
    with pytest.raises(IndexStoreError, match=f"cannot write '{target}/sub': {target} is not a directory"):
        build_index(target / "sub", ivt.load(base["run"], device="cpu"), images=image_source(base["gallery"]))


def test_index_build_out_naming_a_file_is_a_user_error(base, tmp_path, capsys):
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    message = _user_error(capsys, ["index", "build", "--checkpoint", str(base["run"]), "--images",
                                   str(base["gallery"]), "--out", str(target), "--device", "cpu", "--quiet"])
    assert message == (f"ivt index: error: {target} is a file, not an index directory; give --out a new or "
                       f"empty directory (nothing was changed)")
    assert target.read_text() == "mine"


def test_the_api_refuses_a_frame_step_below_one(base, tmp_path):
    model = ivt.load(base["run"], device="cpu")
    for every in (0, -1, 1.5, True):
        with pytest.raises(ConfigError, match=r"every \(--every\) must be an integer >= 1, got "):
            build_index(tmp_path / "i", model, videos=[base["gallery"] / "plain.jpg"], every=every)
    assert not (tmp_path / "i").exists()


# --- 3. one device grammar, accepted by every command ------------------------------------------


COMMANDS = {"train": ["train"], "evaluate": ["evaluate", "--checkpoint", "c", "--data", "d"],
            "search": ["search", "x", "--index", "i"], "index build": ["index", "build", "--checkpoint", "c",
                                                                       "--out", "o"],
            "index add": ["index", "add", "--index", "i"],
            "explain": ["explain", "x", "--checkpoint", "c", "--image", "i"], "serve": ["serve", "--index", "i"],
            "demo": ["demo"]}


@pytest.mark.parametrize("command", COMMANDS)
def test_every_model_command_takes_cuda_n_and_refuses_nonsense(command, capsys):
    argv = COMMANDS[command]
    assert build_parser().parse_args([*argv, "--device", "cuda:3"]).device == "cuda:3"
    assert _usage_error(capsys, [*argv, "--device", "cuda:²"]).endswith(
        "error: argument --device: invalid device 'cuda:²': use auto, cpu, cuda or cuda:N")


@pytest.mark.parametrize("bad", ["gpu0", "cuda:", "cuda:x", "cuda:²", "CPU", " cpu", "cuda:1 "])
def test_config_cli_and_runtime_share_one_device_grammar(bad, capsys):
    from ivt.config import config_from_dict
    from ivt.devices import check_device
    from ivt.runtime import resolve_device

    said = f"invalid device {bad!r}: use auto, cpu, cuda or cuda:N"
    with pytest.raises(DeviceError) as exc:
        check_device(bad)
    assert str(exc.value) == said
    with pytest.raises(DeviceError) as exc:
        resolve_device(bad)
    assert str(exc.value) == said
    with pytest.raises(ConfigError) as exc:
        config_from_dict({"train": {"device": bad}})
    assert str(exc.value) == f"train.device: {said}"
    assert _usage_error(capsys, ["search", "x", "--index", "i", "--device", bad]).endswith(f"--device: {said}")


def test_demo_passes_its_device_to_training(tmp_path, monkeypatch):
    import ivt.train.trainer as trainer
    from ivt.synth.generate import FORMAT_VERSION

    seen = {}

    def fake_train(cfg, resume=False):
        seen["device"] = cfg.train.device
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "train", fake_train)
    data = write_toy_pedes(tmp_path / "toy")
    marker = {"version": FORMAT_VERSION, "params": {"num_ids": 3, "seed": 0, "images_per_id": [2, 5]}}
    (data / "synthpedes.json").write_text(json.dumps(marker))
    assert main(["demo", "--data", str(data), "--out", str(tmp_path / "run"), "--ids", "3",
                 "--device", "cuda:2"]) == 130
    assert seen == {"device": "cuda:2"}



@pytest.mark.parametrize("argv, message", [
    (["--minutes", "0"], "--minutes 0: train.max_minutes: 0.0 must be > 0 (or null)"),
    (["--minutes", "-2.5"], "--minutes -2.5: train.max_minutes: -2.5 must be > 0 (or null)"),
    (["--minutes", "nan"], "--minutes nan: train.max_minutes: nan must be a finite number"),
    (["--ids", "2"], "--ids 2: synth.ids: 2 must be >= 3"),
])
def test_a_bad_demo_option_is_blamed_on_the_option_not_the_recipe(tmp_path, capsys, argv, message):
    data, out = tmp_path / "data", tmp_path / "run"
    assert main(["demo", "--data", str(data), "--out", str(out), *argv]) == 2
    assert capsys.readouterr().err == f"ivt demo: error: {message}\n"
    assert not data.exists() and not out.exists()

# --- 4. minor: hints that name what exists, the demo recipe found from the package -----------


def test_a_missing_best_checkpoint_hint_fits_the_caller(base, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(base["run"], run)
    for name in ("best.safetensors", "best.json"):
        (run / name).unlink()
    message = _user_error(capsys, ["evaluate", "--checkpoint", str(run), "--data", str(base["data"]),
                                   "--device", "cpu"])
    assert message == (f"ivt evaluate: error: {run}: no best checkpoint yet (validation has not run in this "
                       f"run); its latest weights are the last checkpoint (--which last on the command line, "
                       f"which='last' in Python)")
    for argv in (["search", "x", "--index", str(base["index"])], ["index", "add", "--index", str(base["index"]),
                                                                  "--images", str(base["gallery"])]):
        message = _user_error(capsys, [*argv, "--checkpoint", str(run), "--device", "cpu"])
        assert message.endswith(f": error: index {base['index']}: {run} has no best.safetensors, the checkpoint "
                                f"the index was built with; pass --checkpoint with the run directory it came from")
        assert "--which" not in message


def test_the_format_hint_names_the_cli_option(tmp_path, capsys):
    odd = tmp_path / "mine.json"
    odd.write_text(json.dumps({"people": []}))
    message = _user_error(capsys, ["data", "check", str(odd)])
    assert message.startswith(f"ivt data: error: {odd}: cannot tell the annotation format from the file name or "
                              f"the JSON shape; give the format (--format FORMAT on the command line, "
                              f"format='FORMAT' in Python); accepted formats: cuhk-pedes, ")
    named = tmp_path / "reid_raw.json"
    named.write_text(json.dumps({"people": []}))
    assert main(["data", "check", str(named)]) == 2
    err = capsys.readouterr().err
    assert ("(format cuhk-pedes was chosen from the file name; give the format (--format FORMAT on the command "
            "line, format='FORMAT' in Python) if the file is in another format)") in err
    assert "format=" not in err.replace("format='FORMAT'", "")


def test_the_demo_recipe_is_package_data_found_from_any_directory(tmp_path, monkeypatch):
    from ivt.config import load_config
    from ivt.demo import DEMO_CONFIG

    monkeypatch.chdir(tmp_path)
    assert DEMO_CONFIG.is_absolute() and DEMO_CONFIG == Path(ivt.__file__).parent / "recipes" / "demo.yaml"
    cfg = load_config(DEMO_CONFIG)
    assert (cfg.model.size, cfg.model.stem, cfg.model.pool, cfg.loss.name) == ("tiny", "mobilenetv2", "mean", "infonce")
    assert build_parser().parse_args(["demo"]).config is None  # the CLI falls back on DEMO_CONFIG
    assert '"ivt" = ["recipes/*.yaml"]' in (REPO / "pyproject.toml").read_text()  # shipped in the wheel
    copies = [p for d in ("configs", "src", "benchmarks", "tests") for p in (REPO / d).rglob("demo.yaml")]
    assert copies == [DEMO_CONFIG]
