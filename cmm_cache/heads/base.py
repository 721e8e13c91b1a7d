"""Classifier heads: what a fitted run *is* when it scores images.

A head maps L2-normalized CLIP image features ``x`` [n, d] to class
probabilities [n, C]. Every method (CMM, its ablations, the baselines) ends in
one, and everything downstream — ``eval``, ``predict``, ``export``, shift-set
scoring — uses only this interface, so every run kind is scored the same way:

    head.logits(x, classes=None)   scores whose arg-max is the prediction
    head.probs(x, classes=None)    probabilities (rows sum to 1)
    head.components(x, classes)    named extra scores reported beside the head's
                                   own accuracy (CMM: its logits without fusion)
    head.all_logits(x, classes)    {"head": logits, **components} in one pass
                                   (may add "zero_shot" when it comes for free)
    head.module()                  a plain ``torch.nn.Module`` (exportable with
                                   torch.export): features -> probs
    head.state()                   (arrays, params): arrays go to weights.npz,
                                   params (JSON) to result.json["head"]
    load_head(kind, arrays, params)   the inverse, through the registry

``head.input`` says what a head consumes: ``"features"`` (every head but one: L2-normalized final image
features, as above) or ``"block_inputs"`` (a partial-finetuning head: the raw inputs of the image tower's
last blocks, ``[n, *head.input_shape]``; it normalizes its own output before the linear head).

``classes`` (an index tensor into the head's classes) restricts scoring to
those classes *before* any softmax, as ImageNet-A/-R need (200 of 1000).

A head never needs the cache: a run folder holding its arrays and params can
be scored, exported and used for prediction on its own.
"""

from __future__ import annotations

import importlib
import math
import pkgutil
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from cmm_cache.errors import CmmError

LOGIT_SCALE = 100.0  # CLIP's learned temperature, fixed (every head and the trainers: softmax(100·cos))


def normalize_rows(x: torch.Tensor) -> torch.Tensor:
    """Each row scaled to unit L2 norm (a zero row stays zero)."""
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


# ----------------------------------------------------------------------------
# The registry: every module of this package defines head kinds (found by discovery, no list to keep)


HEADS: dict[str, type[Head]] = {}
_discovered = False


def register_head(cls: type[Head]) -> type[Head]:
    """Class decorator: make a head kind loadable from a run folder."""
    if cls.kind in HEADS and HEADS[cls.kind] is not cls:
        raise ValueError(f"head kind '{cls.kind}' registered twice")
    HEADS[cls.kind] = cls
    return cls


def discover_heads() -> dict[str, type[Head]]:
    """Import every module of :mod:`cmm_cache.heads` once (each registers its kinds) and return the registry.

    A module that fails to import raises its own error here: a broken head module is never mistaken for an
    unknown head kind.
    """
    global _discovered
    if not _discovered:
        import cmm_cache.heads as package

        for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
            importlib.import_module(f"{package.__name__}.{info.name}")
        _discovered = True
    return HEADS


def load_head(kind: str, arrays: dict, params: dict) -> Head:
    """Rebuild a head from what :meth:`Head.state` returned (arrays may be numpy or torch).

    The arrays and params are checked against the head kind's declaration first (:func:`state_problems`):
    a malformed state is one :class:`CmmError` listing what is wrong, never a wrong score."""
    heads = discover_heads()
    if kind not in heads:
        raise CmmError(
            f"Unknown classifier head '{kind}'.",
            f"Known heads: {', '.join(sorted(heads))}. Was the run written by a newer cmm-cache?",
        )
    problems = state_problems(heads[kind], arrays, params)
    if problems:
        raise CmmError(f"The '{kind}' head's state is malformed: {'; '.join(problems)}.", "Fit the run again.")
    tensors = {k: (v if isinstance(v, torch.Tensor) else torch.from_numpy(np.asarray(v))) for k, v in arrays.items()}
    return heads[kind].from_state(tensors, dict(params))


# ----------------------------------------------------------------------------
# What a head's state must look like (checked when a run folder is read)


@dataclass(frozen=True)
class ArraySpec:
    """One array of a head's state: its dimensions by name (the same name = the same size across arrays; ``C``
    is the number of classes, ``d`` the feature size), float or integer, optional or not. Integer arrays with
    ``index_of`` hold indices below that dimension (e.g. class ids below ``C``)."""

    dims: tuple[str, ...]
    kind: str = "float"  # "float" (float16/32/64, finite) or "int"
    optional: bool = False
    index_of: str | None = None


NUMBER = "number"  # a finite int or float (not a bool)
INT = "int"  # an int (not a bool)
BOOL = "bool"
OBJECT = "object"  # a JSON object (dict)
LIST = "list"
_TOKENS = {
    NUMBER: ("a finite number", lambda v: _is_number(v)),
    INT: ("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    BOOL: ("true/false", lambda v: isinstance(v, bool)),
    OBJECT: ("an object", lambda v: isinstance(v, dict)),
    LIST: ("a list", lambda v: isinstance(v, list)),
}


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


def value_problem(name: str, value, allowed) -> str | None:
    """Why `value` (parsed JSON) is none of `allowed`, or None. `allowed` holds NUMBER, INT, BOOL, OBJECT, LIST,
    ``str`` (any string), None (null) or literal strings (exactly that value)."""
    for a in allowed:
        if a is None:
            ok = value is None
        elif a is str:
            ok = isinstance(value, str)
        elif a in _TOKENS:
            ok = _TOKENS[a][1](value)
        else:
            ok = value == a
        if ok:
            return None
    what = [
        "null" if a is None else "a string" if a is str else _TOKENS[a][0] if a in _TOKENS else repr(a) for a in allowed
    ]
    shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
    return f"{name} is {shown}, expected {' or '.join(what)}"


def state_problems(cls: type[Head], arrays: dict, params: dict, dims: dict | None = None) -> list[str]:
    """What is wrong with a head's (arrays, params) for head class `cls` (empty: usable). `dims` fixes sizes
    known from elsewhere (e.g. ``{"C": number of class names}``)."""
    problems: list[str] = []
    sizes = dict(dims or {})
    indices: list[tuple[str, str, int, int]] = []
    if not isinstance(params, dict):
        return [f"params is {type(params).__name__}, expected an object"]
    for name, spec in cls.ARRAYS.items():
        if name not in arrays:
            if not spec.optional:
                problems.append(f"array '{name}' missing")
            continue
        a = arrays[name]
        a = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
        if a.ndim != len(spec.dims):
            problems.append(f"array '{name}' has shape {list(a.shape)}, expected [{', '.join(spec.dims)}]")
            continue
        if spec.kind == "float":
            if a.dtype not in (np.float16, np.float32, np.float64):
                problems.append(f"array '{name}' is {a.dtype}, expected float16/32/64")
                continue
            if not np.all(np.isfinite(a)):
                problems.append(f"array '{name}' holds NaN or infinite values")
        elif not np.issubdtype(a.dtype, np.integer):
            problems.append(f"array '{name}' is {a.dtype}, expected integers")
            continue
        for dim, n in zip(spec.dims, a.shape):
            if dim in sizes and sizes[dim] != n:
                problems.append(f"array '{name}' has {n} for {dim}, other parts say {sizes[dim]}")
            sizes.setdefault(dim, int(n))
        if spec.index_of and a.size:
            indices.append((name, spec.index_of, int(a.min()), int(a.max())))
    for name, dim, lo, hi in indices:  # once every size is known
        if dim in sizes and (lo < 0 or hi >= sizes[dim]):
            problems.append(f"array '{name}' holds indices outside 0..{sizes[dim] - 1}")
    for name, (allowed, required) in cls.PARAMS.items():
        if name not in params:
            if required:
                problems.append(f"param '{name}' missing")
            continue
        why = value_problem(f"param '{name}'", params[name], allowed)
        if why:
            problems.append(why)
    if sizes.get("C", 2) < 2:
        problems.append(f"{sizes['C']} class(es): a classifier needs at least two")
    return problems


class Head:
    """Base class. Subclasses set ``kind`` and implement logits / state / from_state."""

    kind: ClassVar[str] = ""
    # What its state holds (checked before :meth:`from_state`, see :func:`state_problems`): arrays by name, and
    # params by name -> (allowed values, required).
    ARRAYS: ClassVar[dict[str, ArraySpec]] = {}
    PARAMS: ClassVar[dict[str, tuple[tuple, bool]]] = {}
    input: ClassVar[str] = "features"  # or "block_inputs" (see the module docstring)

    def logits(self, x: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def probs(self, x: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
        """Default: softmax of the logits. Heads whose scores are already mixtures override this."""
        return torch.softmax(self.logits(x, classes), dim=-1)

    def components(self, x: torch.Tensor, classes: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        return {}

    def all_logits(self, x: torch.Tensor, classes: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The head's logits and its components; override to share work between them."""
        return {"head": self.logits(x, classes), **self.components(x, classes)}

    def state(self) -> tuple[dict[str, np.ndarray], dict]:
        raise NotImplementedError

    @classmethod
    def from_state(cls, arrays: dict[str, torch.Tensor], params: dict) -> Head:
        raise NotImplementedError

    def to(self, device) -> Head:
        arrays, params = self.state()
        return type(self).from_state(
            {k: torch.from_numpy(np.asarray(v)).to(device, torch.float32) for k, v in arrays.items()}, params
        )

    def module(self) -> torch.nn.Module:
        """A plain torch module (no cmm-cache code at run time once exported) with the same probabilities."""
        raise NotImplementedError(f"head '{self.kind}' has no exportable module")

    @property
    def num_classes(self) -> int:
        raise NotImplementedError


class LinearProbsModule(torch.nn.Module):
    """softmax(normalize(x) Wᵀ + b): the exportable form of any linear head."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.register_buffer("weight", weight.detach().float().clone())
        self.register_buffer(
            "bias", (bias if bias is not None else torch.zeros(weight.shape[0])).detach().float().clone()
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = features / features.norm(p=2, dim=-1, keepdim=True).clamp_min(1e-12)
        return torch.softmax(x @ self.weight.t() + self.bias, -1)
