"""ZSCL-style reference images: a fixed pool drawn from at every step.

The pool is a folder of images or any dataset `read_dataset` reads (only the
image paths are used). Drawn images get the official test preprocessing
(letterbox to the batch's size), so they match the training batch tensors.
"""
from __future__ import annotations

from pathlib import Path

import torch

from cl_detect.data.preprocess import letterbox, load_image_bgr, to_tensor
from cl_detect.data.readers import read_dataset
from cl_detect.data.readers._common import list_images


class ReferenceImages:
    """A pool of reference image paths.

    Args:
        source: a folder with image files directly inside, or a dataset path.
    """

    def __init__(self, source: str | Path):
        source = Path(source)
        if source.is_dir() and list_images(source):
            self.paths = [str(p) for p in list_images(source)]
        else:
            self.paths = [record.image_path for record in read_dataset(source).records]
        if not self.paths:
            raise ValueError(f"reference_images {source} holds no images")

    def __len__(self) -> int:
        return len(self.paths)

    def draw(self, count: int, image_size: int) -> torch.Tensor:
        """(count, 3, S, S) letterboxed RGB images in [0, 1], drawn with replacement.

        Uses the global torch RNG, which the trainer checkpoints, so a resumed run
        draws the same images.
        """
        picks = torch.randint(len(self.paths), (count,)).tolist()
        return torch.stack([to_tensor(letterbox(load_image_bgr(self.paths[i]), image_size)[0]) for i in picks])
