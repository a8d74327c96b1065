"""`wise`: WiSE-FT weight-space ensembling after each task.

At setup (and again at the first task start, in case pretrained weights were
loaded after the model was assembled) the detector's state — parameters and
buffers, BatchNorm statistics included — is stored on the CPU as the anchor.
After a task the detector becomes

    theta = (1 - alpha) * theta_anchor + alpha * theta_finetuned,

exactly the anchor at alpha 0 and exactly the fine-tuned weights at alpha 1.
When the text tower trains too (finetune's `train_text_encoder`, lora's "text" part) its state is
anchored at each task start and interpolated the same way; a frozen tower is left out (no copy).
Integer buffers (BatchNorm batch counters) cannot be interpolated and take the
nearer end's value. The anchor is part of the method's `state_dict`, so
checkpoints hold it (one extra copy of the detector).

Interpolation is per tensor name, so a detector whose names changed since the
anchor was stored is rejected with an error. LoRA settings that change the names
between a task's start and end (`merge_after_task`; `per_task_adapters` unless
the anchor is "previous_task" and lora is listed before wise) are rejected when
the model is built (note that interpolating LoRA factors A and B is not linear
in their product).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from cl_detect.methods.base import ContinualModel, Method, TaskContext
from cl_detect.methods.wise.config import WiseConfig
from cl_detect.models._checkpoint_io import atomic_write_text

State = dict[str, torch.Tensor]


def snapshot(module: nn.Module) -> State:
    """A detached CPU copy of a module's full state (parameters and persistent buffers)."""
    return {name: tensor.detach().to("cpu", copy=True) for name, tensor in module.state_dict().items()}


def interpolate_states(anchor: State, finetuned: State, alpha: float) -> State:
    """(1 - alpha) * anchor + alpha * finetuned, name by name.

    Args:
        anchor: the state at alpha 0.
        finetuned: the state at alpha 1; must have the same names and shapes.
        alpha: coefficient in [0, 1].

    Returns:
        The interpolated state (float tensors keep their dtype; integer tensors
        take the value of the nearer end).
    """
    if anchor.keys() != finetuned.keys():
        missing, new = sorted(anchor.keys() - finetuned.keys()), sorted(finetuned.keys() - anchor.keys())
        raise ValueError(
            f"wise: the detector's tensor names differ from the stored anchor (missing {missing[:3]}, new "
            f"{new[:3]}); this happens when lora adapters are injected, added or merged after the anchor was "
            f"stored: keep one unmerged lora adapter set while wise is used")
    mixed = {}
    for name, start in anchor.items():
        end = finetuned[name]
        if start.shape != end.shape:
            raise ValueError(f"wise: {name} has shape {tuple(end.shape)}, the anchor {tuple(start.shape)}")
        if start.is_floating_point():
            # at least float32 (bf16 weights), never less than the tensor's own precision (float64)
            dtype = torch.promote_types(start.dtype, torch.float32)
            end = end.to(start.device)
            mixed[name] = ((1 - alpha) * start.to(dtype) + alpha * end.to(dtype)).to(start.dtype)
        else:
            mixed[name] = (start if alpha < 0.5 else end).clone()
    return mixed


def wise_method(model: ContinualModel) -> "WiseMethod":
    method = model.method("wise")
    if method is None:
        raise ValueError("the model has no wise method; add 'wise' to the run's methods")
    return method


def interpolate(model: ContinualModel, alpha: float, finetuned: State | None = None,
                finetuned_text: State | None = None) -> None:
    """Load (1 - alpha) * anchor + alpha * finetuned into `model.detector` (and into the text tower
    when wise anchored it, because it trains).

    Args:
        model: a ContinualModel that lists `wise` (it holds the anchor).
        alpha: coefficient in [0, 1].
        finetuned: the fine-tuned detector state; default: the detector's current weights.
        finetuned_text: the fine-tuned text-tower state; default: the tower's current weights.
    """
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    wise = wise_method(model)
    finetuned = snapshot(model.detector) if finetuned is None else finetuned
    model.detector.load_state_dict(interpolate_states(wise.anchor, finetuned, alpha))
    if wise.text_anchor:
        finetuned_text = snapshot(model.text_encoder) if finetuned_text is None else finetuned_text
        # the text caches key on the tower's weights_version, which load_state_dict changes
        model.text_encoder.load_state_dict(interpolate_states(wise.text_anchor, finetuned_text, alpha))


def wise_sweep(model: ContinualModel, alphas: list[float], evaluate_fn: Callable[[ContinualModel], dict]
               ) -> list[dict]:
    """Evaluate the interpolated detector at each coefficient; the detector is restored afterwards.

    Args:
        model: a ContinualModel that lists `wise`, holding the fine-tuned weights.
        alphas: coefficients in [0, 1].
        evaluate_fn: scores the model (e.g. every task test set and retention set).

    Returns:
        One row per coefficient, in order: {"alpha": a, "metrics": evaluate_fn(model)}.
    """
    finetuned = snapshot(model.detector)
    finetuned_text = snapshot(model.text_encoder) if wise_method(model).text_anchor else None
    rows = []
    try:
        for alpha in alphas:
            interpolate(model, alpha, finetuned, finetuned_text)
            rows.append({"alpha": float(alpha), "metrics": evaluate_fn(model)})
    finally:
        model.detector.load_state_dict(finetuned)
        if finetuned_text is not None:
            model.text_encoder.load_state_dict(finetuned_text)
    return rows


def _json_value(value):
    # evaluator statistics may hold numpy scalars/arrays or tensors
    return value.tolist() if hasattr(value, "tolist") else str(value)


def check_adapter_names(methods: list[Method], wise: "WiseMethod") -> None:
    """Reject trainers whose tensor names change between the anchor and a task's end.

    Interpolation is tensor by tensor name. The trainers declare it: `renews_trained_tensors` (lora's
    `merge_after_task` folds each task's adapter into the base weights and drops it) and
    `trains_new_tensors_each_task` (lora's `per_task_adapters` adds adapter tensors every task, which a
    base anchor, or one taken before lora adds them, does not have).
    """
    for method in methods:
        if method.renews_trained_tensors:
            raise ValueError(f"wise cannot be combined with {method.renews_trained_tensors}: after a task the "
                             f"detector's tensors no longer match the anchor's name by name; change that setting "
                             f"or drop wise")
        listed_first = methods.index(method) < methods.index(wise)
        if method.trains_new_tensors_each_task and not (wise.config.anchor == "previous_task" and listed_first):
            raise ValueError(f"wise with {method.trains_new_tensors_each_task} needs wise anchor 'previous_task' "
                             f"and {method.name} listed before wise: every task adds new tensors the anchor "
                             f"lacks unless it is taken again after {method.name} adds them at each task start, "
                             f"so interpolation would fail after the task has trained")


class WiseMethod(Method):
    """WiSE-FT post-processing; see the module docstring."""

    def __init__(self, config: WiseConfig):
        super().__init__(config)
        self.anchor: State = {}
        self.text_anchor: State = {}  # the text tower's, only when it trains
        self.sweep_results: dict[str, list[dict]] = {}  # task name -> sweep rows

    def check_combination(self, methods: list[Method]) -> None:
        check_adapter_names(methods, self)

    def setup(self, model: ContinualModel) -> None:
        self.anchor = snapshot(model.detector)

    def before_task(self, model: ContinualModel, task: TaskContext) -> None:
        if task.index == 0 or self.config.anchor == "previous_task":
            self.anchor = snapshot(model.detector)
            # a trained text tower moves the model too: alpha 0 must give the anchor's text embeddings
            self.text_anchor = snapshot(model.text_encoder) if model.text_tower_trains() else {}

    def after_task(self, model: ContinualModel, task: TaskContext) -> None:
        evaluate_fn = task.extras.get("evaluate_fn")
        if self.config.sweep and evaluate_fn is not None:
            # plain json types: the rows go into checkpoints, which load with weights_only=True
            rows = json.loads(json.dumps(wise_sweep(model, self.config.sweep, evaluate_fn), default=_json_value))
            self.sweep_results[task.name] = rows
            if task.out_dir is not None:
                record = {"task": task.name, "applied_alpha": self.config.alpha, "rows": rows}
                atomic_write_text(Path(task.out_dir) / "wise_sweep.json", json.dumps(record, indent=2))
        interpolate(model, self.config.alpha)

    def get_extra_state(self) -> dict:
        return {"anchor": self.anchor, "text_anchor": self.text_anchor, "sweep_results": self.sweep_results}

    def set_extra_state(self, state: dict) -> None:
        self.anchor = {name: tensor.cpu() for name, tensor in state["anchor"].items()}
        # absent from checkpoints written before the text tower was anchored
        self.text_anchor = {name: tensor.cpu() for name, tensor in state.get("text_anchor", {}).items()}
        self.sweep_results = dict(state["sweep_results"])
