"""Load generator state dicts saved by the pix2pix/CycleGAN reference code (and compatible ones).

Always ``torch.load(..., weights_only=True)``: a checkpoint is data, never code.
Loading is **strict** after the same clean-ups the reference code applies
(``BaseModel.load_networks``): a DataParallel ``module.`` prefix is stripped and, as in
``__patch_instance_norm_state_dict``, ``running_mean``/``running_var`` keys of InstanceNorm
layers that do not track running stats (written by PyTorch < 0.4) and InstanceNorm
``num_batches_tracked`` keys are dropped. Common variants are accepted too: a model-name prefix
(``netG.``, ``netG_A.``, ``netG_B.``, ``generator.``, also after ``module.``), containers
(``{"state_dict": …}``, ``{"netG": …}``, ``{"model": …}``) and residual blocks whose Sequential
is called ``block`` instead of ``conv_block`` (the vintagify CycleGAN teacher).
Anything else that does not match is an error listing every missing and unexpected key and what
was inferred from the checkpoint.

One loader for everything that reads a teacher: ``pocketgan export``, ``pocketgan macs
--checkpoint`` and every compression method (``compress run --teacher``) use
:func:`resolve_generator`.
"""

from __future__ import annotations

import pickle
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from compression_jobs.models import build_generator


class CheckpointError(ValueError):
    """The checkpoint does not fit the requested architecture (message lists the keys)."""


def read_state_dict(path: Path | str) -> "OrderedDict[str, torch.Tensor]":
    """Tensors from a checkpoint file; unwraps ``{'state_dict': ...}``/``{'model': ...}`` containers."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # torch's message advises weights_only=False: never relay that
        raise CheckpointError(f"{path}: not a state-dict checkpoint (it holds pickled objects other than tensors; "
                              "only weights are loaded, never code)") from exc
    except Exception as exc:  # noqa: BLE001 - not a torch file at all (zip/pickle header, truncated file, ...)
        raise CheckpointError(f"{path}: not a state-dict checkpoint (not a torch-saved file: {exc.__class__.__name__})") from exc
    for key in ("state_dict", "model_state_dict", "netG", "model"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: not a state dict of tensors")
    return OrderedDict(obj)


def clean_state_dict(state: Mapping[str, torch.Tensor], model: nn.Module) -> "OrderedDict[str, torch.Tensor]":
    """Apply the reference code's load-time fixes so that `state` can be loaded strictly into `model`."""
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, value in state.items():
        key = strip_prefixes(key)
        key = re.sub(r"^(model\.\d+)\.block\.", r"\1.conv_block.", key)
        out[key] = value
    modules = dict(model.named_modules())
    for key in list(out):
        owner, _, leaf = key.rpartition(".")
        module = modules.get(owner)
        if module is not None and module.__class__.__name__.startswith("InstanceNorm"):
            if leaf in ("running_mean", "running_var") and getattr(module, leaf, None) is None:
                del out[key]
            elif leaf == "num_batches_tracked":
                del out[key]
    return out


MODEL_PREFIXES: tuple[str, ...] = ("module.", "netG.", "netG_A.", "netG_B.", "generator.", "G.")
"""Key prefixes written by DataParallel / model wrappers, stripped (repeatedly) before matching."""


def strip_prefixes(key: str) -> str:
    """``module.netG.model.1.weight`` -> ``model.1.weight``."""
    changed = True
    while changed:
        changed = False
        for prefix in MODEL_PREFIXES:
            if key.startswith(prefix) and len(key) > len(prefix):
                key, changed = key[len(prefix):], True
    return key


def load_state_dict_strict(model: nn.Module, state: Mapping[str, torch.Tensor], source: str = "checkpoint",
                           inferred: Mapping[str, Any] | None = None,
                           given: Mapping[str, Any] | None = None) -> nn.Module:
    """Strict load; a mismatch is one error listing every missing/unexpected key, every shape
    mismatch and (when given) the hyper-parameters that were inferred/used to build `model`."""
    state = clean_state_dict(state, model)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
              for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        lines = [f"{source} does not fit {model.__class__.__name__}"
                 + (f" (inferred from the checkpoint: {_kv(inferred)})" if inferred else "")
                 + (f" (given: {_kv(given)})" if given else "") + ":"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {', '.join(missing)}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
        if shapes:
            lines.append(f"  shape mismatches ({len(shapes)}): {'; '.join(shapes)}")
        lines.append("  (override what was inferred with --arch/--ngf/--n-blocks/--norm, or the config's teacher.* fields)")
        raise CheckpointError("\n".join(lines))
    model.load_state_dict(state, strict=True)
    return model


def _kv(params: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in params.items())


def detect_arch(state: Mapping[str, torch.Tensor]) -> str:
    """``unet`` for the reference U-Net layout (``model.model.0.weight``), else ``resnet``."""
    sd = clean_state_dict(state, nn.Module())
    return "unet" if "model.model.0.weight" in sd else "resnet"


def infer_generator_kwargs(state: Mapping[str, torch.Tensor], arch: str) -> dict[str, Any]:
    """Hyper-parameters a state dict implies (see :func:`_infer`); CheckpointError when it has not the layout."""
    try:
        return _infer(state, arch)
    except (IndexError, KeyError, ValueError) as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(f"cannot infer {arch} hyper-parameters: unexpected tensor shapes "
                              f"({exc.__class__.__name__}: {exc})") from exc


def _infer(state: Mapping[str, torch.Tensor], arch: str) -> dict[str, Any]:
    """Guess ngf / n_blocks / num_downs / norm / use_dropout / channels from a state dict's keys and shapes.

    - resnet: ngf and input_nc from ``model.1.weight``; n_blocks = number of ``model.N.conv_block``;
      norm: no conv bias -> batch, bias + ``model.2.weight`` -> instance-affine, bias only -> instance;
      dropout iff ``conv_block.6`` is a 4-D conv weight (Dropout shifts the second conv's index).
    - unet: ngf/input_nc from the outermost down conv, num_downs from the nesting depth, norm as above
      (dropout has no keys and does not change inference outputs in eval mode).
    """
    sd = clean_state_dict(state, nn.Module())
    if arch == "resnet":
        if "model.1.weight" not in sd:
            raise CheckpointError("not a ResNet generator state dict (no model.1.weight)")
        w = sd["model.1.weight"]
        blocks = {int(m.group(1)) for k in sd if (m := re.match(r"^model\.(\d+)\.conv_block\.", k))}
        if "model.1.bias" not in sd:
            norm = "batch"
        elif "model.2.weight" in sd:
            norm = "instance-affine"
        else:
            norm = "instance"
        first = min(blocks) if blocks else None
        dropout = first is not None and sd.get(f"model.{first}.conv_block.6.weight", torch.empty(0)).dim() == 4
        last = max((int(k.split(".")[1]) for k in sd if re.match(r"^model\.\d+\.weight$", k)), default=None)
        out_nc = sd[f"model.{last}.weight"].shape[0] if last is not None else 3
        return {"ngf": int(w.shape[0]), "n_blocks": len(blocks), "norm": norm, "use_dropout": bool(dropout),
                "input_nc": int(w.shape[1]), "output_nc": int(out_nc)}
    if arch == "unet":
        if "model.model.0.weight" not in sd:
            raise CheckpointError("not a U-Net generator state dict (no model.model.0.weight)")
        w = sd["model.model.0.weight"]
        depth = max(k.split(".").count("model") for k in sd) - 1
        norm = "batch" if "model.model.0.bias" not in sd else (
            "instance-affine" if any(k.endswith("model.2.weight") and sd[k].dim() == 1 for k in sd) else "instance")
        up = sd.get("model.model.3.weight")
        return {"ngf": int(w.shape[0]), "num_downs": int(depth), "norm": norm, "input_nc": int(w.shape[1]),
                "output_nc": int(up.shape[1]) if up is not None else 3}
    raise CheckpointError(f"cannot infer hyper-parameters for arch {arch!r} (use resnet or unet, or pass them)")


TEACHER_KEYS: dict[str, tuple[str, ...]] = {
    "resnet": ("ngf", "n_blocks", "norm", "use_dropout", "input_nc", "output_nc"),
    "unet": ("ngf", "num_downs", "norm", "use_dropout", "input_nc", "output_nc"),
}
"""The builder arguments that describe a teacher of each family (what `resolve_generator` records)."""


def resolve_generator(path: Path | str, arch: str = "resnet", **overrides: Any) -> tuple[nn.Module, dict[str, Any]]:
    """Build `arch` from what the checkpoint implies (non-None `overrides` win) and load strictly.

    Returns (model in eval mode, the builder arguments used incl. ``arch``), so a run can record
    the teacher's architecture and rebuild it later. Raises CheckpointError (all keys listed).
    """
    state = read_state_dict(path)
    params: dict[str, Any] = {}
    given = {k: v for k, v in overrides.items() if v is not None}
    if arch in ("resnet", "unet"):
        try:
            params.update(infer_generator_kwargs(state, arch))
        except CheckpointError as exc:
            if not set(given) >= {"ngf", "norm"}:
                keys = list(clean_state_dict(state, nn.Module()))
                raise CheckpointError(f"{path}: {exc}; its keys ({len(keys)}): {', '.join(keys)}") from exc
    inferred = dict(params)
    params.update(given)
    try:
        model = build_generator(arch, **params)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot build {arch} with {_kv(params)}: {exc}") from exc
    load_state_dict_strict(model, state, source=str(path), inferred=inferred, given=given)
    keep = TEACHER_KEYS.get(arch)
    record = {"arch": arch, **({k: params[k] for k in keep if k in params} if keep else params)}
    return model.eval(), record


def load_generator_state_dict(path: Path | str, arch: str = "resnet", **kwargs: Any) -> nn.Module:
    """Build `arch` (resnet, unet, mobile-resnet; kwargs override what the state dict implies) and load strictly.

    Returns the model in eval mode. Raises CheckpointError listing mismatching keys.
    """
    return resolve_generator(path, arch, **kwargs)[0]
