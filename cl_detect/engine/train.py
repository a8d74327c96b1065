"""`train_one_task()`: the whole training loop, in the open.

    losses = model(batch)                 # ContinualModel: detector + methods
    (losses["loss"] / accumulate).backward()
    clip, optimizer.step(), scheduler.step(), ema.update()

AdamW/SGD parameter groups (no decay on norms/biases/logit_scale; the decay scaled
with the total batch by the official rule), warmup then linear or cosine decay, the
official EMA, bf16 autocast on CUDA (on a CPU with `amp_cpu`), gradient clipping
and accumulation, close-mosaic epochs, guards, JSONL + TensorBoard logs, and atomic
checkpoints from which `resume=True` continues bit-exactly.

Ctrl-C (SIGINT) during the loop finishes the optimizer step under way, writes the
checkpoint at once, says where and raises KeyboardInterrupt; a second Ctrl-C stops
at once (`engine/session.py`). The handler is the main thread's only while the loop runs; DataLoader
workers ignore SIGINT (`data.loader.seed_worker`), so the step can still take its
micro-batches. Under torchrun a terminal's Ctrl-C reaches every rank
twice (from the terminal, then from the agent), which stops them at once as before;
`kill -INT` of the agent alone has rank 0 checkpoint its step.
"""
from __future__ import annotations

import dataclasses
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from cl_detect.data.loader import build_train_loader
from cl_detect.data.sampling import MixingSampler
from cl_detect.engine.config import TrainConfig
from cl_detect.engine.distributed import (
    DataParallelForward, broadcast_model, is_distributed, is_main_process, shard_sampler, world_size)
from cl_detect.engine.ema import ModelEMA
from cl_detect.engine.guards import LossGuard, check_batch
from cl_detect.engine.optim import build_optimizer, build_scheduler, parameter_groups, scaled_weight_decay
from cl_detect.engine.runlog import RunLogger, peak_memory_mb
from cl_detect.engine.session import StopOnInterrupt, only_process_in
from cl_detect.engine.state import (
    START_OVER, check_resumed_settings, load_model_state, load_trainer_state, save_trainer_state, set_rng_state)
from cl_detect.models.precision import bf16_autocast


@dataclass
class TrainResult:
    """Outcome of `train_one_task`.

    Args:
        status: "finished" or "interrupted" (stopped by `stop_after_steps`).
        steps: optimizer steps done in total.
        wall_time_s: seconds spent in this call.
        images_per_s: training throughput of this call.
        peak_memory_mb: peak GPU memory (CUDA) or peak RSS (CPU).
        last_losses: the last step's loss parts.
    """

    status: str
    steps: int
    wall_time_s: float
    images_per_s: float
    peak_memory_mb: float
    last_losses: dict


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def train_one_task(model, dataset, config: TrainConfig, out_dir: str | Path, sampler=None, resume: bool = True,
                   stop_after_steps: int | None = None) -> TrainResult:
    """Train `model` (a ContinualModel) on `dataset` (TrainDataset or MixedDataset).

    Args:
        model: detector + text encoder + methods; `model(batch)["loss"]` is minimised.
        dataset: yields augmented items; must support `set_mosaic(bool)`.
        config: the training settings.
        out_dir: logs and `checkpoint.pt` go here.
        sampler: a resumable sampler (default: shuffling over the dataset, seeded).
        resume: continue from `out_dir/checkpoint.pt` when it exists.
        stop_after_steps: stop (checkpointed, status "interrupted") after this many steps.

    Raises:
        ValueError: another process is training in `out_dir` (two runs there would overwrite
            each other's checkpoint and log).
    """
    out_dir = Path(out_dir)
    with only_process_in(out_dir):
        return _train(model, dataset, config, out_dir, sampler, resume, stop_after_steps)


def _train(model, dataset, config: TrainConfig, out_dir: Path, sampler, resume: bool,
           stop_after_steps: int | None) -> TrainResult:
    """`train_one_task`'s loop (arguments as there), with `out_dir` held by this process."""
    device = resolve_device(config.device)
    checkpoint = out_dir / "checkpoint.pt"
    model.to(device).train()
    broadcast_model(model)  # DDP: identical starting weights on every rank, before EMA copies them
    sampler = sampler or MixingSampler([len(dataset)], seed=config.seed)
    # each epoch's optimizer steps (repeat-factor sampling draws another number of images every epoch),
    # per process: under torchrun each of W ranks takes draws // W of them (see engine/distributed.py)
    epoch_draws = [sampler.epoch_length(epoch) // world_size() for epoch in range(config.epochs)]
    epoch_steps = [draws // config.batch_size // config.accumulate for draws in epoch_draws]
    sampler = shard_sampler(sampler)
    if is_distributed():
        model.criterion.world_size = world_size()
    # the classification loss of this task: official BCE, or focal for imbalanced domains
    model.criterion.cls_loss = config.cls_loss
    model.criterion.focal_gamma, model.criterion.focal_alpha = config.focal_gamma, config.focal_alpha
    loader = build_train_loader(dataset, config.batch_size, config.num_workers, sampler=sampler, seed=config.seed)
    steps_per_epoch = epoch_steps[0]
    if steps_per_epoch == 0:
        per_process = f" per process ({world_size()} processes)" if is_distributed() else ""
        raise ValueError(f"{epoch_draws[0]} training images{per_process} is less than one optimizer "
                         f"step of batch_size x accumulate = {config.batch_size} x {config.accumulate} = "
                         f"{config.batch_size * config.accumulate} images; lower accumulate or batch_size")
    total_steps = sum(epoch_steps)
    warmup = min(max(round(config.warmup_epochs * steps_per_epoch), config.warmup_min_steps), total_steps // 2)
    weight_decay = scaled_weight_decay(config.weight_decay, config.batch_size * config.accumulate * world_size())
    optimizer = build_optimizer(parameter_groups(model.named_trainable_parameters(), config.lr, weight_decay),
                                config.optimizer, config.lr)
    scheduler = build_scheduler(optimizer, total_steps, warmup, config.schedule, config.final_lr_factor)
    averaged = _averaged_modules(model)
    ema = ModelEMA(averaged, config.ema_momentum, config.ema_gamma) if config.ema else None
    guard, logger = LossGuard(config.guard_patience, config.accumulate), RunLogger(out_dir, enabled=is_main_process())
    forward = DataParallelForward(model)
    progress = {"epoch": 0, "step": 0, "batches_in_epoch": 0, "status": "running"}
    if resume and checkpoint.exists():
        saved = load_trainer_state(checkpoint)
        check_resumed_settings(saved.get("config"), dataclasses.asdict(config), checkpoint)
        try:
            load_model_state(model, saved["model"])
        except ValueError as err:  # the same settings, but another model or method list
            raise ValueError(f"{checkpoint}: {err}; it holds a run of another model or method list. "
                             f"{START_OVER}") from None
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        if ema is not None:
            try:
                ema.load_state_dict(saved["ema"])
            except RuntimeError as err:  # e.g. written before the EMA covered a training text tower
                raise ValueError(f"{checkpoint}: its EMA does not fit this model ({str(err).splitlines()[0]}); it was "
                                 f"written by another version or setting: delete it to train this task from its "
                                 f"start") from None
        sampler.load_state_dict(saved["sampler"])
        set_rng_state(saved["rng"])
        progress, guard.stuck_steps = saved["progress"], saved["guard_steps"]
        logger.start(progress["step"])  # drop what an earlier session logged after this checkpoint
    already_stopped = stop_after_steps is not None and progress["step"] >= stop_after_steps  # no extra step
    if progress["status"] == "finished" or already_stopped:
        logger.close()
        status = "finished" if progress["status"] == "finished" else "interrupted"
        return TrainResult(status, progress["step"], 0.0, 0.0, peak_memory_mb(device), {})

    def save(status: str) -> None:
        progress["status"] = status
        if not is_main_process():
            return
        # loader workers may have run the sampler ahead, even into the next epoch: save what the loop consumed
        consumed = progress["batches_in_epoch"] * config.batch_size
        sampler_state = sampler.state_dict(num_consumed=consumed, epoch=progress["epoch"])
        save_trainer_state(checkpoint, model=model, optimizer=optimizer, scheduler=scheduler, ema=ema,
                           sampler_state=sampler_state, progress=progress,
                           guard_steps=guard.stuck_steps, config=dataclasses.asdict(config))

    autocast = bf16_autocast(device, cuda=config.amp, cpu=config.amp and config.amp_cpu)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    start, images_seen, last = time.perf_counter(), 0, {}
    window_start, window_images = start, 0
    with StopOnInterrupt() as interrupt:  # Ctrl-C: finish the step, checkpoint, then stop
        for epoch in range(progress["epoch"], config.epochs):
            dataset.set_mosaic(config.mosaic and epoch < config.epochs - config.close_mosaic_epochs)
            model.hook("before_epoch", epoch)
            if progress["batches_in_epoch"] == 0:
                sampler.set_epoch(epoch)
            bar = tqdm(loader, total=epoch_steps[epoch] * config.accumulate - progress["batches_in_epoch"],
                       desc=f"epoch {epoch + 1}/{config.epochs}", disable=None, leave=False)
            for batch in bar:
                check_batch(batch)
                # DDP: all-reduce gradients only on the micro-batch that completes a step
                syncing = (progress["batches_in_epoch"] + 1) % config.accumulate == 0
                with nullcontext() if syncing else forward.no_sync():
                    with autocast:
                        losses = forward(batch)
                    (losses["loss"] / config.accumulate).backward()
                progress["batches_in_epoch"] += 1
                images_seen += len(batch["images"])
                window_images += len(batch["images"])
                if progress["batches_in_epoch"] % config.accumulate:
                    guard(losses, progress["step"], batch)
                    continue
                # the norm is computed even without clipping: a non-finite gradient must stop
                # training before the optimizer writes it into the weights; read with the losses in one sync
                grad_norm = (torch.nn.utils.clip_grad_norm_(params, config.grad_clip) if config.grad_clip else
                             torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None]))
                guard(losses, progress["step"], batch, grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step_lr = optimizer.param_groups[0]["lr"]  # the LR this step used, logged below
                scheduler.step()
                forward.sync_buffers()
                if ema is not None:
                    ema.update(averaged)
                progress["step"] += 1
                model.hook("after_step", progress["step"])
                # read when logged: no sync
                last = {k: v.detach() for k, v in losses.items() if k.startswith("loss")}
                if progress["step"] % config.log_every == 0:
                    last = _loss_values(losses)
                    now = time.perf_counter()
                    row = {"step": progress["step"], "epoch": epoch, **last, "lr": step_lr,
                           "num_pos": int(losses.get("num_pos", 0)),
                           "images_per_s": window_images / (now - window_start), "memory_mb": peak_memory_mb(device)}
                    logger.log(row, progress["step"])
                    bar.set_postfix(loss=f"{last['loss']:.3f}")
                    window_start, window_images = now, 0
                if config.checkpoint_every_steps and progress["step"] % config.checkpoint_every_steps == 0:
                    save("running")
                if stop_after_steps is not None and progress["step"] >= stop_after_steps:
                    save("interrupted")
                    logger.close()
                    return _result("interrupted", progress, start, images_seen, device, last)
                if interrupt.requested:  # checked after the step: saving needs no further batch
                    _stop_on_interrupt(save, logger, progress, checkpoint)
            optimizer.zero_grad(set_to_none=True)  # drop a partial accumulation at the epoch end
            progress.update(epoch=epoch + 1, batches_in_epoch=0)
            save("running")
            if interrupt.requested:  # during the micro-batches after the epoch's last step
                _stop_on_interrupt(save, logger, progress, checkpoint)
    if ema is not None:
        averaged.load_state_dict(ema.module.state_dict())
    save("finished")
    logger.close()
    return _result("finished", progress, start, images_seen, device, last)


def _stop_on_interrupt(save, logger: RunLogger, progress: dict, checkpoint: Path) -> None:
    """Checkpoint the step just done, say where, and raise KeyboardInterrupt."""
    save("interrupted")
    logger.close()
    print(f"stopped by Ctrl-C after step {progress['step']}; checkpoint written to {checkpoint}",
          file=sys.stderr, flush=True)
    raise KeyboardInterrupt


def _averaged_modules(model) -> torch.nn.Module:
    """What the EMA averages: the detector, plus the text tower when it trains at some epoch
    (the official EMA covers the whole model, so the tower must not end on its last raw step)."""
    if not any(name.startswith("text_encoder.") for name, _, _ in model.named_trainable_parameters()):
        return model.detector
    return torch.nn.ModuleDict({"detector": model.detector, "text_encoder": model.text_encoder})


def _loss_values(losses: dict) -> dict[str, float]:
    """The loss parts as floats (one host-device sync)."""
    keys = [k for k in losses if k.startswith("loss")]
    if not keys or not torch.is_tensor(losses[keys[0]]):  # nothing, or already read at a log step
        return {k: float(losses[k]) for k in keys}
    return dict(zip(keys, torch.stack([losses[k].detach().float() for k in keys]).tolist()))


def _result(status: str, progress: dict, start: float, images: int, device, last: dict) -> TrainResult:
    elapsed = time.perf_counter() - start
    return TrainResult(status, progress["step"], elapsed, images / max(elapsed, 1e-9), peak_memory_mb(device),
                       _loss_values(last))
