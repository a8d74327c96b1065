"""peft LoRA layers inside the detector and text tower: choose targets, inject, merge, remove.

peft's `inject_adapter_in_model` wraps each chosen `nn.Conv2d` / `nn.Linear` in a
LoRA layer in place (the module keeps its name; its weight moves to
`<name>.base_layer.weight`). No `PeftModel` wraps the detector, so the detector's
own forward and attribute names are untouched.
"""
from __future__ import annotations

import re
import warnings

from torch import nn

from cl_detect.methods.lora.config import LoraMethodConfig

ROOTS = ("detector", "text_encoder")


def _lora_layer_type() -> type:
    # peft is imported on first use: it costs seconds, and every CLI start imports the methods
    from peft.tuners.lora import LoraLayer
    return LoraLayer
_PART_PREFIX = {"backbone": "detector.backbone.", "neck": "detector.neck.", "head": "detector.head.",
                "text": "text_encoder."}
_KEY = re.compile(r"^(detector|text_encoder)\.(.+)\.lora_A\.([^.]+)\.weight$")


def target_layers(model: nn.Module, config: LoraMethodConfig) -> dict[str, list[str]]:
    """Per root ("detector", "text_encoder"), the names (relative to it) of the layers to adapt."""
    kinds = tuple({"conv": nn.Conv2d, "linear": nn.Linear}[t] for t in config.layer_types)
    prefixes = tuple(_PART_PREFIX[p] for p in config.parts)
    # nn.MultiheadAttention reads out_proj.weight directly (never calls the module), so an adapter
    # there would be silently ignored: leave those projections out.
    skipped = {f"{name}.out_proj" for name, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)}
    # grouped and depthwise convs (timm backbones such as MobileNet, EfficientNet, ConvNeXt): peft needs a
    # rank divisible by the groups and cannot merge into them, so merge() would fail after training
    skipped |= {name for name, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.groups > 1}
    targets: dict[str, list[str]] = {root: [] for root in ROOTS}
    for name, module in model.named_modules():
        # a layer that already carries adapters is targeted again (peft adds the new adapter to it)
        layer = module.get_base_layer() if isinstance(module, _lora_layer_type()) else module
        if (not isinstance(layer, kinds) or not name.startswith(prefixes) or name in skipped
                or ".lora_" in name or name.endswith(".base_layer")):
            continue
        if config.include and not any(re.search(p, name) for p in config.include):
            continue
        if any(re.search(p, name) for p in config.exclude):
            continue
        root, relative = name.split(".", 1)
        targets[root].append(relative)
    if not any(targets.values()):
        raise ValueError(f"lora: no {'/'.join(config.layer_types)} layer in parts {list(config.parts)} matches "
                         f"include={list(config.include)} exclude={list(config.exclude)}")
    return targets


def inject(root: nn.Module, names: list[str], adapter: str, config: LoraMethodConfig) -> None:
    """Add adapter `adapter` to exactly the layers `names` of `root` (wrapping them if needed)."""
    if not names:
        return
    import peft

    lora_config = peft.LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout, bias="none",
                                  target_modules="^(" + "|".join(re.escape(n) for n in names) + ")$")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*peft_config.*")  # we track adapters ourselves
        peft.inject_adapter_in_model(lora_config, root, adapter_name=adapter)
    if hasattr(root, "peft_config"):
        del root.peft_config  # peft's bookkeeping attribute; our config lives in the method


def lora_layers(root: nn.Module) -> list[tuple[str, nn.Module]]:
    layer_type = _lora_layer_type()
    return [(name, m) for name, m in root.named_modules() if isinstance(m, layer_type)]


def adapter_names(root: nn.Module) -> set[str]:
    return {adapter for _, layer in lora_layers(root) for adapter in layer.lora_A}


def adapters_in_keys(keys) -> dict[str, dict[str, list[str]]]:
    """From state-dict keys: adapter -> root -> adapted layer names (relative to the root)."""
    found: dict[str, dict[str, list[str]]] = {}
    for key in keys:
        match = _KEY.match(key)
        if match:
            root, layer, adapter = match.groups()
            found.setdefault(adapter, {r: [] for r in ROOTS})[root].append(layer)
    return found


def adapters_in_model(model: nn.Module) -> dict[str, dict[str, list[str]]]:
    return adapters_in_keys(model.state_dict().keys())


def activate(root: nn.Module, adapter: str) -> None:
    for _, layer in lora_layers(root):
        if adapter in layer.lora_A:
            layer.set_adapter(adapter)


def _replace(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def remove(root: nn.Module, adapter: str, merge: bool) -> None:
    """Drop adapter `adapter` from every layer, first folding it into the base weight if `merge`.

    Layers left without adapters are unwrapped, so once every adapter is gone the
    module tree and state-dict keys are the plain detector's again.
    """
    for name, layer in lora_layers(root):
        if adapter not in layer.lora_A:
            continue
        if merge:
            layer.merge(adapter_names=[adapter])
            # the delta now lives in the base weight; forget the merged flag so the
            # remaining adapters keep being applied in forward
            layer.merged_adapters.remove(adapter)
        if set(layer.lora_A) == {adapter}:
            _replace(root, name, layer.get_base_layer())
        else:
            layer.delete_adapter(adapter)
