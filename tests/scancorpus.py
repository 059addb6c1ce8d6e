"""A corpus of model files for pickle scanning (issue 20): malicious ones, each of which runs
a command or code when loaded, and benign ones a scanner must pass. Built from scratch, with no
torch installed: a `torch.save` file is a zip whose `archive/data.pkl` is the pickle, and the
globals a benign one names (torch._utils._rebuild_tensor_v2 and the like) are stand-ins put in
`sys.modules` while the pickle is written, as pickle finds a callable by its module and name.

`build(folder)` writes every file and returns {name: Sample}; nothing here is ever loaded.
"""

from __future__ import annotations

import collections
import contextlib
import io
import pickle
import struct
import sys
import types
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Sample:
    path: Path
    malicious: bool
    #: what it does when loaded, or what it is
    what: str


class _Call:
    """Unpickles as `fn(*args)`."""

    def __init__(self, fn: Callable, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


@contextlib.contextmanager
def _stand_ins(names: dict[str, list[str]]) -> Iterator[None]:
    """Modules (dotted names) with functions of these names, for pickle to name."""
    added = []
    for module, functions in names.items():
        parts = module.split(".")
        for i in range(1, len(parts) + 1):
            name = ".".join(parts[:i])
            if name not in sys.modules:
                sys.modules[name] = types.ModuleType(name)
                added.append(name)
        for function in functions:
            def stand_in(*args):
                return args
            stand_in.__module__, stand_in.__qualname__ = module, function
            setattr(sys.modules[module], function, stand_in)
    try:
        yield
    finally:
        for name in added:
            del sys.modules[name]


def _torch_zip(payload: bytes, name: str = "archive") -> bytes:
    """The layout `torch.save` writes (a zip of `<name>/data.pkl`, `version`, storages)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr(f"{name}/data.pkl", payload)
        z.writestr(f"{name}/version", b"3\n")
        z.writestr(f"{name}/data/0", struct.pack("<4f", 1, 2, 3, 4))
    return out.getvalue()


def _benign_torch_pickle() -> bytes:
    """A state dict as torch.save pickles it: an OrderedDict of rebuilt tensors."""
    with _stand_ins({"torch._utils": ["_rebuild_tensor_v2"], "torch": ["FloatStorage"]}):
        rebuild = sys.modules["torch._utils"]._rebuild_tensor_v2
        storage = sys.modules["torch"].FloatStorage
        state = collections.OrderedDict(
            [("layer.weight", _Call(rebuild, _Call(storage, "0"), 0, (2, 2), (2, 1), False,
                                    collections.OrderedDict()))])
        return pickle.dumps(state, protocol=2)


def _npy_object_array(payload: object) -> bytes:
    """An `.npy` of dtype object: its data is a pickle (numpy.save with allow_pickle)."""
    header = "{'descr': '|O', 'fortran_order': False, 'shape': (1,), }"
    header += " " * (63 - (10 + len(header)) % 64) + "\n"
    return (b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode()
            + pickle.dumps([payload], protocol=3))


def _numpy():
    import numpy

    return numpy


def _samples() -> dict[str, tuple[str, bytes, bool, str]]:
    import os
    import subprocess

    command = "echo pwned > /tmp/weightswarm-scan-canary"
    evil = {
        "os-system-p0": ("model.bin", pickle.dumps(_Call(os.system, command), protocol=0),
                         "os.system, protocol 0"),
        "os-system-p5": ("model.pkl", pickle.dumps(_Call(os.system, command), protocol=5),
                         "os.system, protocol 5"),
        "subprocess": ("model.pt", pickle.dumps(
            _Call(subprocess.check_output, ["sh", "-c", command]), protocol=4),
            "subprocess.check_output"),
        "eval": ("model.ckpt", pickle.dumps(_Call(eval, f"__import__('os').system({command!r})"),
                                            protocol=2), "builtins.eval"),
        "exec": ("weights.pth", pickle.dumps(_Call(exec, "import os"), protocol=3),
                 "builtins.exec"),
        "torch-zip-os-system": ("pytorch_model.bin", _torch_zip(
            pickle.dumps(_Call(os.system, command), protocol=2)),
            "os.system inside a torch.save zip"),
        "torch-zip-renamed": ("model.pt", _torch_zip(
            pickle.dumps(_Call(eval, "1"), protocol=2), name="innocent"),
            "eval inside a torch zip under another folder name"),
        "getattr-import": ("model.bin", pickle.dumps(
            _Call(getattr, _Call(__import__, "os"), "system"), protocol=2),
            "builtins.getattr(__import__('os'), 'system'): no os global"),
        "npy-object": ("array.npy", _npy_object_array(_Call(os.system, command)),
                       "os.system in an object .npy"),
    }
    benign = {
        "ordered-dict": ("model.pkl", pickle.dumps(collections.OrderedDict(
            [("a", [1.0, 2.0]), ("b", {"c": (3, 4)})]), protocol=4),
            "collections.OrderedDict of lists"),
        "plain-p0": ("model.bin", pickle.dumps({"weights": [0.5] * 8, "name": "tiny"},
                                               protocol=0), "a dict, protocol 0"),
        "torch-state-dict": ("pytorch_model.bin", _torch_zip(_benign_torch_pickle()),
                             "a torch.save state dict of tensors"),
        "numpy-array": ("arrays.pkl", pickle.dumps(
            {"w": _numpy().arange(4, dtype="float32")}, protocol=4), "a pickled numpy array"),
    }
    out = {name: (file, data, True, what) for name, (file, data, what) in evil.items()}
    out.update({name: (file, data, False, what) for name, (file, data, what) in benign.items()})
    return out


def build(folder: Path) -> dict[str, Sample]:
    """Every sample in its own sub-folder of `folder` (its file name is what a repo has)."""
    made = {}
    for name, (file, data, malicious, what) in _samples().items():
        path = folder / name / file
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        made[name] = Sample(path, malicious, what)
    return made
