"""Where a fine-tuning step's time goes: torch.profiler over full steps, grouped by phase and operator.

    python benchmarks/profile_train_step.py --size t --image-size 320 --batch 16
    python benchmarks/profile_train_step.py --size s --image-size 640 --batch 32 --device cuda
    python benchmarks/profile_train_step.py --size s --image-size 640 --batch 2 --methods finetune distill

One step as the trainer runs it: embed the prompts (cached frozen tower), forward + official
loss, backward, gradient clipping + AdamW, EMA update, on a uint8 batch with 80 prompts per image
(`train_speed.make_batch`). Prints the share of each phase and of the top operators (self time,
CPU or CUDA) and writes them as JSON under benchmarks/results/. With `distill` among the methods
the teacher's forward is its own phase, "distill.teacher", inside forward+loss.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from cl_detect import create_detector
from cl_detect.engine.ema import ModelEMA
from cl_detect.methods import ContinualModel, TaskContext, create_method
from cl_detect.models.precision import bf16_autocast

from inference_speed import RESULTS, environment, sync
from train_speed import TableTextEncoder, make_batch, method_spec

PHASES = ("forward+loss", "backward", "clip+adamw", "ema")  # one after the other: they make up a step
NESTED = ("distill.teacher",)  # inside forward+loss: the range distill names its teacher's forward


def profile_steps(size: str, image_size: int, batch_size: int, device: torch.device, steps: int,
                  methods: tuple[str, ...] = ("finetune",), cpu_bf16: bool = False) -> dict:
    detector = create_detector(f"yolo_world_v2_{size}")
    model = ContinualModel(detector, TableTextEncoder(detector.config.text_dim),
                           [create_method(*method_spec(spec)) for spec in methods])
    model = model.to(device).train()
    batch = make_batch(batch_size, image_size, 80, torch.device("cpu"))
    batch["images"] = (batch["images"] * 255).round().to(torch.uint8)  # as the loader yields them
    model.hook("before_task", TaskContext(index=0, name="profile", vocabulary=tuple(batch["texts"][0])))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer, ema = torch.optim.AdamW(params, lr=1e-4), ModelEMA(model.detector, 1e-4, 2000.0)
    bf16 = device.type == "cuda" or cpu_bf16
    autocast = bf16_autocast(device, cuda=bf16, cpu=bf16)

    def step():
        with record_function("forward+loss"), autocast:
            loss = model(batch)["loss"]
        with record_function("backward"):
            loss.backward()
        with record_function("clip+adamw"):
            torch.nn.utils.clip_grad_norm_(params, 10.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        with record_function("ema"):
            ema.update(model.detector)

    for _ in range(2):
        step()
    sync(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        sync(device)
    cuda = device.type == "cuda"
    events = prof.key_averages()
    # phases: host time (on CUDA also the device time of the kernels each one launched)
    phases = {e.key: {"cpu_ms": e.cpu_time_total / steps / 1e3,
                      **({"device_ms": e.device_time_total / steps / 1e3} if cuda else {})}
              for e in events if e.key in PHASES + NESTED}
    total_self = sum((e.self_device_time_total if cuda else e.self_cpu_time_total) for e in events)
    top = sorted(events, key=lambda e: e.self_device_time_total if cuda else e.self_cpu_time_total, reverse=True)
    operators = [{"name": e.key, "share": (e.self_device_time_total if cuda else e.self_cpu_time_total) / total_self,
                  "calls_per_step": e.count / steps} for e in top[:15] if e.key not in PHASES + NESTED]
    return {"size": size, "methods": list(methods), "bf16_autocast": bf16, "image_size": image_size,
            "batch": batch_size, "steps": steps,
            "phases_per_step": phases, "top_operators_self_time": operators}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="t")
    parser.add_argument("--image-size", type=int, default=320)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--methods", nargs="+", default=["finetune"],
                        help="methods of the model, with options as in train_speed.py (distill:compile_teacher=true)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--cpu-bf16", action="store_true", help="bf16 autocast on a CPU too (TrainConfig.amp_cpu)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    result = profile_steps(args.size, args.image_size, args.batch, device, args.steps, tuple(args.methods),
                           args.cpu_bf16)
    key = "device_ms" if device.type == "cuda" else "cpu_ms"
    total = sum(phase[key] for name, phase in result["phases_per_step"].items() if name in PHASES)
    for name, phase in result["phases_per_step"].items():
        print(f"{name:<14} {phase[key]:9.1f} ms/step ({key})  {phase[key] / total:6.1%}")
    for row in result["top_operators_self_time"]:
        print(f"  {row['name']:<44} {row['share']:6.1%}  {row['calls_per_step']:7.0f} calls/step")
    out = Path(args.out) if args.out else RESULTS / f"profile_train_step_{args.size}_{device.type}.json"
    command = "python benchmarks/profile_train_step.py " + " ".join(sys.argv[1:] if argv is None else argv)
    out.write_text(json.dumps({"benchmark": "profile_train_step", "command": command, **environment(device),
                               **result}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
