"""Classify new images with a fitted run: :func:`load_classifier` and the files behind `cmm-cache predict`.

    import cmm_cache
    clf = cmm_cache.load_classifier("~/.cache/cmm-cache/runs/dtd/rn50/cmm-1a2b3c4d/shot_16-seed_1")
    probs = clf.predict(["photo.jpg", "other.png"])     # [2, C] probabilities
    print(clf.classes[int(probs[0].argmax())])

A prediction is exactly what `eval` scores from the cache: the run's backbone
(its identity checked against the run's provenance: model, weights, random-
weights seed, feature size, preprocessing), the same encoder code as
`extract` (:func:`cmm_cache.extract.encode.iter_encoded`: decoding workers, float16
rounding of the raw features as the cache stores them), the same
normalization, then the run's head (for CMM: W, T, T0 and the alpha/fusion
chosen on val).

A run whose head fine-tuned the image tower's last blocks (``cross-modal-partial-ft``; ``head.input ==
"block_inputs"``) consumes block inputs instead: the backbone's tower is cut where the run's cache was
cut (:mod:`cmm_cache.backbones.cut`; the frozen part's weight fingerprint must be the run's), the images
go through that frozen part, are rounded to float16 as the cache stores block inputs, and the head runs
its fine-tuned blocks on them.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cmm_cache.backbones.identity import backbone_differences, describe_differences, is_local_weights
from cmm_cache.backbones.load import load_backbone
from cmm_cache.backbones.registry import resolve_backbone
from cmm_cache.backbones.weights import known_local_weights
from cmm_cache.errors import CmmError
from cmm_cache.extract.encode import (
    ImageItem,
    configure_cpu_threads,
    default_num_workers,
    encode_block_inputs,
    encode_image_batch,
    iter_encoded,
)
from cmm_cache.heads.base import normalize_rows
from cmm_cache.heads.run_folder import Run, load_run
from cmm_cache.util.device import resolve_device
from cmm_cache.util.paths import is_image_file

LIST_SUFFIXES = (".csv", ".tsv", ".txt")
_PATH_COLUMNS = ("path", "image", "file", "filename", "filepath")


# ----------------------------------------------------------------------------
# The run's backbone


def check_backbone(run: Run, loaded: dict) -> None:
    """Refuse a backbone whose fingerprint differs from the one recorded with the run's cache
    (:mod:`cmm_cache.backbones.identity`: the same rule ``eval`` applies to a cache)."""
    diff = backbone_differences(run.provenance, loaded)
    if diff:
        raise CmmError(
            f"The backbone loaded for the run at {run.path} is not the one its features came from "
            f"({describe_differences(diff, 'run', 'loaded')}).",
            "Pass --pretrained with the weights file the cache was extracted with (same sha256), "
            "and use the open_clip version that extracted it.",
        )


def run_weights(run: Run, pretrained: str | os.PathLike | None = None) -> tuple[str | None, str | None]:
    """(weights file to load, its expected sha256) for the run's backbone: never a file the run folder names.

    The weights come from the user: `pretrained` (``--pretrained``), else, for a cache extracted from a local
    file, the user's own private record of the local files they loaded (found by the sha256 the run records),
    else the backbone's pretrained tag from the user's weights cache (None here: resolved by name). The sha256
    the run records is checked before anything is loaded (:func:`cmm_cache.backbones.load.load_backbone`).
    """
    prov = run.provenance
    want = prov.get("weights_sha256") or None
    if pretrained is not None:
        p = Path(pretrained).expanduser()
        if not p.is_file():
            raise CmmError(f"Weights file {p} does not exist.", "Pass --pretrained with an existing weights file.")
        if want is None:
            raise CmmError(
                f"The run at {run.path} was fitted on features of {prov.get('model')} without a weights file "
                "(random weights or a hub model); --pretrained does not apply.",
                "Run the command without --pretrained.",
            )
        return str(p), want
    if is_local_weights(prov) and want:
        found = known_local_weights(want)
        if found is None:
            raise CmmError(
                f"The run at {run.path} was fitted on features of a local weights file (sha256 {want[:16]}..., "
                f"recorded as {prov.get('weights_path')}); a run folder never names the file to load.",
                "Pass --pretrained PATH with that weights file (its sha256 is checked before it is loaded).",
            )
        return found, want
    return None, want


def load_run_backbone(run: Run, device: str = "cpu", pretrained: str | os.PathLike | None = None):
    """The run's backbone on `device`: weights from the user (:func:`run_weights`), their sha256 checked
    against the run's record before loading, the loaded backbone's fingerprint after."""

    prov = run.provenance
    weights, want = run_weights(run, pretrained)
    spec = resolve_backbone(str(run.result.get("backbone") or prov.get("backbone")), weights)
    bb = load_backbone(spec, device=device, expect_sha256=want)
    check_backbone(run, bb.provenance())
    return bb


def run_cut(run: Run, backbone):
    """The backbone's tower cut where the run's block inputs were cut; refused unless its frozen part is the one
    the run's cache was extracted with (same weight fingerprint, same input shape)."""
    from cmm_cache.backbones.cut import cut_tower

    want = run.head.cut
    cut = cut_tower(backbone.model.visual, int(want["blocks"]))
    if cut.prefix_sha256 != want.get("prefix_sha256") or list(cut.input_shape) != list(want["input_shape"]):
        raise CmmError(
            f"The backbone loaded for the run at {run.path} does not give the block inputs the run was fitted on "
            f"(frozen part sha256 {cut.prefix_sha256[:12]}... vs {str(want.get('prefix_sha256'))[:12]}..., "
            f"input {list(cut.input_shape)} vs {list(want['input_shape'])}).",
            "Pass --pretrained with the weights file the cache was extracted with (same sha256).",
        )
    return cut


# ----------------------------------------------------------------------------
# Inputs: image files, folders, lists of paths


def _read_list(f: Path) -> list[str]:
    """Paths in a CSV/TSV/TXT (a `path` column if there is a header, else the first column), relative to it."""
    try:
        text = f.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise CmmError(
            f"The list {f} is not UTF-8 text (byte {e.start}: {e.reason}).",
            "Save it as UTF-8 (a CSV/TSV/TXT list of image paths, one per line).",
        ) from None
    except OSError as e:
        raise CmmError(f"Cannot read the list {f} ({e.strerror or e}).") from None
    rows = [r for r in csv.reader(text.splitlines(), delimiter="\t" if f.suffix.lower() == ".tsv" else ",") if r]
    col = 0
    if rows:
        header = [c.strip().lower() for c in rows[0]]
        named = [i for i, c in enumerate(header) if c in _PATH_COLUMNS]
        if named or not (f.parent / rows[0][0].strip()).exists():
            col, rows = (named[0] if named else 0), rows[1:]
    return [str((f.parent / r[col].strip()).expanduser()) for r in rows if len(r) > col and r[col].strip()]


def collect_images(inputs: Sequence[str | os.PathLike]) -> list[str]:
    """Image paths from files, folders (searched recursively by extension) and CSV/TSV/TXT lists."""

    out: list[str] = []
    missing = []
    for item in inputs:
        p = Path(item).expanduser()
        if p.is_dir():
            for dirpath, dirnames, filenames in os.walk(p):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                out.extend(str(Path(dirpath) / n) for n in sorted(filenames) if is_image_file(n))
        elif p.is_file() and p.suffix.lower() in LIST_SUFFIXES:
            out.extend(_read_list(p))
        elif p.is_file():
            out.append(str(p))
        else:
            missing.append(str(p))
    if missing:
        raise CmmError(
            f"{len(missing)} input(s) not found: {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else ""),
            "Give image files, folders of images, or a CSV/TSV/TXT list of image paths.",
        )
    out = list(dict.fromkeys(out))
    if not out:
        raise CmmError(
            f"No images found in {', '.join(map(str, inputs))}.",
            "Image files are recognised by their extension (.jpg, .png, ...).",
        )
    return out


# ----------------------------------------------------------------------------
# The classifier


@dataclass
class FilePredictions:
    """Probabilities of the images that could be read (rows of `probs`, in `paths` order) and the rest."""

    paths: list[str]
    probs: torch.Tensor  # [n, C]
    skipped: list[dict] = field(default_factory=list)  # {"path", "error"}


class Classifier:
    """A fitted run ready to classify images or features (see :func:`load_classifier`)."""

    def __init__(self, run: Run, device: str = "cpu", pretrained: str | os.PathLike | None = None):
        self.run = run
        self.device = str(device)
        self.pretrained = pretrained
        self.head = run.head.to(self.device)
        self.classes: list[str] = list(run.classnames)
        self._backbone = None
        self._cut = None

    @property
    def backbone(self):
        """The run's backbone (loaded and checked on first use; features-only use never loads it)."""
        if self._backbone is None:
            self._backbone = load_run_backbone(self.run, self.device, self.pretrained)
        return self._backbone

    @property
    def blocks(self) -> bool:
        """Whether the run's head consumes block inputs (a partial-finetuning run)."""
        return getattr(self.head, "input", "features") == "block_inputs"

    @property
    def cut(self):
        """The backbone's tower cut as the run's cache was (block-input heads only; checked on first use)."""
        if self._cut is None:
            self._cut = run_cut(self.run, self.backbone)
        return self._cut

    @property
    def transform(self):
        """The backbone's preprocessing: PIL image -> tensor [3, H, W] (what `predict` on tensors expects)."""
        return self.backbone.preprocess

    def predict_features(self, features) -> torch.Tensor:
        """Probabilities [n, C] of raw CLIP image features [n, d] (as the cache stores them; any scale); for a
        block-input head, of block inputs [n, *input_shape] (as the cache stores them)."""
        f = torch.as_tensor(np.asarray(features, dtype=np.float32) if not torch.is_tensor(features) else features)
        if self.blocks:
            shape = tuple(self.head.input_shape)
            if tuple(f.shape[1:]) != shape:
                raise CmmError(
                    f"Expected block inputs of shape [n, {', '.join(map(str, shape))}], got {list(f.shape)}.",
                    "This run fine-tuned the image tower's last blocks: pass images, or the cached block inputs.",
                )
            with torch.no_grad():
                return self.head.probs(f.detach().to(self.device, torch.float32)).cpu()
        if f.ndim != 2 or f.shape[1] != self.run.embed_dim:
            raise CmmError(
                f"Expected features of shape [n, {self.run.embed_dim}], got {list(f.shape)}.",
                "Pass raw image features of the run's backbone, or images.",
            )
        x = normalize_rows(f.detach().to("cpu", torch.float32).contiguous()).to(self.device)
        with torch.no_grad():
            return self.head.probs(x).cpu()

    def encode(self, images: torch.Tensor) -> np.ndarray:
        """Raw features of preprocessed images [n, 3, H, W], rounded to float16 exactly as `extract` does."""

        x = images.to(self.device)
        if self.blocks:  # the frozen tower up to the cut, as the cache stores block inputs
            return encode_block_inputs(self.cut, x, self.device).cpu().numpy()
        return encode_image_batch(self.backbone.model, x, self.device).cpu().numpy().astype(np.float16)

    def predict(self, x, batch_size: int = 64) -> torch.Tensor:
        """Probabilities [n, C] of: image paths, PIL images, preprocessed images [n, 3, H, W] (or [3, H, W]),
        or raw features [n, d]."""
        if isinstance(x, (str, os.PathLike)) or _is_pil(x):
            x = [x]
        if isinstance(x, (list, tuple)):
            if all(isinstance(i, (str, os.PathLike)) for i in x):
                got = self.predict_files([str(i) for i in x], batch_size=batch_size)
                return got.probs
            if all(_is_pil(i) for i in x):
                x = torch.stack([self.transform(i.convert("RGB")) for i in x])
            else:
                raise CmmError("predict() takes image paths, PIL images, an image tensor or a feature matrix.")
        t = torch.as_tensor(x) if not torch.is_tensor(x) else x
        if t.ndim == 2 or (self.blocks and tuple(t.shape[1:]) == tuple(self.head.input_shape)):
            return self.predict_features(t)
        if t.ndim == 3:
            t = t.unsqueeze(0)
        if t.ndim != 4:
            raise CmmError(f"Expected images [n, 3, H, W] or features [n, d], got shape {list(t.shape)}.")
        feats = [self.encode(t[i : i + batch_size]) for i in range(0, len(t), batch_size)]
        return self.predict_features(np.concatenate(feats).astype(np.float32))

    def predict_files(
        self,
        paths: Sequence[str],
        *,
        batch_size: int = 64,
        num_workers: int | None = None,
        skip_bad: bool = False,
        progress: Callable[[int, int], None] | None = None,
        max_image_pixels: int | None = None,
    ) -> FilePredictions:
        """Decode and encode image files as `extract` does, batch by batch, and classify them.

        An unreadable file is reported by path: without `skip_bad` one error
        lists them all (after the pass, so every bad file is named at once).
        """
        ok, probs, skipped = [], [], []
        files = self.iter_files(
            paths, batch_size=batch_size, num_workers=num_workers, progress=progress, max_image_pixels=max_image_pixels
        )
        for path, p, err in files:
            if err is not None:
                skipped.append({"path": path, "error": err})
            else:
                ok.append(path)
                probs.append(p)
        if skipped and (not skip_bad or not ok):
            shown = "\n  ".join(f"{s['path']}: {s['error']}" for s in skipped[:10])
            more = f"\n  ... and {len(skipped) - 10} more" if len(skipped) > 10 else ""
            raise CmmError(
                f"{len(skipped)} of {len(paths)} image(s) cannot be read:\n  {shown}{more}",
                "Fix or remove them, or pass --skip-bad to classify the others."
                if ok
                else "None is left to classify: check that the paths are image files (JPEG, PNG, ...), not damaged.",
            )
        C = len(self.classes)
        return FilePredictions(ok, torch.cat(probs) if probs else torch.zeros(0, C), skipped)

    def iter_files(
        self, paths, *, batch_size=64, num_workers=None, progress=None, max_image_pixels=None
    ) -> Iterator[tuple]:
        """(path, probabilities [1, C] or None, error or None) per file, in order (an image above
        `max_image_pixels`, default :data:`~cmm_cache.extract.encode.DEFAULT_MAX_IMAGE_PIXELS`, is an error)."""

        items = [ImageItem(key=i, path=str(p), views=1, block_views=int(self.blocks)) for i, p in enumerate(paths)]
        cut = self.cut if self.blocks else None
        batches = [list(range(i, min(len(items), i + batch_size))) for i in range(0, len(items), batch_size)]
        workers = default_num_workers(self.device) if num_workers is None else int(num_workers)
        threads = torch.get_num_threads()
        if not self.device.startswith("cuda"):
            configure_cpu_threads(workers)  # leave the decoding workers their cores, as extract does
        done = 0
        try:
            if progress:
                progress(0, len(items))
            for eb in iter_encoded(
                self.backbone, items, batches, num_workers=workers, max_image_pixels=max_image_pixels, cut=cut
            ):
                good = [i for i, f in enumerate(eb.features) if f is not None]
                rows = eb.blocks if cut is not None else eb.features  # block inputs for a block-input head
                p = self.predict_features(np.stack([rows[i][0] for i in good]).astype(np.float32)) if good else None
                rows = {i: p[j : j + 1] for j, i in enumerate(good)}
                for i, key in enumerate(eb.keys):
                    yield items[key].path, rows.get(i), eb.errors[i]
                done += len(eb.keys)
                if progress:
                    progress(done, len(items))
        finally:
            torch.set_num_threads(threads)


def _is_pil(x) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover
        return False
    return isinstance(x, Image.Image)


def load_classifier(run_dir: str | os.PathLike, device: str = "auto", pretrained=None) -> Classifier:
    """A fitted run (any method) as a classifier: ``predict(images or features) -> probabilities``,
    ``classes`` and ``transform`` (the backbone's preprocessing). `pretrained`: the local weights file,
    when the cache was extracted from one that has moved since."""

    return Classifier(load_run(Path(run_dir).expanduser()), resolve_device(device), pretrained)


def top_k(probs: torch.Tensor, classes: list[str], k: int) -> list[list[dict]]:
    """Per row, the k most probable classes: [{"class", "index", "prob"}, ...] best first."""
    k = max(1, min(int(k), probs.shape[1]))
    p, i = torch.topk(probs, k, dim=1)
    return [
        [{"class": classes[int(c)], "index": int(c), "prob": float(q)} for q, c in zip(pr, ir)] for pr, ir in zip(p, i)
    ]
