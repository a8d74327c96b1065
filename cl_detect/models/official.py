"""Load and save official YOLO-World v2 checkpoints (mmyolo `ckpt["state_dict"]` layout).

    from cl_detect import load_official_checkpoint
    detector, text_encoder = load_official_checkpoint("yolo_world_v2_s_....pth")

The size is inferred from tensor shapes; the CLIP text tower carried in the
checkpoint (HuggingFace `CLIPTextModelWithProjection` names) becomes an open_clip
text encoder. Prompt-tuned checkpoints (class `embeddings`, no text tower) give a
`FixedTextEmbeddings` instead, their MLP adapter (`adapter.*`) applied when they
have one. Nothing is loaded silently: a transfer report is printed, and shape
mismatches and detector tensors the model lacks raise.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from cl_detect.models._checkpoint_io import atomic_save, read_checkpoint
from cl_detect.models.yolo_world import DetectorConfig, YOLOWorldDetector

logger = logging.getLogger(__name__)

PREFIXES = (("backbone.image_model.", "backbone."), ("neck.", "neck."), ("bbox_head.head_module.", "head."))
TEXT_PREFIX = "backbone.text_model.model."
IGNORED_SUFFIXES = ("embeddings.position_ids",)
# the MLP adapter of an official prompt-tuned detector trained with use_mlp_adapter=True
ADAPTER_KEYS = ("adapter.0.weight", "adapter.0.bias", "adapter.2.weight", "adapter.2.bias")
_DEEPEN_BY_STAGE1_BLOCKS = {1: 0.33, 2: 0.67, 3: 1.0}


class FixedTextEmbeddings(nn.Module):
    """Class embeddings of a prompt-tuned checkpoint used as the text encoder.

    Calling it with a vocabulary returns the stored (N, D) embeddings as they are:
    the official prompt-tuned model feeds them to the neck un-normalised (the head
    normalises them itself). The vocabulary must have the N classes they were tuned for.
    """

    def __init__(self, embeddings: torch.Tensor):
        super().__init__()
        self.register_buffer("embeddings", embeddings.float().clone())
        self.dim = embeddings.shape[-1]

    def forward(self, texts: list[str]) -> torch.Tensor:
        if len(texts) != len(self.embeddings):
            raise ValueError(f"this prompt-tuned checkpoint holds {len(self.embeddings)} class embeddings, "
                             f"got {len(texts)} texts; pass its class names in the order it was tuned with")
        return self.embeddings.clone()


def official_to_cl_detect(key: str) -> str | None:
    """Map an official detector key to this implementation (None: not a detector key)."""
    for official, ours in PREFIXES:
        if key.startswith(official):
            return ours + key[len(official):]
    return None


def cl_detect_to_official(key: str) -> str:
    for official, ours in PREFIXES:
        if key.startswith(ours):
            return official + key[len(ours):]
    raise KeyError(f"{key} has no official name")


def _unwrap(src) -> dict[str, torch.Tensor]:
    """The state dict in `src` (a path, `{'state_dict': ...}` or a bare state dict), `module.` stripped."""
    if isinstance(src, (str, Path)):
        src = read_checkpoint(src)
    if isinstance(src, dict) and "state_dict" in src and isinstance(src["state_dict"], dict):
        src = src["state_dict"]
    expected = "expected a checkpoint path, {'state_dict': ...} or a state dict of tensors"
    if not isinstance(src, dict):
        raise ValueError(f"{expected}, got a {type(src).__name__}")
    not_tensors = [k for k, v in src.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        if {"model", "optimizer", "progress"} <= set(src):
            hint = ("this is a cl_detect training state (for resuming), not a model: give the model file the "
                    "run writes with save_model")
        else:
            nested = [k for k in not_tensors if isinstance(src[k], dict)]
            hint = f"if the weights are the state dict under {nested[0]!r}, pass checkpoint[{nested[0]!r}]" if nested \
                else "pass the detector's state dict"
        raise ValueError(f"{expected}: {len(not_tensors)} of its {len(src)} entries are not tensors "
                         f"({not_tensors[:5]}) and none is 'state_dict'; {hint}")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in src.items()}


def infer_config(state_dict: dict[str, torch.Tensor], **overrides) -> DetectorConfig:
    """Recover the architecture of an official-layout state dict from its shapes."""
    try:
        stem = state_dict["backbone.image_model.stem.conv.weight"]
        stage4 = state_dict["backbone.image_model.stage4.0.conv.weight"]
        cls_last = state_dict["bbox_head.head_module.cls_preds.0.2.weight"]
        cls_first = state_dict["bbox_head.head_module.cls_preds.0.0.conv.weight"]
    except KeyError as err:
        hint = ""
        if any(k.endswith("head.cls_preds.0.2.weight") and not k.startswith("bbox_head.") for k in state_dict):
            hint = ("; its keys are cl_detect module names (a detector's own state_dict): load them with "
                    "detector.load_state_dict, or save the detector with cl_detect.models.checkpoint.save_model")
        raise ValueError(f"not a YOLO-World checkpoint: missing {err.args[0]}{hint}") from None
    widen = stem.shape[0] / 64
    stage1_blocks = len({k.split(".")[5] for k in state_dict if k.startswith("backbone.image_model.stage1.1.blocks.")})
    if stage1_blocks not in _DEEPEN_BY_STAGE1_BLOCKS:
        raise ValueError(f"unsupported depth: {stage1_blocks} blocks in backbone stage1")
    cls_out, in0 = cls_first.shape[0], cls_first.shape[1]
    config = dict(
        widen=widen, deepen=_DEEPEN_BY_STAGE1_BLOCKS[stage1_blocks],
        last_stage_channels=int(round(stage4.shape[0] / widen)), text_dim=cls_last.shape[0],
        use_bn_head="bbox_head.head_module.cls_contrasts.0.norm.weight" in state_dict,
        num_classes=cls_out if cls_out > in0 else 80)
    config.update(overrides)
    return DetectorConfig(**config)


def check_head_variant(model: YOLOWorldDetector, state_dict: dict[str, torch.Tensor]) -> None:
    """Fail with the fix when a v1/v2 head checkpoint meets the other head variant."""
    has_bn = any(k.startswith(("head.cls_contrasts.0.norm.", "bbox_head.head_module.cls_contrasts.0.norm."))
                 for k in state_dict)
    if has_bn and not model.config.use_bn_head:
        raise ValueError("checkpoint has the v2 BatchNorm contrastive head (cls_contrasts.*.norm); "
                         "build the detector with use_bn_head=True")
    if not has_bn and model.config.use_bn_head:
        raise ValueError("checkpoint has the v1 L2-normalised contrastive head (no cls_contrasts.*.norm); "
                         "build the detector with use_bn_head=False")


def load_detector_weights(model: YOLOWorldDetector, state_dict: dict[str, torch.Tensor]) -> str:
    """Load official-layout detector keys into `model`; strict on shapes and coverage.

    Keys outside the detector (not backbone.image_model / neck / bbox_head.head_module, nor the
    text tower or prompt-tuned `embeddings`) are ignored and listed in the report; a detector
    key the model lacks raises.

    Returns:
        The transfer report line for the detector part.
    """
    check_head_variant(model, state_dict)
    own = model.state_dict()
    mapped, unexpected, foreign = {}, [], []
    for key, value in state_dict.items():
        ours = official_to_cl_detect(key)
        if ours is None:
            if (not key.startswith(TEXT_PREFIX) and key != "embeddings" and key not in ADAPTER_KEYS
                    and not key.endswith(IGNORED_SUFFIXES)):
                unexpected.append(key)
            continue
        if ours not in own:
            foreign.append(key)
            continue
        if own[ours].shape != value.shape:
            raise ValueError(f"shape mismatch for {key}: checkpoint {tuple(value.shape)}, "
                             f"model {tuple(own[ours].shape)} (wrong size or text width?)")
        mapped[ours] = value
    if foreign:  # ignoring them would load a model that computes something else
        raise ValueError(f"checkpoint has {len(foreign)} detector tensors this YOLO-World v2 model lacks, e.g. "
                         f"{foreign[:5]}: parts of another architecture (such as YOLO-World v1's image-pooling "
                         "attention, neck.text_enhancer) or of adapters, which loading would drop and so change the "
                         "outputs; delete them from the state dict to load the rest on purpose")
    missing = [cl_detect_to_official(k) for k in own if k not in mapped]
    if missing:
        raise ValueError(f"checkpoint lacks {len(missing)} detector tensors, e.g. {missing[:5]}")
    model.load_state_dict(mapped, strict=True)
    report = f"loaded {len(mapped)}/{len(own)} detector tensors"
    if unexpected:
        report += f"; unexpected (ignored): {unexpected}"
    return report


def load_official_checkpoint(src, device: str | torch.device = "cpu", **overrides):
    """Build a detector (and its text encoder) from an official YOLO-World v2 checkpoint.

    Args:
        src: a path, a `{'state_dict': ...}` dict or a bare state dict.
        device: where to put the models.
        **overrides: DetectorConfig fields to force (normally none: inferred from shapes).

    Returns:
        (detector in eval mode, text encoder): an open_clip `ClipTextEncoder` when the
        checkpoint carries the CLIP text tower, `FixedTextEmbeddings` for prompt-tuned
        checkpoints, or None when it has neither.
    """
    try:
        state_dict = _unwrap(src)
        model = YOLOWorldDetector(infer_config(state_dict, **overrides))
        report = load_detector_weights(model, state_dict)
    except ValueError as err:
        if isinstance(src, (str, Path)) and not str(err).startswith(str(src)):
            raise ValueError(f"{src}: {err}") from None
        raise
    text_sd = {k[len(TEXT_PREFIX):]: v for k, v in state_dict.items() if k.startswith(TEXT_PREFIX)}
    text_encoder = None
    if text_sd:
        from cl_detect.models.text_encoders import ClipTextEncoder
        text_encoder = ClipTextEncoder.from_hf_state_dict(text_sd)
        num_text = sum(1 for k in text_sd if not k.endswith(IGNORED_SUFFIXES))
        report += f", {num_text}/{num_text} text tensors"
        text_encoder.to(device).eval()
        if "embeddings" in state_dict:  # the official prompt-tuned detector feeds these, not the tower's output
            report += (f"; its {len(state_dict['embeddings'])} prompt-tuned class embeddings are NOT used (the text "
                       "tower is returned): for the tuned model's outputs use FixedTextEmbeddings("
                       "prompt_tuned_embeddings(state_dict)[0]) from cl_detect.models.official")
    elif "embeddings" in state_dict:
        embeddings, adapted = prompt_tuned_embeddings(state_dict)
        text_encoder = FixedTextEmbeddings(embeddings).to(device)
        report += f", {len(embeddings)} prompt-tuned class embeddings" + (" (MLP adapter applied)" if adapted else "")
    else:
        report += ", no text tower (pass your own text encoder)"
    print(report)
    logger.info(report)
    return model.to(device).eval(), text_encoder


def prompt_tuned_embeddings(state_dict: dict[str, torch.Tensor]) -> tuple[torch.Tensor, bool]:
    """The class embeddings of a prompt-tuned checkpoint as its detector sees them, and whether an
    MLP adapter was applied: the official detector feeds normalize(adapter(E) + E) when the file
    holds `adapter.*` (use_mlp_adapter=True), else E as it is."""
    embeddings = state_dict["embeddings"].float()
    present = [k for k in ADAPTER_KEYS if k in state_dict]
    if not present:
        return embeddings, False
    if len(present) < len(ADAPTER_KEYS):
        raise ValueError(f"prompt-tuned checkpoint holds part of an MLP adapter ({present}); "
                         f"expected all of {list(ADAPTER_KEYS)}")
    weight1, bias1, weight2, bias2 = (state_dict[k].float() for k in ADAPTER_KEYS)
    hidden = torch.relu(embeddings @ weight1.T + bias1)
    return F.normalize(hidden @ weight2.T + bias2 + embeddings, dim=-1), True


def official_state_dict(model: YOLOWorldDetector, text_encoder=None) -> dict[str, torch.Tensor]:
    """This detector's weights in the official layout (plus the CLIP text tower if given)."""
    state_dict = {cl_detect_to_official(k): v.detach().cpu() for k, v in model.state_dict().items()}
    if text_encoder is not None and hasattr(text_encoder, "to_hf_state_dict"):
        state_dict.update({TEXT_PREFIX + k: v.detach().cpu() for k, v in text_encoder.to_hf_state_dict().items()})
    elif isinstance(text_encoder, FixedTextEmbeddings):
        state_dict["embeddings"] = text_encoder.embeddings.detach().cpu()
    return state_dict


def save_official_checkpoint(model: YOLOWorldDetector, path: str | Path, text_encoder=None) -> None:
    """Write `{'state_dict': ..., 'meta': ...}` so official tooling can load it (atomically)."""
    if model.config.backbone != "csp_darknet":
        raise ValueError(f"the official layout holds YOLO-World's CSPDarknet backbone, not {model.config.backbone!r}: "
                         f"save this detector with cl_detect.models.checkpoint.save_model (load_model reads it)")
    meta = {"saved_by": "cl_detect", "config": dataclasses.asdict(model.config)}
    atomic_save({"state_dict": official_state_dict(model, text_encoder), "meta": meta}, path)
