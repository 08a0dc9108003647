"""`torchscript:PATH?class_names=a,b&size=224&mean=0.485,0.456,0.406&std=0.229,0.224,0.225`:
a TorchScript archive (torch.jit.save) taking a float tensor [B, 3, size, size] and returning
logits [B, C]. Preprocessing: RGB, resize to size x size (`resample`, default bilinear),
x / 255, (x - mean) / std; the defaults are the usual ImageNet ones. Class names come from
`class_names=`, else from a `class_names` attribute of the scripted module.

Everything that decides the output is in the SPEC, so the SPEC alone reproduces a run.
A TorchScript archive carries the model's code (that is what it is for) but no pickled
Python objects; a `torch.save(model)` pickle is refused unless `allow_pickle=1`."""

from __future__ import annotations

import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from ..errors import DiffexError
from ..hashing import hash_tensors
from ..models import torch_load
from ..specs import flag, float_list, name_list, split_spec
from .base import LoadedClassifier

OPTIONS = {
    "class_names": "comma-separated, in output order",
    "size": "input side in pixels, default 224",
    "mean": "1 or 3 numbers, default 0.485,0.456,0.406",
    "std": "1 or 3 numbers, default 0.229,0.224,0.225",
    "resample": "bilinear (default), bicubic, nearest, lanczos",
    "allow_pickle": "1 accepts a torch.save(model) pickle (runs arbitrary code: only for files you trust)",
}
RESAMPLE = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST, "lanczos": Image.LANCZOS}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _code(module: Any) -> list[tuple[str, str]]:
    """The TorchScript code of every submodule: the architecture, which the weights alone miss."""
    out = []
    for name, sub in module.named_modules():
        try:
            out.append((name, str(sub.code)))
        except (AttributeError, RuntimeError):
            out.append((name, type(sub).__name__))
    return out


class TorchScriptClassifier(LoadedClassifier):
    name = "torchscript"
    batch_size = 32

    def __init__(self, module: Any, class_names: Sequence[str], preprocessing: dict[str, Any]):
        self.module = module.eval()
        self._names = tuple(class_names)
        self.preprocessing = preprocessing
        extra = {"kind": "torchscript", "code": _code(module), "preprocessing": preprocessing,
                 "class_names": list(self._names)}
        self._id = hash_tensors(module.state_dict(), extra)[:32]

    def logits(self, images: Sequence[Image.Image]) -> torch.Tensor:
        p = self.preprocessing
        size = (p["size"], p["size"])
        arrays = []
        for image in images:
            rgb = image if image.mode == "RGB" else image.convert("RGB")
            if rgb.size != size:
                rgb = rgb.resize(size, RESAMPLE[p["resample"]])
            arrays.append(np.asarray(rgb, dtype=np.uint8))
        x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0
        x = (x - torch.tensor(p["mean"]).view(1, 3, 1, 1)) / torch.tensor(p["std"]).view(1, 3, 1, 1)
        with torch.no_grad():
            out = self.module(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        elif isinstance(out, dict):
            out = out.get("logits", next(iter(out.values())))
        return out


def _load(path: Path, allow_pickle: bool) -> Any:
    try:
        with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript; the user chose it
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, ValueError) as exc:
        jit_error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if not zipfile.is_zipfile(path) and not _is_pickle(path):
        raise DiffexError(f"{path} is not a TorchScript archive ({jit_error[:200]})")
    if allow_pickle:
        obj = torch_load(path, allow_pickle=True)
        if not isinstance(obj, torch.nn.Module):
            raise DiffexError(f"{path} unpickles to a {type(obj).__name__}, not a torch.nn.Module")
        return obj
    try:
        obj = torch_load(path, allow_pickle=False)  # safe: tensors and plain containers only
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError, ValueError):
        raise DiffexError(
            f"{path} is a pickled Python object, not a TorchScript archive; unpickling can run arbitrary code, so "
            "diffex refuses it: export with torch.jit.save(torch.jit.script(model), path), or, if you trust the "
            "file, add ?allow_pickle=1"
        ) from None
    raise DiffexError(
        f"{path} holds {'a state_dict' if isinstance(obj, dict) else 'a ' + type(obj).__name__}, not a model; "
        "export the model with torch.jit.save(torch.jit.script(model), path)"
    )


def _is_pickle(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(1) == b"\x80"


def from_spec(rest: str) -> TorchScriptClassifier:
    target, options = split_spec("torchscript", rest, OPTIONS)
    path = Path(target).expanduser()
    if not path.is_file():
        raise DiffexError(f"no TorchScript file at {target}")
    try:
        size = int(options.get("size", "224"))
    except ValueError:
        raise DiffexError(f"option size must be a whole number of pixels, got {options['size']!r}") from None
    if not 8 <= size <= 4096:
        raise DiffexError(f"option size must be between 8 and 4096 pixels, got {size}")
    resample = options.get("resample", "bilinear")
    if resample not in RESAMPLE:
        raise DiffexError(f"unknown resample {resample!r}; valid: {', '.join(RESAMPLE)}")
    std = float_list(options, "std", IMAGENET_STD)
    if any(s <= 0 for s in std):
        raise DiffexError(f"option std must be positive, got {options['std']!r}")
    preprocessing = {"size": size, "resample": resample, "scale": "x/255",
                     "mean": list(float_list(options, "mean", IMAGENET_MEAN)), "std": list(std)}
    names = name_list(options, "class_names")
    module = _load(path, flag(options, "allow_pickle"))
    if names is None:
        attr = getattr(module, "class_names", None)
        if not attr or not all(isinstance(n, str) for n in attr):
            raise DiffexError(f"torchscript classifier {target} needs its class names: add ?class_names=a,b,... "
                              "(in the order of the model's outputs)")
        names = tuple(attr)
    clf = TorchScriptClassifier(module, names, preprocessing)
    clf.name = f"torchscript:{path.name}"
    return clf
