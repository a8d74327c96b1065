"""The text encoder base class (`TextEncoder`: cached, L2-normalised embeddings) and what
every encoder shares; the encoders are in `text_encoders` (CLIP) and `sentence_text` (MiniLM)."""
from __future__ import annotations

import abc
import logging

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger("cl_detect.models.text_encoders")


def weights_version(module: nn.Module) -> tuple[int, int]:
    """A token that changes whenever `module`'s weights do: every in-place write (optimizer step,
    `load_state_dict`) bumps a tensor's version counter, and the storage addresses catch adapters
    being added and weights being replaced rather than written (`load_state_dict(assign=True)`,
    `param.data = ...`, which keep the counter). Caches of a module's outputs key on it."""
    params = list(module.parameters())
    return hash(tuple(p.data_ptr() for p in params)), sum(p._version for p in params)


class TextEncoder(nn.Module, abc.ABC):
    """Base class: `forward(texts)` -> (N, dim) float32, L2-normalised along dim.

    Subclasses implement `encode(texts)` (raw, un-normalised embeddings). Results
    are cached keyed by (texts, device, dtype) whenever no gradient can flow into
    the tower (no parameter requires grad, or grad mode is off); cached entries are
    computed in eval mode so they are deterministic, and are dropped automatically
    when any parameter is modified in place (optimizer step, `load_state_dict`).

    Args:
        dim: embedding width D.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self._cache: dict[tuple, torch.Tensor] = {}
        self._cache_weights_version: tuple[int, int] | None = None

    @abc.abstractmethod
    def encode(self, texts: list[str]) -> torch.Tensor:
        """Raw (N, D) embeddings of `texts`, before normalisation."""

    def clear_cache(self) -> None:
        """Forget all cached vocabularies."""
        self._cache.clear()
        self._cache_weights_version = None

    def _embed(self, texts: list[str]) -> torch.Tensor:
        return F.normalize(self.encode(texts).float(), dim=-1)

    def forward(self, texts: list[str]) -> torch.Tensor:
        """Embed a vocabulary.

        Args:
            texts: prompts; '' and ' ' are valid (the official padding prompts).

        Returns:
            (len(texts), dim) float32 tensor on the encoder's device, unit L2 norm
            per row. Differentiable when the tower trains.
        """
        if isinstance(texts, str):
            raise TypeError("texts must be a list of strings, not a single string")
        texts = list(texts)
        # a None or NaN class name (a gap in a CSV) failed inside the tokenizer without its position
        wrong = next(((i, t) for i, t in enumerate(texts) if not isinstance(t, str)), None)
        if wrong is not None:
            index, text = wrong
            raise TypeError(f"texts must be strings, but texts[{index}] is {text!r} ({type(text).__name__}); "
                            "check the class names (a missing name reads as None or NaN)")
        params = list(self.parameters())
        device = params[0].device if params else torch.device("cpu")
        if not texts:
            return torch.zeros(0, self.dim, device=device)
        if torch.is_grad_enabled() and any(p.requires_grad for p in params):
            return self._embed(texts)
        version = weights_version(self)
        if version != self._cache_weights_version:
            self._cache.clear()
            self._cache_weights_version = version
        key = (tuple(texts), device, params[0].dtype if params else torch.float32)
        if key not in self._cache:
            modes = [(m, m.training) for m in self.modules()]
            self.eval()
            try:
                with torch.no_grad():
                    self._cache[key] = self._embed(texts)
            finally:
                for module, training in modes:
                    module.training = training
        # A copy, so a caller editing the result in place cannot corrupt the cache.
        return self._cache[key].clone()




def not_downloadable(what: str, err: OSError, alternative: str) -> OSError:
    """The error for a text model file that is neither in the local cache nor downloadable (offline)."""
    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return OSError(f"cannot load {what}: it is not in the local HuggingFace cache and could not be downloaded "
                   f"({reason}); run once with network access (and HF_HUB_OFFLINE unset) to cache it, {alternative}")


def warn_prompts_cut(encoder: TextEncoder, cut: list[tuple[str, int]], total: int, context: int) -> None:
    """Warn, once per encoder, that the prompts in `cut` ((text, token count) pairs) were cut to the
    tower's `context` tokens."""
    if cut and not encoder._warned_truncation:
        encoder._warned_truncation = True
        logger.warning("%d of %d prompts are longer than the text tower's %d tokens and were cut to fit, "
                       "e.g. %r (%d tokens); shorten them to keep their end (warned once per encoder)",
                       len(cut), total, context, cut[0][0][:200], cut[0][1])

