"""Post-processing time per image: candidates selected for the whole batch at once vs image by image.

    python benchmarks/postprocess_speed.py --batch 8
    python benchmarks/postprocess_speed.py --batch 32 --device cuda

Head outputs for 640x640 inputs (8400 anchors) and 80 prompts go through
`cl_detect.models.predict.postprocess` with the official test settings, with
`batched=True` (one selection for the batch) and `batched=False` (image by image;
the CPU default), and the script prints the ms per image of each and their ratio. Two score regimes:

- dense: logits ~ N(0, 1), so every (anchor, class) pair passes the 0.001
  threshold and the 30,000-candidate cut applies (an untrained head);
- sparse: logits ~ N(-12, 2), so about 0.5% pass, some 3,600 candidates per
  image (a trained detector on an ordinary image).

Run it on two commits to see what a change to `postprocess` bought; the JSON
records the commit. Results go to benchmarks/results/postprocess_speed_<device>.json.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import torch

from cl_detect.data.preprocess import LetterboxInfo
from cl_detect.models.predict import postprocess

from inference_speed import RESULTS, environment, time_forward

REGIMES = {"dense": (0.0, 1.0), "sparse": (-12.0, 2.0)}
SHAPES, STRIDES = [(80, 80), (40, 40), (20, 20)], (8, 16, 32)


def head_outputs(batch: int, num_classes: int, regime: str, device: torch.device, seed: int = 0):
    """Per-level logits and box distances (stride units) like a 640x640 forward's."""
    generator = torch.Generator().manual_seed(seed)
    mean, std = REGIMES[regime]
    logits = [(torch.randn(batch, num_classes, h, w, generator=generator) * std + mean).to(device) for h, w in SHAPES]
    boxes = [(torch.rand(batch, 4, h, w, generator=generator) * 6).to(device) for h, w in SHAPES]
    return logits, boxes


def commit() -> str:
    try:
        return subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--num-classes", type=int, default=80)
    parser.add_argument("--regimes", nargs="+", default=list(REGIMES), choices=list(REGIMES))
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    infos = [LetterboxInfo((1.0, 0.75), 80, 0, (480, 640))] * args.batch  # a 640x480 image letterboxed to 640
    rows = []
    for regime in args.regimes:
        logits, boxes = head_outputs(args.batch, args.num_classes, regime, device)
        batched, alone = (statistics.median(time_forward(
            lambda: postprocess(logits, boxes, STRIDES, infos, batched=flag), device, args.warmup, args.iters))
            for flag in (True, False))
        candidates = sum(int((x.sigmoid() > 0.001).sum()) for x in logits) / args.batch
        row = {"regime": regime, "batch": args.batch, "candidates_per_image": candidates,
               "batched_ms_per_image": batched * 1e3 / args.batch, "alone_ms_per_image": alone * 1e3 / args.batch,
               "alone_vs_batched": alone / batched}
        rows.append(row)
        print(f"{regime:<7} {candidates:9.0f} candidates/image  batched {row['batched_ms_per_image']:8.2f} ms/image  "
              f"one at a time {row['alone_ms_per_image']:8.2f} ms/image  ({row['alone_vs_batched']:.2f}x)")
    out = Path(args.out) if args.out else RESULTS / f"postprocess_speed_{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/postprocess_speed.py " + " ".join(sys.argv[1:] if argv is None else argv)
    out.write_text(json.dumps({"benchmark": "postprocess_speed", "command": command, "commit": commit(),
                               **environment(device), "results": rows}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
