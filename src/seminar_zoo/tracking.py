"""W&B logging that works with no network.

``ZooWandbLogger`` is Lightning's WandbLogger with the mode taken from
``WANDB_MODE`` (default ``offline``: runs land under ``<run_dir>/wandb`` and can be
uploaded later with ``wandb sync``; ``disabled`` turns logging off).
"""
from __future__ import annotations

import os
from typing import Optional

from pytorch_lightning.loggers import WandbLogger


def wandb_mode() -> str:
    return os.environ.get("WANDB_MODE", "offline")


class ZooWandbLogger(WandbLogger):
    def __init__(self, save_dir: Optional[str] = None, project: str = "seminar-zoo", name: Optional[str] = None,
                 group: Optional[str] = None, tags: Optional[list] = None, **kwargs):
        os.environ.setdefault("WANDB_SILENT", "true")
        mode = wandb_mode()
        if save_dir:
            os.makedirs(save_dir, exist_ok=True)
        super().__init__(save_dir=save_dir, project=project, name=name, group=group, tags=tags,
                         offline=(mode == "offline"), mode=mode, log_model=False, **kwargs)
