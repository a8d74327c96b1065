"""Key mapping between CLIP text-tower layouts, and reading text weights from files.

Two layouts carry the same CLIP text transformer:

- HuggingFace `CLIPTextModelWithProjection` (what official YOLO-World checkpoints
  hold under `backbone.text_model.model.`): separate q/k/v projections, a
  `text_projection` Linear of shape (embed_dim, width).
- open_clip `TextTransformer` (also the OpenAI `.pt` and open_clip checkpoint
  layout): fused `attn.in_proj_weight` (q, k, v stacked), and `text_projection`
  a (width, embed_dim) matrix used as `x @ P`, i.e. the transposed Linear weight.

The mapping is pure tensor bookkeeping; checks against a model live in
`text_encoders.ClipTextEncoder`.
"""
from __future__ import annotations

import re
import zipfile
from pathlib import Path

import torch

HF_LAYER_RE = re.compile(r"^text_model\.encoder\.layers\.(\d+)\.")
HF_IGNORED = ("text_model.embeddings.position_ids",)
# One HF encoder layer, in the order official checkpoints store them (HF module order).
_HF_LAYER_PARTS = (
    ("self_attn.k_proj", "k"), ("self_attn.v_proj", "v"), ("self_attn.q_proj", "q"),
    ("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"), ("mlp.fc1", "mlp.c_fc"),
    ("mlp.fc2", "mlp.c_proj"), ("layer_norm2", "ln_2"),
)


def num_hf_text_tensors(layers: int) -> int:
    """Tensors in a HF CLIP text tower with `layers` layers (197 for 12)."""
    return 5 + 16 * layers


def _require(state_dict: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in state_dict:
        raise ValueError(f"missing text tensor {key!r} (HuggingFace CLIPTextModelWithProjection layout)")
    return state_dict[key]


def infer_hf_text_config(state_dict: dict[str, torch.Tensor]) -> tuple[dict, int]:
    """Read the architecture of a HF CLIP text tower from its tensor shapes.

    Args:
        state_dict: HF-named text-tower tensors (no outer prefix).

    Returns:
        (open_clip text_cfg dict, embed_dim). Heads are width // 64, as in every
        released CLIP text tower; the weights do not record it.
    """
    token = _require(state_dict, "text_model.embeddings.token_embedding.weight")
    position = _require(state_dict, "text_model.embeddings.position_embedding.weight")
    projection = _require(state_dict, "text_projection.weight")
    fc1 = _require(state_dict, "text_model.encoder.layers.0.mlp.fc1.weight")
    layer_ids = {int(m.group(1)) for k in state_dict if (m := HF_LAYER_RE.match(k))}
    vocab_size, width = token.shape
    text_cfg = dict(
        context_length=position.shape[0], vocab_size=vocab_size, width=width,
        heads=max(width // 64, 1), layers=max(layer_ids) + 1, mlp_ratio=fc1.shape[0] / width,
    )
    return text_cfg, projection.shape[0]


def hf_to_open_clip(state_dict: dict[str, torch.Tensor], layers: int) -> dict[str, torch.Tensor]:
    """Rename HF text-tower tensors to open_clip `TextTransformer` names.

    Every expected key must be present (ValueError naming the first missing one);
    shapes are checked by the caller against the model.
    """
    out = {
        "token_embedding.weight": _require(state_dict, "text_model.embeddings.token_embedding.weight"),
        "positional_embedding": _require(state_dict, "text_model.embeddings.position_embedding.weight"),
        "ln_final.weight": _require(state_dict, "text_model.final_layer_norm.weight"),
        "ln_final.bias": _require(state_dict, "text_model.final_layer_norm.bias"),
        "text_projection": _require(state_dict, "text_projection.weight").t(),
    }
    for i in range(layers):
        hf, oc = f"text_model.encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            # open_clip uses nn.MultiheadAttention, whose in_proj stacks q, k, v in that order.
            out[oc + f"attn.in_proj_{kind}"] = torch.cat(
                [_require(state_dict, hf + f"self_attn.{p}_proj.{kind}") for p in "qkv"])
            for hf_part, oc_part in _HF_LAYER_PARTS[3:]:
                out[oc + f"{oc_part}.{kind}"] = _require(state_dict, hf + f"{hf_part}.{kind}")
    return out


def open_clip_to_hf(state_dict: dict[str, torch.Tensor], layers: int) -> dict[str, torch.Tensor]:
    """Inverse of `hf_to_open_clip`, keys in the order official checkpoints store them.

    Tensors are cloned so that saving one does not serialise the whole fused
    in_proj storage it was sliced from.
    """
    out = {
        "text_model.embeddings.token_embedding.weight": state_dict["token_embedding.weight"],
        "text_model.embeddings.position_embedding.weight": state_dict["positional_embedding"],
    }
    for i in range(layers):
        hf, oc = f"text_model.encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for hf_part, oc_part in _HF_LAYER_PARTS:
            for kind in ("weight", "bias"):
                if oc_part in ("q", "k", "v"):
                    fused = state_dict[oc + f"attn.in_proj_{kind}"]
                    out[hf + f"{hf_part}.{kind}"] = fused.chunk(3)["qkv".index(oc_part)]
                else:
                    out[hf + f"{hf_part}.{kind}"] = state_dict[oc + f"{oc_part}.{kind}"]
    out["text_model.final_layer_norm.weight"] = state_dict["ln_final.weight"]
    out["text_model.final_layer_norm.bias"] = state_dict["ln_final.bias"]
    out["text_projection.weight"] = state_dict["text_projection"].t()
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


def split_text_state_dict(state_dict: dict[str, torch.Tensor]) -> tuple[str, dict[str, torch.Tensor], list[str]]:
    """Find a CLIP text tower inside a larger state dict and strip its prefix.

    Recognises the HF layout under any prefix (e.g. `backbone.text_model.model.`
    in YOLO-World checkpoints, none in a HF `CLIPModel`) and the open_clip/OpenAI
    layout (`token_embedding.weight`, `transformer.resblocks...`) under any prefix
    (`module.`, `text.`).

    Args:
        state_dict: a full model state dict.

    Returns:
        (layout "hf" or "open_clip", text tensors without the prefix, keys left out).
    """
    hf_anchor, oc_anchor = "text_model.embeddings.token_embedding.weight", "token_embedding.weight"
    # Test the HF anchor first: it also ends with the open_clip anchor.
    for layout, anchor in (("hf", hf_anchor), ("open_clip", oc_anchor)):
        prefix = next((k[: -len(anchor)] for k in state_dict if k.endswith(anchor)), None)
        if prefix is None:
            continue
        if layout == "hf":
            keep = lambda k: k.startswith(prefix + "text_model.") or k == prefix + "text_projection.weight"
        else:
            keep = lambda k: k.startswith(prefix) and not k.startswith(prefix + "visual.")
        text = {k[len(prefix):]: v for k, v in state_dict.items() if keep(k)}
        return layout, text, [k for k in state_dict if not keep(k)]
    raise ValueError("no CLIP text tower found: expected a key ending in "
                     f"{hf_anchor!r} (HuggingFace) or {oc_anchor!r} (open_clip / OpenAI)")


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from safetensors, a torch checkpoint or an OpenAI TorchScript `.pt`.

    Torch checkpoints go through the safe loader (weights only); a nested
    `state_dict` entry is unwrapped.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return load_file(str(path), device="cpu")
        except SafetensorError as err:  # not an OSError or ValueError: the CLI showed a traceback
            raise ValueError(f"{path}: not a readable safetensors file ({err}); re-download it, or re-save it "
                             "with safetensors.torch.save_file if a copy was interrupted") from err
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            is_torchscript = any(name.endswith("constants.pkl") for name in archive.namelist())
        if is_torchscript:
            # OpenAI's original CLIP releases are TorchScript archives: their weights are
            # only reachable through torch.jit.load (loads code from the archive, not pickles).
            return dict(torch.jit.load(str(path), map_location="cpu").state_dict())
    from cl_detect.models._checkpoint_io import read_checkpoint
    obj = read_checkpoint(path)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ValueError(f"{path} does not hold a state dict (got {type(obj).__name__})")
    return obj
