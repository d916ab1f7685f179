"""Shared by the sources of published self-supervised CXR checkpoints (``mococxr:PATH``, ``medaug:PATH``,
``s2mts2:PATH``, ...): ``NAME:PATH[#VARIANT]`` names, reading a checkpoint as its authors saved it
(``weights_only``: tensors, dicts, numbers and strings; never pickled objects), where the authors publish
a missing file, and one-line errors naming the keys expected and found.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxrbench.errors import CxrbenchError
from cxrbench.models.sources.base import WeightSpec
from cxrbench.rundir import file_hash

if TYPE_CHECKING:
    import torch
    from torch import nn


def split_name(name: str, prefix: str, variants: tuple[str, ...], example: str) -> tuple[Path, str | None]:
    """``PREFIX:PATH[#VARIANT]`` -> (resolved PATH, VARIANT or None); one-line errors for bad names."""
    raw = name[len(prefix) :]
    variant = None
    if "#" in raw:
        raw, _, variant = raw.rpartition("#")
        if variant not in variants:
            raise CxrbenchError(f"encoder {name!r}: #{variant} is not one of {', '.join('#' + v for v in variants)}")
    if not raw:
        raise CxrbenchError(f"{prefix} encoder needs the path of the published checkpoint, e.g. {prefix}{example}")
    return Path(raw).expanduser().resolve(), variant


def published_weights(name: str, arch: str, source: str, path: Path, *, url: str, what: str) -> WeightSpec:
    """The weight spec of a published checkpoint at ``path``; when it is missing, the message says where
    its authors publish ``what`` (a direct ``url`` is given as a curl command; nothing is downloaded)."""
    if url.startswith("https://storage.googleapis.com/") or url.endswith((".pth", ".tar", ".pt", ".ckpt", ".bin")):
        fetch = f"curl -L --create-dirs -o {path} {url}"
    else:
        fetch = f"download {what} from {url} and save it as {path}"
    return WeightSpec(name, arch, source, path.is_file(), str(path), fetch)


def identity(path: Path) -> dict[str, str]:
    """The stage-key identity of a checkpoint file: its content hash (empty when it is missing)."""
    return {"weights": file_hash(path)} if path.is_file() else {}


def _inert_pickle() -> Any:
    """A ``pickle_module`` for ``torch.load`` that admits tensors, ``OrderedDict`` and ``set``, and turns
    every other class or function a file names (a Lightning checkpoint's OmegaConf ``hyper_parameters``,
    say) into an inert placeholder: nothing the file names is imported, constructed or called."""
    import collections
    import pickle
    import types

    import torch

    allowed = {
        ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("builtins", "set"): set,
    }

    class Inert:
        """Stands for a pickled object; takes any arguments and state and keeps none of them."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            pass

        def __setstate__(self, state: Any) -> None:
            pass

        def __setitem__(self, key: Any, value: Any) -> None:
            pass

        def append(self, value: Any) -> None:
            pass

        def extend(self, values: Any) -> None:
            pass

    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            return allowed.get((module, name), Inert)

    inert = types.ModuleType("cxrbench_inert_pickle")
    inert.Unpickler = Unpickler
    inert.load = lambda file, **kwargs: Unpickler(file, **kwargs).load()
    return inert


def read_checkpoint(path: Path, what: str, *, inert_objects: bool = False) -> Any:
    """The object in a ``torch.save`` file, loaded with ``weights_only=True`` (tensors, dicts, lists,
    numbers, strings); a file that needs pickled objects, or is not a checkpoint, is one line.
    ``inert_objects``: where the authors' format pickles objects beside the weights (Lightning's
    ``hyper_parameters``), those objects are read as inert placeholders (``_inert_pickle``)."""
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise CxrbenchError(f"{what} checkpoint {path} does not exist")
    try:
        if inert_objects:
            return torch.load(str(path), map_location="cpu", pickle_module=_inert_pickle(), weights_only=False)
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = next((w for w in str(exc).split() if w.startswith("GLOBAL")), "")
        detail = str(exc).strip().splitlines()[0] if not found else "it holds pickled objects"
        raise CxrbenchError(
            f"cannot read {what} checkpoint {path}: {detail} (cxrbench reads weights only, never pickled objects)"
        ) from None
    except Exception as exc:  # noqa: BLE001 - a truncated or foreign file is one line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CxrbenchError(f"cannot read {what} checkpoint {path}: {first}") from None


@functools.lru_cache(maxsize=32)
def _keys_cached(path: str, size: int, mtime_ns: int, what: str, inert: bool) -> tuple[tuple[str, ...], dict[str, Any]]:
    obj = read_checkpoint(Path(path), what, inert_objects=inert)
    meta = {k: v for k, v in obj.items() if isinstance(v, (str, int, float))} if isinstance(obj, dict) else {}
    return tuple(tensor_keys(obj)), meta


def checkpoint_keys(path: Path, what: str, *, inert_objects: bool = False) -> tuple[tuple[str, ...], dict[str, Any]]:
    """Every tensor's dotted key in the checkpoint (nested dicts joined by ``.``) and its top-level
    scalars (``arch``, ``epoch``), cached by path, size and time so resolving a name stays cheap."""
    stat = Path(path).stat()
    return _keys_cached(str(path), stat.st_size, stat.st_mtime_ns, what, inert_objects)


def tensor_keys(obj: Any, prefix: str = "") -> list[str]:
    """Dotted keys of every tensor in nested dicts."""
    import torch

    if isinstance(obj, torch.Tensor):
        return [prefix[:-1]]
    if isinstance(obj, dict):
        return [k for key, value in obj.items() for k in tensor_keys(value, f"{prefix}{key}.")]
    return []


def shown(keys: list[str] | tuple[str, ...], n: int = 3) -> str:
    """The first ``n`` keys, and how many more there are."""
    keys = list(keys)
    if not keys:
        return "no tensors"
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def state_dict_in(obj: Any, key: str | None, path: Path, what: str) -> dict[str, torch.Tensor]:
    """``obj[key]`` (or ``obj`` when ``key`` is None) as a flat dict of tensors, or a one-line error
    naming what the file holds instead."""
    import torch

    inner = obj.get(key) if isinstance(obj, dict) and key is not None else obj
    if not isinstance(inner, dict) or not inner or not all(isinstance(v, torch.Tensor) for v in inner.values()):
        found = list(obj) if isinstance(obj, dict) else [type(obj).__name__]
        where = f"a {key!r} entry holding a state dict" if key else "a state dict"
        raise CxrbenchError(f"{path} is not a {what} checkpoint: expected {where}; found {shown(found, 5)}")
    return inner


def strip_prefix(
    state: dict[str, torch.Tensor], prefix: str, *, drop: tuple[str, ...] = (), path: Path, what: str
) -> dict[str, torch.Tensor]:
    """The tensors under ``prefix`` with it removed, less those starting with one of ``drop`` (heads);
    a one-line error naming the expected prefix and the keys found when nothing is under it."""
    sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if not sub:
        raise CxrbenchError(f"{path} is not a {what} checkpoint: expected keys {prefix}*; found {shown(list(state))}")
    return {k: v for k, v in sub.items() if not k.startswith(drop)}


def load_into(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> nn.Module:
    """``load_exact``: every parameter and buffer of ``model`` from ``state``, or one line naming the
    missing, unexpected and mis-shaped keys."""
    from cxrbench.models.encoders import load_exact

    load_exact(model, state, path)
    return model


def fit_pos_embed(pos: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """A ViT's absolute position embeddings ``[1, 1 + G*G, D]`` (class token first) resampled to the grid
    of timm ``model`` when it runs at another input size, as timm resamples pretrained ViT weights
    (``resample_abs_pos_embed``: bicubic, antialiased); unchanged when the shapes already agree or when
    ``pos`` is not a class token plus a square grid (``load_exact`` then names the mismatch)."""
    import math

    target = tuple(model.pos_embed.shape)
    side = math.isqrt(max(pos.shape[1] - 1, 0)) if pos.ndim == 3 else 0
    if tuple(pos.shape) == target or side < 1 or side * side != pos.shape[1] - 1 or pos.shape[-1] != target[-1]:
        return pos
    from timm.layers import resample_abs_pos_embed

    grid = tuple(int(g) for g in model.patch_embed.grid_size)
    return resample_abs_pos_embed(pos.float(), new_size=list(grid), old_size=[side, side], num_prefix_tokens=1)
