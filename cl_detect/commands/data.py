"""`cl-detect data ...`: convert, check, pack or synthesize datasets.

    cl-detect data convert SRC --format yolo --split val --out val.json [--image-root DIR]
    cl-detect data check SRC [--format ...] [--split ...] [--texts prompts.txt]
    cl-detect data pack SRC --max-side 640 --out DIR [--limit N] [--quality 90]
    cl-detect data synth --out DIR --seed 0 ...

Readers and the doctor are imported only when a subcommand runs.
"""
from __future__ import annotations

import argparse

FORMATS = ("coco", "yolo", "voc", "lvis", "odvg", "grounding")


def _add_source_arguments(parser: argparse.ArgumentParser, format_required: bool = False) -> None:
    parser.add_argument("src", help="annotation file (json, jsonl, data.yaml) or dataset folder")
    parser.add_argument("--format", choices=FORMATS, required=format_required,
                        help="the source's annotation format" + ("" if format_required else
                                                                 " (default: guessed from the file)"))
    parser.add_argument("--split",
                        help="split to read: YOLO train/val/test, VOC ImageSets name, COCO instances_<split>")
    parser.add_argument("--image-root", help="folder the image paths are relative to: used to read json/jsonl "
                        "sources, and by convert as the root written file_names are relative to (default: guessed)")


def _add_synth_parser(sub, formatter) -> None:
    """The synth subcommand's arguments come from the synthetic-world module."""
    try:
        from cl_detect.data.synthetic import add_synth_arguments, run_synth
    except ImportError as error:
        # the other subcommands must keep working when the synthetic world is unavailable;
        # `error` is unbound after the except block, so the handler keeps the exception itself
        missing = error
        parser = sub.add_parser("synth", help=f"unavailable ({missing})", formatter_class=formatter)
        parser.set_defaults(_data_handler=lambda args: _unavailable(missing))
        return
    parser = sub.add_parser("synth", help="write the synthetic shapes world as COCO json + images",
                            formatter_class=formatter)
    add_synth_arguments(parser)
    parser.set_defaults(_data_handler=run_synth)


def _unavailable(error: Exception) -> int:
    print(f"cl-detect data synth is unavailable: {error}")
    return 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the data subcommands to `parser`."""
    sub = parser.add_subparsers(dest="data_command", required=True)
    formatter = parser.formatter_class  # shows defaults (cl_detect.commands._arguments)
    convert = sub.add_parser("convert", help="write any supported format as COCO json", formatter_class=formatter)
    _add_source_arguments(convert, format_required=True)
    convert.add_argument("--out", required=True, help="COCO json to write")
    convert.set_defaults(_data_handler=run_convert)

    check = sub.add_parser("check", help="the dataset doctor: report problems, exit 1 on errors",
                           formatter_class=formatter)
    _add_source_arguments(check)
    check.add_argument("--texts", help="text prompt file (one per line, or a json list) to compare with the classes")
    check.add_argument("--no-images", action="store_true", help="skip opening the image files")
    check.add_argument("--max-per-code", type=int, default=5, help="examples printed per finding code")
    check.set_defaults(_data_handler=run_check)

    pack = sub.add_parser("pack", help="resized JPEGs + COCO json with scaled boxes", formatter_class=formatter)
    _add_source_arguments(pack)
    pack.add_argument("--out", required=True, help="output folder (images/ + annotations.json)")
    pack.add_argument("--max-side", type=int, default=640, help="longer image side after packing")
    pack.add_argument("--limit", type=int, help="pack only the first N images")
    pack.add_argument("--quality", type=int, default=90, help="JPEG quality")
    pack.set_defaults(_data_handler=run_pack)
    _add_synth_parser(sub, formatter)


def _read(args: argparse.Namespace):
    from cl_detect.data.readers import read_dataset

    return read_dataset(args.src, format=args.format, split=args.split, **_read_kwargs(args))


def _read_kwargs(args: argparse.Namespace) -> dict:
    """YOLO and VOC locate their images themselves; the json formats take an image root."""
    if not args.image_root:
        return {}
    from cl_detect.data.readers import detect_format

    source_format = args.format or detect_format(args.src, args.split)
    return {"image_root": args.image_root} if source_format not in ("yolo", "voc") else {}


def _counts(dataset) -> str:
    ignored = sum(len(r.ignore_boxes) for r in dataset.records)
    return (f"images {len(dataset)}, boxes {dataset.num_boxes}, ignore regions {ignored}, "
            f"classes {len(dataset.vocabulary)}")


def run_convert(args: argparse.Namespace) -> int:
    from cl_detect.data.writers import write_coco_json

    dataset = _read(args)
    path = write_coco_json(dataset, args.out, args.image_root)
    print(f"wrote {path}: {_counts(dataset)}")
    return 0


def run_check(args: argparse.Namespace) -> int:
    from cl_detect.data.doctor import check_dataset

    report = check_dataset(args.src, texts=args.texts, check_images=not args.no_images, format=args.format,
                           split=args.split, **_read_kwargs(args))
    print(report.format_text(args.max_per_code))
    return 0 if report.ok else 1


def run_pack(args: argparse.Namespace) -> int:
    from cl_detect.data.pack import pack_dataset

    packed, path = pack_dataset(_read(args), args.out, max_side=args.max_side, limit=args.limit,
                                quality=args.quality)
    print(f"wrote {path}: {_counts(packed)}")
    return 0


def run(args: argparse.Namespace) -> int:
    """Dispatch to the chosen data subcommand; returns the exit code."""
    return int(args._data_handler(args) or 0)
