"""One deterministic text encoder for the method and engine tests (no downloads, no files).

`HashTextEncoder` sums rows of a fixed random table picked by a CRC32 of
(position, character). The table is a fixed function of `seed`, so two encoders
built anywhere (other processes included) embed a string identically. With
`projection=True` a fixed `nn.Linear` follows, giving LoRA a layer to target.
"""
from __future__ import annotations

import zlib

import torch

from cl_detect.models.text_encoders import TextEncoder

TEXT_DIM = 32


class HashTextEncoder(TextEncoder):
    """Hashed bag of (position, character) vectors, optionally then a fixed linear projection.

    Args:
        dim: embedding width.
        buckets: rows of the character table.
        seed: seed of the table (and projection).
        projection: add a frozen, near-identity `nn.Linear(dim, dim)`.
    """

    def __init__(self, dim: int = TEXT_DIM, buckets: int = 257, seed: int = 1234, projection: bool = False):
        super().__init__(dim)
        generator = torch.Generator().manual_seed(seed)
        self.table = torch.nn.Parameter(torch.randn(buckets, dim, generator=generator), requires_grad=False)
        self.proj = None
        if projection:
            self.proj = torch.nn.Linear(dim, dim)
            with torch.no_grad():
                self.proj.weight.copy_(torch.eye(dim) + 0.1 * torch.randn(dim, dim, generator=generator))
                self.proj.bias.zero_()
            self.proj.requires_grad_(False)

    def encode(self, texts: list[str]) -> torch.Tensor:
        rows = []
        for text in texts:
            # '' (the padding prompt) gets its own fixed non-zero vector so normalising is defined
            ids = [zlib.crc32(f"{i}:{c}".encode()) % len(self.table) for i, c in enumerate(text or "<pad>")]
            rows.append(self.table[ids].sum(0))
        embeddings = torch.stack(rows)
        return embeddings if self.proj is None else self.proj(embeddings)
