"""``txv:NAME``: torchxrayvision's published chest X-ray classifiers as encoders, with its preprocessing.

NAME is a torchxrayvision weights name: ``densenet121-res224-{all,nih,pc,chex,rsna,mimic_nb,mimic_ch}``
or ``resnet50-res512-all``. The feature is torchxrayvision's: ``DenseNet.features2`` (ReLU of the last
feature map, averaged) or ``ResNet.features`` (layer4, averaged). ``--arch`` does not apply.

Preprocessing is exactly torchxrayvision's: one channel scaled to [-1024, 1024] at the model's own
resolution. The ``Encoder`` normalises ``(x - 0.5) / (1 / 2048)``, which maps [0, 1] to [-1024, 1024]
as ``xrv.utils.normalize(img, maxval)`` does, and the backbone keeps the first channel; an input at
another size is resized to the native resolution as torchxrayvision's ``fix_resolution`` does.

Weights: torchxrayvision's cache (``~/.torchxrayvision/models_data/``) or ``$CXRBENCH_WEIGHTS_DIR``,
under the release file name. Nothing is downloaded: a missing file is reported with the URL. The
DenseNet files are pickled modules; they are read with an unpickler that admits only torch.nn,
torchvision and torchxrayvision module classes and tensors, never arbitrary objects.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxrbench.errors import CxrbenchError
from cxrbench.models.sources.base import EncoderSpec, WeightSpec
from cxrbench.rundir import file_hash

if TYPE_CHECKING:
    from torch import nn

PREFIX = "txv:"
USAGE = "txv:NAME"
#: maps x in [0, 1] to (x - 0.5) * 2048 = [-1024, 1024], torchxrayvision's pixel scale
MEAN = (0.5, 0.5, 0.5)
STD = (1 / 2048, 1 / 2048, 1 / 2048)
INSTALL = "pip install 'cxrbench[published]' (or pip install torchxrayvision)"


def xrv() -> Any:
    """The torchxrayvision package, or a one-line error saying how to install it."""
    import warnings

    try:
        with warnings.catch_warnings():  # its models module sets a global "ignore all warnings" filter
            import torchxrayvision
    except ImportError:
        raise CxrbenchError(f"txv: encoders need torchxrayvision; install it with: {INSTALL}") from None
    return torchxrayvision


def known_weights(package: Any) -> dict[str, dict]:
    """torchxrayvision's weights by full name (the short aliases such as ``all`` left out)."""
    return {k: v for k, v in package.models.model_urls.items() if k.startswith(("densenet", "resnet"))}


def cache_dir(package: Any) -> Path:
    """Where torchxrayvision keeps (and would download) its weights."""
    get = getattr(package.utils, "get_cache_dir", None)
    return Path(get() if get else os.path.join("~", ".torchxrayvision", "models_data")).expanduser()


def _allowed_globals(package: Any) -> dict[tuple[str, str], Any]:
    """What a torchxrayvision weights file may name: torch.nn, torchvision and torchxrayvision module
    classes, tensor and parameter rebuilders, OrderedDict and set; nothing that runs code."""
    import collections
    import inspect

    import torch
    import torch.nn.backends.thnn as thnn
    import torchvision.models.densenet
    import torchvision.models.resnet
    from torch import nn

    namespaces = (nn, package.models, torchvision.models.densenet, torchvision.models.resnet)
    objects = {c for ns in namespaces for c in vars(ns).values() if inspect.isclass(c) and issubclass(c, nn.Module)}
    objects |= {collections.OrderedDict, torch._utils._rebuild_tensor_v2, torch._utils._rebuild_parameter}
    objects.add(thnn._get_thnn_function_backend)  # named by modules pickled by old torch; it does nothing
    allowed = {(obj.__module__, obj.__qualname__): obj for obj in objects}
    allowed[("builtins", "set")] = allowed[("__builtin__", "set")] = set
    return allowed


def _restricted_pickle(package: Any) -> Any:
    """A ``pickle_module`` for ``torch.load`` whose unpickler admits only ``_allowed_globals`` (tensor
    storages are resolved by torch before it is asked). Unlike ``weights_only=True`` it also reads the
    legacy format of torch < 1.6, which records module classes beside the weights."""
    import pickle
    import types

    allowed = _allowed_globals(package)

    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            if (module, name) not in allowed:
                raise pickle.UnpicklingError(f"refused GLOBAL {module}.{name}")
            return allowed[(module, name)]

    restricted = types.ModuleType("cxrbench_restricted_pickle")
    restricted.Unpickler = Unpickler
    restricted.load = lambda file, **kwargs: Unpickler(file, **kwargs).load()
    return restricted


def read_weights(path: Path, package: Any) -> dict:
    """The tensors of a torchxrayvision weights file: a state dict, or a pickled module (the
    DenseNet files) read with an unpickler that admits only module classes and tensors."""
    import pickle

    import torch
    from torch import nn

    try:
        obj = torch.load(str(path), map_location="cpu", pickle_module=_restricted_pickle(package), weights_only=False)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = f"it holds {found[1]}, which cxrbench does not unpickle" if found else "it is not a weights file"
        raise CxrbenchError(f"cannot load torchxrayvision weights {path}: {what}") from None
    except Exception as exc:  # noqa: BLE001 - a truncated or foreign file is one line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CxrbenchError(f"cannot load torchxrayvision weights {path}: {first}") from None
    if isinstance(obj, nn.Module):
        for module in obj.modules():  # as torchxrayvision does for modules pickled by torch < 1.6
            if not hasattr(module, "_non_persistent_buffers_set"):
                module._non_persistent_buffers_set = set()
        obj = obj.state_dict()
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CxrbenchError(f"torchxrayvision weights {path} hold neither a module nor a state dict")
    return {k: v for k, v in obj.items() if k != "op_threshs"}


def _backbone_module_class():
    import torch
    import torch.nn.functional as F
    from torch import nn

    class TxvBackbone(nn.Module):
        """A torchxrayvision classifier without its head: first channel, native resolution, then
        ``features2`` (DenseNet) or ``features`` (ResNet); ``forward_features`` gives the map."""

        def __init__(self, model: nn.Module, *, resolution: int, num_features: int) -> None:
            super().__init__()
            self.model = model
            self.resolution = int(resolution)
            self.num_features = int(num_features)

        def _native(self, x: torch.Tensor) -> torch.Tensor:
            x = x[:, :1]
            if tuple(x.shape[-2:]) != (self.resolution, self.resolution):  # torchxrayvision's fix_resolution
                x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear", antialias=True)
            return x

        def forward_features(self, x: torch.Tensor) -> torch.Tensor:
            x = self._native(x)
            model = self.model
            if hasattr(model, "features"):  # torchxrayvision DenseNet: features2 takes the ReLU of the map
                return F.relu(model.features(x))
            x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
            return model.layer4(model.layer3(model.layer2(model.layer1(x))))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.adaptive_avg_pool2d(self.forward_features(x), (1, 1)).flatten(1)

    return TxvBackbone


@dataclass(frozen=True)
class TxvSpec(EncoderSpec):
    """A torchxrayvision weights file; ``backbone`` rebuilds its model and loads it exactly."""

    resavable = False  # a saved copy would be rebuilt as a timm model

    weights_name: str = ""

    def backbone(self, *, input_size: int, seed: int) -> nn.Module:
        import torch
        import torchvision
        from torch import nn

        package = xrv()
        info = known_weights(package)[self.weights_name]
        n_classes = len(info["labels"])
        path = Path(self.weights.location)
        if self.weights_name.startswith("densenet"):
            model = package.models.DenseNet(num_classes=n_classes)  # DenseNet-121, as all its weights
            head = "classifier"
        else:
            model = getattr(torchvision.models, self.arch)(num_classes=n_classes, weights=None)
            model.conv1 = torch.nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
            head = "fc"
        state = read_weights(path, package)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            detail = "; ".join(line.strip() for line in str(exc).splitlines()[1:3])
            raise CxrbenchError(f"weights in {path} do not fit {self.name}: {first} {detail}".strip()) from None
        num_features = getattr(model, head).in_features
        setattr(model, head, nn.Identity())  # no unused head parameters (finetuning under DDP)
        return _backbone_module_class()(model, resolution=self.input_size, num_features=num_features)


def parse(name: str, *, arch: str | None, run: Path | None) -> TxvSpec:
    package = xrv()
    weights_name = name[len(PREFIX) :]
    known = known_weights(package)
    if weights_name not in known:
        raise CxrbenchError(f"encoder {name!r}: torchxrayvision weights are one of {', '.join(known)}")
    info = known[weights_name]
    url = info["weights_url"]
    filename = os.path.basename(url)
    model_arch = weights_name.split("-")[0]
    candidates = [cache_dir(package) / filename]
    if os.environ.get("CXRBENCH_WEIGHTS_DIR"):
        candidates.insert(0, Path(os.environ["CXRBENCH_WEIGHTS_DIR"]).expanduser() / filename)
    found = next((c for c in candidates if c.is_file()), None)
    fetch = f"curl -L --create-dirs -o {candidates[-1]} {url}"
    weights = WeightSpec(name, model_arch, f"txv:{url}", found is not None, str(found or candidates[-1]), fetch)
    extra = {"weights": file_hash(found)} if found else {}
    size = int(info.get("input_resolution", 224))
    return TxvSpec(
        name, model_arch, weights.source, weights, MEAN, STD, size, extra_inputs=extra, weights_name=weights_name
    )
