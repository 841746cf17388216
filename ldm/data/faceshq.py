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
from ldm.data.paths import data_root, require_dir, require_file

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
        listing = f"{name}{split}.txt"
        layout = (f"{root}/\n  {name}train.txt        one image path per line, relative to the root\n"
                  f"  {name}validation.txt\n  <the images>            e.g. "
                  + ("imgHQ00000.png" if name == "celebahq" else "00000.png"))
        prepare = (f"python scripts/prepare_faces.py --dataset {name} --root {root}\n"
                   + ("(CelebA-HQ: the 30k 1024^2 images, from the Progressive GAN release)" if name == "celebahq"
                      else "(FFHQ: images1024x1024 from https://github.com/NVlabs/ffhq-dataset)"))
        dataset = f"{type(self).__name__}"
        require_dir(dataset, root, layout, prepare)
        file_list = require_file(dataset, os.path.join(root, listing), layout, prepare)
        super().__init__(root=root, size=size, crop="center", flip=flip, file_list=file_list)


class CelebAHQTrain(FacesHQ):
    def __init__(self, size: Optional[int] = 256, root: Optional[str] = None, flip: bool = False):
        super().__init__("celebahq", "train", size=size, root=root, flip=flip)


class CelebAHQValidation(FacesHQ):
    def __init__(self, size: Optional[int] = 256, root: Optional[str] = None, flip: bool = False):
        super().__init__("celebahq", "validation", size=size, root=root, flip=flip)


class FFHQTrain(FacesHQ):
    def __init__(self, size: Optional[int] = 256, root: Optional[str] = None, flip: bool = False):
        super().__init__("ffhq", "train", size=size, root=root, flip=flip)


class FFHQValidation(FacesHQ):
    def __init__(self, size: Optional[int] = 256, root: Optional[str] = None, flip: bool = False):
        super().__init__("ffhq", "validation", size=size, root=root, flip=flip)
