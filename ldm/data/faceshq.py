"""CelebA-HQ and FFHQ at 256^2 (unconditional LDMs, Tab. 1); the original configs name these
classes as ``taming.data.faceshq.*`` and ``ldm.data.faceshq.*``.

On-disk layout (``root`` defaults to ``$LDM_DATA_ROOT/<name>`` or ``data/<name>``)::

    data/celebahq/                      data/ffhq/
      celebahqtrain.txt                   ffhqtrain.txt
      celebahqvalidation.txt              ffhqvalidation.txt
      imgHQ00000.png ...                  00000.png ...

Each list file names one image per line, relative to the root (the original split lists).
Images are resized (shorter side to ``size``) and center-cropped; faces are aligned, so there
is no random cropping. ``scripts/prepare_faces.py`` writes the lists (and converts the
``.npy`` CelebA-HQ release to PNG) if you only have the images.
"""
from __future__ import annotations

import os
from typing import Optional

from ldm.data.folder import ImageFolder
from ldm.data.paths import ExpectedLayout, data_root
from ldm.data.variants import dataset_variant

__all__ = ["CelebAHQTrain", "CelebAHQValidation", "FFHQTrain", "FFHQValidation", "FacesHQ"]


class FacesHQ(ImageFolder):
    """Images of ``<root>/<name><split>.txt``; ``image`` plus ``file_path_``/``relpath``."""

    def __init__(self,
                 name: str,                   # "celebahq" or "ffhq": data folder and list prefix
                 split: str,                  # "train" or "validation"
                 size: Optional[int] = 256,   # output side in px; None keeps the native size
                 root: Optional[str] = None,  # default: $LDM_DATA_ROOT/<name> or data/<name>
                 flip: bool = False,          # random horizontal flips (p = 0.5)
                 ):
        if name not in ("celebahq", "ffhq") or split not in ("train", "validation"):
            raise ValueError(f"unknown faces dataset {name!r} / split {split!r}")
        root = data_root(name, root)
        layout = (f"{root}/\n  {name}train.txt        one image path per line, relative to the root\n"
                  f"  {name}validation.txt\n  <the images>            e.g. "
                  + ("imgHQ00000.png" if name == "celebahq" else "00000.png"))
        prepare = (f"python scripts/prepare_faces.py --dataset {name} --root {root}\n"
                   + ("(CelebA-HQ: the 30k 1024^2 images, from the Progressive GAN release)" if name == "celebahq"
                      else "(FFHQ: images1024x1024 from https://github.com/NVlabs/ffhq-dataset)"))
        expected = ExpectedLayout(type(self).__name__, layout, prepare)
        file_list = expected.file(os.path.join(expected.dir(root), f"{name}{split}.txt"))
        super().__init__(root=root, size=size, crop="center", flip=flip, file_list=file_list)


CelebAHQTrain = dataset_variant(FacesHQ, "CelebAHQTrain", fixed={"name": "celebahq", "split": "train"})
CelebAHQValidation = dataset_variant(FacesHQ, "CelebAHQValidation", fixed={"name": "celebahq", "split": "validation"})
FFHQTrain = dataset_variant(FacesHQ, "FFHQTrain", fixed={"name": "ffhq", "split": "train"})
FFHQValidation = dataset_variant(FacesHQ, "FFHQValidation", fixed={"name": "ffhq", "split": "validation"})
