"""cl_detect model checkpoints: a detector with the recipe to rebuild it.

    save_model(path, detector, text_encoder_spec="minilm", meta={...})
    detector, text_encoder = load_model(path)

The file holds the `DetectorConfig`, the text-encoder spec string (or the text
tower's weights when it was trained), the detector weights and free-form meta.
`load_model` also accepts official YOLO-World checkpoints.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from cl_detect.models._checkpoint_io import atomic_save, read_checkpoint
from cl_detect.models.yolo_world import DetectorConfig, YOLOWorldDetector

FORMAT = "cl_detect.model.v1"


def save_model(path: str | Path, detector: YOLOWorldDetector, text_encoder_spec: str, meta: dict | None = None,
               text_encoder_state: dict | None = None) -> None:
    """Write a detector checkpoint atomically.

    Args:
        path: output file.
        detector: the detector (its weights and config are stored).
        text_encoder_spec: how to rebuild the text encoder (`create_text_encoder` spec).
        meta: anything JSON-like (training command, metrics, date).
        text_encoder_state: the text tower's state dict when it was trained.
    """
    atomic_save({"format": FORMAT, "detector_config": dataclasses.asdict(detector.config),
                 "detector": {k: v.detach().cpu() for k, v in detector.state_dict().items()},
                 "text_encoder_spec": text_encoder_spec, "text_encoder": text_encoder_state, "meta": meta or {}},
                path)


def read_model_file(path: str | Path) -> dict:
    """The raw checkpoint dict (safe loading)."""
    return read_checkpoint(path)


def stored_detector_config(data: dict) -> DetectorConfig:
    """The architecture a cl_detect checkpoint dict (`read_model_file`) stores."""
    return DetectorConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in data["detector_config"].items()})


def load_model(path: str | Path, device: str | torch.device = "cpu", text_encoder_spec: str | None = None):
    """Rebuild (detector, text_encoder) from a cl_detect or official checkpoint.

    Args:
        path: the checkpoint file.
        device: where to put the models.
        text_encoder_spec: override the stored text-encoder spec.
    """
    data = read_checkpoint(path)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        from cl_detect.models.official import load_official_checkpoint
        try:
            detector, text_encoder = load_official_checkpoint(data, device=device)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None  # the loader gets the file's contents, not its name
        if text_encoder_spec:
            from cl_detect.models.text_encoders import create_text_encoder
            text_encoder = create_text_encoder(text_encoder_spec).to(device)
            _check_text_width(path, detector.config.text_dim, text_encoder, text_encoder_spec)
        return detector, text_encoder
    from cl_detect.models.text_encoders import create_text_encoder
    detector = _stored_detector(path, data)
    config = detector.config
    text_encoder = create_text_encoder(text_encoder_spec or data["text_encoder_spec"])
    if data.get("text_encoder") is not None and text_encoder_spec is None:
        text_encoder.load_state_dict(data["text_encoder"])
    _check_text_width(path, config.text_dim, text_encoder, text_encoder_spec or data["text_encoder_spec"])
    return detector.to(device).eval(), text_encoder.to(device).eval()


def _stored_detector(path, data: dict) -> YOLOWorldDetector:
    """The detector a cl_detect checkpoint dict describes, its weights loaded; a ValueError naming
    `path` when its config or weights do not fit this version's detector (torch's TypeError and
    RuntimeError named neither the file nor the fix, and `cl-detect` printed them as tracebacks)."""
    try:
        # the file holds every weight: a backbone first built from timm's pretrained weights must not
        # download them again (offline that failed, online it was wasted)
        config = dataclasses.replace(stored_detector_config(data), pretrained_backbone=False)
        detector = YOLOWorldDetector(config)
        detector.load_state_dict(data["detector"])
    except ValueError as err:  # e.g. a timm backbone this timm does not know
        raise ValueError(f"{path}: {err}") from None
    except (TypeError, RuntimeError) as err:
        found = " ".join(str(err).split())[:500]  # torch's message spans lines
        raise ValueError(f"{path}: its detector config or weights do not fit this cl_detect's detector "
                         f"({type(err).__name__}: {found}); the file was edited, is damaged or was written by "
                         "another cl_detect version: write it again with save_model") from None
    return detector


def _check_text_width(path, text_dim: int, text_encoder, spec: str) -> None:
    if text_encoder.dim != text_dim:
        raise ValueError(f"{path}: the detector expects {text_dim}-d text embeddings but the text encoder "
                         f"{spec!r} gives {text_encoder.dim}-d")
