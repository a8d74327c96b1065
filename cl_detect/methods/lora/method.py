"""`lora`: low-rank adapters (peft) on chosen conv and linear layers; only they train.

The base weights stay frozen, so the pre-trained detector is recoverable by
dropping the adapters, and an adapter set is a small file of its own
(`save_adapters` / `load_adapters`). With `per_task_adapters` every task gets
its own named adapter `task{index}`; `merge()` folds the active adapter into the
base weights for inference (same outputs, no adapter cost).

Adapters are injected into `model.detector` / `model.text_encoder` in place, so
they are part of `model.state_dict()` and of trainer checkpoints. Loading a state
dict into a model whose adapter set differs (a fresh model, a merged checkpoint)
first rebuilds the adapters the state dict names.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

import torch
from torch import nn

from cl_detect.methods.base import ContinualModel, Method, TaskContext
from cl_detect.methods.lora import _layers
from cl_detect.methods.lora.config import LoraMethodConfig
from cl_detect.models._checkpoint_io import atomic_save, read_checkpoint

logger = logging.getLogger(__name__)

DEFAULT_ADAPTER = "default"
_OWN = ("detector.", "text_encoder.")  # where this method's adapters live (not in a teacher's copy)


class LoraMethod(Method):
    is_trainer = True

    def __init__(self, config: LoraMethodConfig):
        super().__init__(config)
        self.active_adapter: str | None = None
        self._model: ContinualModel | None = None
        if config.merge_after_task:
            self.renews_trained_tensors = (
                "lora's merge_after_task (it folds each task's adapter into the base weights and drops it, and "
                "the next task starts a fresh adapter; set merge_after_task false and merge after the run instead)")
        if config.per_task_adapters:
            self.trains_new_tensors_each_task = (
                "lora's per_task_adapters (every task trains a new adapter task0, task1, ..., the earlier ones "
                "kept frozen; set per_task_adapters false)")

    @property
    def model(self) -> ContinualModel:
        if self._model is None:
            raise RuntimeError("lora: the method is not attached to a model (build a ContinualModel with it)")
        return self._model

    def _roots(self, model: nn.Module) -> dict[str, nn.Module]:
        return {"detector": model.detector, "text_encoder": model.text_encoder}

    def trains_text_tower(self) -> bool:
        return "text" in self.config.parts

    def setup(self, model: ContinualModel) -> None:
        # a plain reference, not a submodule: registering it would make the module tree cyclic
        object.__setattr__(self, "_model", model)
        model.register_load_state_dict_pre_hook(self._rebuild_before_load)
        if not self.config.per_task_adapters:
            self.add_adapter(model, DEFAULT_ADAPTER)

    def add_adapter(self, model: ContinualModel, name: str) -> None:
        """Inject adapter `name` into the configured layers and make it the active one."""
        if name not in self.adapters(model):
            for root_name, names in _layers.target_layers(model, self.config).items():
                _layers.inject(self._roots(model)[root_name], names, name, self.config)
        self.set_active_adapter(name)

    def adapters(self, model: ContinualModel | None = None) -> list[str]:
        """Names of the adapters currently in the model."""
        model = model or self.model
        return sorted(set().union(*(_layers.adapter_names(root) for root in self._roots(model).values())))

    def set_active_adapter(self, name: str) -> None:
        """Use (and train) adapter `name`; the others stay in the model, inactive and frozen."""
        model = self.model
        if name not in self.adapters(model):
            raise ValueError(f"lora: no adapter {name!r}; the model has {self.adapters(model)}")
        for root in self._roots(model).values():
            _layers.activate(root, name)
        self.active_adapter = name
        # switching changes the text tower's outputs without writing a weight, so the text caches
        # (keyed on weight versions) would keep serving the previous adapter's embeddings
        model.clear_text_cache()
        if hasattr(model.text_encoder, "clear_cache"):
            model.text_encoder.clear_cache()
        model.mark_trainable()

    def mark_trainable(self, model: ContinualModel) -> None:
        marks = (f".lora_A.{self.active_adapter}.", f".lora_B.{self.active_adapter}.")
        count = 0
        for name, param in model.named_parameters():
            # only the student's adapters: a teacher copied after injection (distill) has them too
            if name.startswith(_OWN) and any(mark in name for mark in marks):
                param.requires_grad_(True)
                count += param.numel()
        logger.info("lora: adapter %s trains %d parameters", self.active_adapter, count)

    def before_task(self, model: ContinualModel, task: TaskContext) -> None:
        self.add_adapter(model, f"task{task.index}" if self.config.per_task_adapters else DEFAULT_ADAPTER)

    def after_task(self, model: ContinualModel, task: TaskContext) -> None:
        if self.config.merge_after_task and self.active_adapter is not None:
            if task.out_dir is not None:
                self.save_adapters(Path(task.out_dir) / f"lora_{self.active_adapter}.safetensors")
            self.merge()

    def fold_into_detector(self, model: ContinualModel) -> None:
        """The detector as it computes now: the active adapter merged, inactive ones dropped unmerged
        (they are not applied in forward, so folding them in too would give a model that never ran)."""
        if self.active_adapter is not None:
            active = self.active_adapter
            for name in self.adapters(model):
                if name != active:
                    for root in self._roots(model).values():
                        _layers.remove(root, name, merge=False)
            self.merge()

    def merge(self) -> None:
        """Fold the active adapter into the base weights and drop it (for inference/export).

        When no adapter is left the detector has its plain layout again, so
        `official_state_dict` and every other tool see an ordinary detector.
        """
        model = self.model
        if self.active_adapter is None:
            raise ValueError("lora: there is no active adapter to merge")
        for root in self._roots(model).values():
            _layers.remove(root, self.active_adapter, merge=True)
        remaining = self.adapters(model)
        self.active_adapter = None
        if remaining:
            self.set_active_adapter(remaining[-1])
        else:
            model.mark_trainable()

    # ---- adapter files -------------------------------------------------------------------------------
    def adapter_state_dict(self, name: str | None = None) -> dict[str, torch.Tensor]:
        """Adapter tensors (model state-dict names), of adapter `name` or of all adapters."""
        marks = (".lora_A.", ".lora_B.") if name is None else (f".lora_A.{name}.", f".lora_B.{name}.")
        return {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()
                if k.startswith(_OWN) and any(mark in k for mark in marks)}

    def save_adapters(self, path: str | Path, name: str | None = None) -> Path:
        """Write the adapters (all, or only `name`) without base weights, atomically.

        A `.safetensors` path is written with safetensors (config in its metadata),
        anything else with torch.save({"adapters": ..., "meta": ...}).
        """
        path = Path(path)
        tensors = self.adapter_state_dict(name)
        if not tensors:
            raise ValueError(f"lora: nothing to save, the model has no adapter {name or ''}".rstrip())
        meta = {"config": json.dumps(self.config.__dict__), "active": self.active_adapter or ""}
        if path.suffix != ".safetensors":
            atomic_save({"adapters": tensors, "meta": meta}, path)
            return path
        from safetensors.torch import save_file
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata=meta)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return path

    def load_adapters(self, path: str | Path) -> list[str]:
        """Load adapters written by `save_adapters` (added to the model if missing).

        Returns:
            The adapter names loaded; the file's active adapter (or the last one) becomes active.
        """
        path = Path(path)
        if path.suffix == ".safetensors":
            from safetensors import safe_open
            with safe_open(str(path), framework="pt") as handle:
                tensors = {k: handle.get_tensor(k) for k in handle.keys()}
                meta = handle.metadata() or {}
        else:
            saved = read_checkpoint(path)
            tensors, meta = saved["adapters"], saved.get("meta", {})
        found = _layers.adapters_in_keys(tensors)
        if not found:
            raise ValueError(f"lora: {path} holds no LoRA adapter tensors")
        # the update is scaled by alpha / rank: the same tensors under another alpha are another model
        saved_alpha = json.loads(meta["config"]).get("alpha") if meta.get("config") else None
        if saved_alpha is not None and float(saved_alpha) != self.config.alpha:
            raise ValueError(f"lora: {path} holds adapters trained with alpha {saved_alpha}, this method is "
                             f"configured with alpha {self.config.alpha} (the update is scaled by alpha / rank, so "
                             f"they would compute another model); build the method with alpha={saved_alpha}")
        model = self.model
        for name, layers in found.items():
            self._inject_layers(model, name, layers, tensors)
        missing, unexpected = model.load_state_dict(tensors, strict=False)
        expected = {k for k in model.state_dict()
                    if k.startswith(_OWN) and any(f".lora_{ab}.{n}." in k for n in found for ab in "AB")}
        if unexpected or expected - set(tensors):
            raise ValueError(f"lora: {path} does not fit this model: unexpected {unexpected[:5]}, "
                             f"missing {sorted(expected - set(tensors))[:5]}")
        active = meta.get("active") if meta.get("active") in found else sorted(found)[-1]
        self.set_active_adapter(active)
        return sorted(found)

    def _inject_layers(self, model: ContinualModel, name: str, layers: dict[str, list[str]],
                       tensors: dict[str, torch.Tensor]) -> None:
        """Add adapter `name` on exactly `layers`, checking its rank against the config."""
        rank = next(v.shape[0] for k, v in tensors.items() if f".lora_A.{name}." in k)
        if rank != self.config.rank:
            raise ValueError(f"lora: adapter {name!r} has rank {rank}, this method is configured with rank "
                             f"{self.config.rank}; build the method with rank={rank}")
        for root_name, names in layers.items():
            _layers.inject(self._roots(model)[root_name], names, name, self.config)

    # ---- checkpoints --------------------------------------------------------------------------------
    def get_extra_state(self) -> dict:
        return {"active_adapter": self.active_adapter}

    def set_extra_state(self, state: dict) -> None:
        self.active_adapter = state["active_adapter"]

    def _rebuild_before_load(self, model, state_dict, prefix, *args) -> None:
        """Make the model's adapter set the one `state_dict` holds, so the load fits."""
        keys = [k[len(prefix):] for k in state_dict if k.startswith(prefix)]
        wanted = _layers.adapters_in_keys(keys)
        if _as_sets(wanted) == _as_sets(_layers.adapters_in_model(model)):
            return
        for name in self.adapters(model):
            for root in self._roots(model).values():
                _layers.remove(root, name, merge=False)
        tensors = {k[len(prefix):]: state_dict[k] for k in state_dict if k.startswith(prefix) and ".lora_A." in k}
        for name, layers in wanted.items():
            self._inject_layers(model, name, layers, tensors)
        index = next(i for i, m in enumerate(model.methods) if m is self)
        extra = state_dict.get(f"{prefix}methods.{index}._extra_state", {})
        self.active_adapter = extra.get("active_adapter") if wanted else None
        if self.active_adapter is not None:
            for root in self._roots(model).values():
                _layers.activate(root, self.active_adapter)
        model.mark_trainable()


def _as_sets(adapters: dict[str, dict[str, list[str]]]) -> dict[str, dict[str, set[str]]]:
    return {name: {root: set(layers) for root, layers in roots.items()} for name, roots in adapters.items()}
