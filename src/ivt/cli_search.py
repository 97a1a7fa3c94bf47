"""The `ivt` commands over indexes: index build/add, search, explain, serve."""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from ivt.cli_args import FORMAT_HELP, add_device_precision, int_in, output_file, port_number, positive_int
from ivt.terminal import printable


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
    from ivt.index.build import add_to_index, build_index, check_index_target
    from ivt.index.ingest import image_source
    from ivt.index.milvus import is_milvus
    from ivt.index.query import index_manifest, index_model
    from ivt.video.detect import load_detector

    if args.images is None and not args.video:
        raise DataError("give --images DIR_OR_ANNOTATION and/or --video FILE")
    target = args.out if args.index_command == "build" else args.index
    if target is not None and not is_milvus(target):
        check_index_target(target, create=args.index_command == "build")
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
        example_ranking,
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
    if args.cosine and (text is not None or (args.image is None and args.item is None)):
        raise DataError("--cosine is for an example image alone (--image or --item, no description)")
    if not 1 <= args.top_k <= 1000:
        raise DataError(f"--top-k must be from 1 to 1000, got {args.top_k}")
    where = SearchFilter.make(args.camera, args.after, args.before, args.track, args.min_score)
    gallery, model = open_for_search(args.index, args.checkpoint, args.device, _search_params(args), args.precision)
    start = time.perf_counter()
    if args.rerank:
        model.require_rerank()
    example = (example_item(gallery, args.item) if args.item is not None else
               example_file(gallery, model, args.image) if args.image is not None else None)
    text_vector, ignored = encode_query(model, text) if text else (None, [])
    query = combined_query(text_vector, example)
    hits = results(gallery, query, args.top_k, args.per_track, (model, text, args.rerank) if args.rerank else None,
                   where, example, example_ranking(text, args.cosine))
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
    from ivt.serve.app import bind

    with bind(args.host, args.port) as sock:     # a port in use is told before anything loads
        service = load_service(args.index, args.checkpoint, args.device, _search_params(args), args.precision)
        app = create_app(service=service)
        if args.host not in ("127.0.0.1", "localhost", "::1"):
            print(f"warning: listening on {printable(args.host)}, reachable from other machines; the service has "
                  f"no authentication", file=sys.stderr)
        print(f"serving {len(service.gallery)} indexed images at http://{printable(args.host)}:{args.port}/ "
              f"(Ctrl-C stops)")
        uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level="warning")).run(sockets=[sock])


def add_search_commands(sub: argparse._SubParsersAction) -> None:
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
        c.add_argument("--every", type=positive_int, default=1, help="with --video: process every N-th frame")
        c.add_argument("--detector", default="hog", help="person detector: hog, or package.module:factory")
        c.add_argument("--camera", help="with --video: the camera's name, 1 to 256 printable characters "
                                        "(default: each video file's stem)")
        c.add_argument("--start-time", metavar="ISO8601",
                       help="with --video: wall-clock time of the first frame, e.g. 2026-12-03T10:15:00Z")
        add_device_precision(c)
        c.add_argument("--batch-size", type=positive_int, default=64)
        c.add_argument("--quiet", action="store_true", help="no progress bars")
        c.set_defaults(func=_cmd_index)

    p = sub.add_parser("search", help="rank an index's images by a description, an example image, or both")
    p.add_argument("text", nargs="?", help='the description, e.g. "a man in a black jacket with a red backpack"')
    p.add_argument("--image", metavar="FILE", help="find this person: an image of them (left out of the results "
                   "when indexed)")
    p.add_argument("--item", metavar="ID", help="find this person: an item of the index, by the id the results show "
                   "(a Milvus item's id may be shortened to any unique prefix of 4 or more hex digits, either case); "
                   "left out of the results, with --per-track its whole track")
    p.add_argument("--index", required=True, metavar="INDEX", help="index directory or milvus:URI#COLLECTION")
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--per-track", action="store_true", help="one result per video track (its best crop)")
    p.add_argument("--cosine", action="store_true",
                   help="with --image/--item alone: rank by plain cosine, not camera-centred and k-reciprocally "
                        "re-ranked (see ivt.index.same_person)")
    p.add_argument("--camera", action="append", metavar="NAME", help="only crops of this camera (repeatable)")
    p.add_argument("--after", metavar="T", help="only crops at or after T: ISO 8601, or seconds into the video")
    p.add_argument("--before", metavar="T", help="only crops at or before T: ISO 8601, or seconds into the video")
    p.add_argument("--track", type=int_in(0), metavar="ID", help="only crops of this track")
    p.add_argument("--min-score", type=float, metavar="S", help="only results with a cosine of at least S")
    p.add_argument("--rerank", type=int_in(0, 1000), default=0, metavar="K",
                   help="re-order the top K by the model's image-text matching head together with the cosine "
                   "(0: off)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--html", metavar="OUT.html", type=output_file, help="also write a self-contained HTML result grid")
    p.add_argument("--checkpoint", help="run directory, if it moved since the index was built")
    add_device_precision(p)
    p.add_argument("--ef-search", type=int, help="hnsw: candidates explored per query (recall vs speed)")
    p.add_argument("--nprobe", type=int, help="ivfpq: inverted lists visited per query (recall vs speed)")
    p.set_defaults(func=_cmd_search)

    p = sub.add_parser("explain", help="draw where each phrase of a description matches an image")
    p.add_argument("text", help="the description")
    p.add_argument("--checkpoint", required=True, help="run directory of the model")
    p.add_argument("--image", required=True, help="image file")
    p.add_argument("--out", default="explanation.png", type=output_file, help="PNG to write (default: %(default)s)")
    p.add_argument("--samples", type=int, default=64, help="masked encodings (more = smoother maps)")
    p.add_argument("--which", default="best", choices=["best", "last"])
    add_device_precision(p)
    p.set_defaults(func=_cmd_explain)

    p = sub.add_parser("serve", help="web page and JSON API for searching an index")
    p.add_argument("--index", required=True, metavar="INDEX", help="index directory or milvus:URI#COLLECTION")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    p.add_argument("--port", type=port_number, default=8000, help="TCP port, 1 to 65535 (default: %(default)s)")
    p.add_argument("--checkpoint", help="run directory, if it moved since the index was built")
    add_device_precision(p)
    p.add_argument("--ef-search", type=int, help="hnsw: candidates explored per query")
    p.add_argument("--nprobe", type=int, help="ivfpq: inverted lists visited per query")
    p.set_defaults(func=_cmd_serve)
