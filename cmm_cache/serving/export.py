"""Export a fitted run as one self-contained file that plain PyTorch loads: no cmm-cache, no open_clip.

    import torch
    model = torch.export.load("dtd-cmm.pt2").module()
    probs = model(images)            # preprocessed images [n, 3, H, W] -> class probabilities [n, C]

The full model is the backbone's image tower, the float16 rounding of its raw
features (the cache stores float16, so this is what `eval` and `predict`
score), the L2 normalization and the run's head. With ``head_only`` the file
takes raw CLIP image features [n, d] (any scale) instead of images.

A partial-finetuning run (its head consumes block inputs) exports as the frozen tower up to the cut, the
float16 rounding of the block inputs (as the cache stores them), then its fine-tuned blocks and linear
head; with ``head_only`` the file takes the block inputs [n, *input_shape].

Why `torch.export` (a ``.pt2`` ExportedProgram): it is PyTorch's supported
path for a self-contained graph (``torch.jit.script``/``trace`` are deprecated
and warn as of torch 2.14), it needs nothing beyond torch to load, and it keeps
a dynamic batch size. ONNX would need an extra exporter and runtime for a
model that torch runs as it is. The class names and the preprocessing travel
inside the file (``extra_files["cmm_cache.json"]``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from cmm_cache.errors import CmmError
from cmm_cache.heads.run_folder import load_run
from cmm_cache.serving.predict import Classifier
from cmm_cache.util.atomic import atomic_path

META_NAME = "cmm_cache.json"


class ImageClassifier(torch.nn.Module):
    """Preprocessed images -> probabilities: image tower, float16 rounding (as the cache), head."""

    def __init__(self, visual: torch.nn.Module, head: torch.nn.Module):
        super().__init__()
        self.visual = visual
        self.head = head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        feats = self.visual(images).float()
        return self.head(feats.to(torch.float16).to(torch.float32))


class BlockImageClassifier(torch.nn.Module):
    """Preprocessed images -> probabilities for a block-input head: the frozen tower up to the cut, float16
    rounding (as the cache stores block inputs), the head's fine-tuned blocks and linear head."""

    def __init__(self, prefix: torch.nn.Module, head: torch.nn.Module):
        super().__init__()
        self.prefix = prefix
        self.head = head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        h = self.prefix(images).float()
        return self.head(h.to(torch.float16).to(torch.float32))


def _meta(clf, head_only: bool) -> dict:
    prov = clf.run.provenance
    pre = prov.get("preprocessing") or {}
    inputs = "raw image features [n, d]"
    if clf.blocks:
        shape = ", ".join(str(v) for v in clf.head.input_shape)
        inputs = f"block inputs [n, {shape}] (the input of the image tower's last {clf.head.cut['blocks']} block(s))"
    return {
        "input": inputs if head_only else "preprocessed images [n, 3, H, W]",
        "output": "class probabilities [n, C]",
        "classes": clf.classes,
        "embed_dim": clf.run.embed_dim,
        "image_size": prov.get("image_size"),
        "preprocessing": pre,
        "backbone": clf.run.result.get("backbone"),
        "model": prov.get("model"),
        "weights_sha256": prov.get("weights_sha256"),
        "method": clf.run.result.get("method") or "cmm",
        "config_key": clf.run.result.get("config_key"),
        "run": str(clf.run.path),
    }


def export_run(run_dir: str | os.PathLike, out: str | os.PathLike, *, head_only: bool = False, pretrained=None) -> dict:
    """Write the run as a ``torch.export`` file at `out` (atomically); returns its metadata.

    Exported on the CPU in float32 (the file runs anywhere torch does).
    """

    clf = Classifier(load_run(run_dir), "cpu", pretrained)
    head = clf.run.head.module().eval()
    batch = torch.export.Dim("batch", min=1)
    if head_only:
        shape = tuple(clf.head.input_shape) if clf.blocks else (clf.run.embed_dim,)
        module, example = head, torch.randn(2, *shape)
    else:
        bb = clf.backbone  # loads and checks the backbone against the run's provenance
        h, w = bb.image_size
        if clf.blocks:  # the frozen part of the tower (checked against the run's fingerprint), then the head
            module = BlockImageClassifier(clf.cut.prefix, head).eval()
        else:
            module = ImageClassifier(bb.model.visual, head).eval()
        example = torch.randn(2, 3, int(h), int(w))
    try:
        with torch.no_grad():
            program = torch.export.export(module, (example,), dynamic_shapes=({0: batch},))
    except Exception as e:  # an architecture torch.export cannot trace
        raise CmmError(
            f"torch.export could not export the run at {clf.run.path} ({type(e).__name__}: {e}).",
            "Export the head alone with --head-only (features in, probabilities out).",
        ) from e
    meta = _meta(clf, head_only)
    with atomic_path(Path(out), suffix=".pt2") as tmp:
        torch.export.save(program, tmp, extra_files={META_NAME: json.dumps(meta)})
    return {**meta, "path": str(out), "bytes": Path(out).stat().st_size}


def load_meta(path: str | os.PathLike) -> dict:
    """The metadata stored in an exported file (class names, input kind, preprocessing)."""
    extra = {META_NAME: ""}
    torch.export.load(path, extra_files=extra)
    return json.loads(extra[META_NAME])
