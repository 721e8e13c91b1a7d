"""The trainer on real CLIP ViT-B/32 features (OxfordPets, the folder named by CMM_REAL_FEATURES).

Those folders hold image features only (Tip-Adapter format, see their README):
16-shot train keys, the whole CoOp val split and the whole test split. This test
converts them into a cmm-cache/1 file and simulates the missing text side:

* The CoOp val split is divided per class (fixed seed): 4 images per class form
  the few-shot *val subset* (used only to choose alpha); the remaining val
  images ("val-rest") are used only to build the text prototypes.
* Text prototype of class k = normalize(m_k + |m_k|·g + 1.0·ξ_k/√d), where m_k is
  the mean of the normalized val-rest features of class k, g a fixed random
  unit vector (a common modality-gap offset) and ξ_k fixed Gaussian noise (an
  imperfect prompt). No test feature and no val-subset feature enters it.

The class-mean baseline is the usual one: prototypes = normalized mean of the
16-shot train features per class (75.0 % test accuracy per the README). CMM
trained on the same 16 shots must beat it, and zero-shot on the simulated text.
"""

from pathlib import Path

import numpy as np
import pytest
from support.text_cache import REAL_SKIP_REASON, load_tip_folder, real_folder

from cmm_cache.cache.reader import Split, open_cache
from cmm_cache.cache.writer import write_cache
from cmm_cache.runs.protocol import fit_run

PETS = real_folder("oxford_pets")
pytestmark = pytest.mark.skipif(PETS is None, reason=REAL_SKIP_REASON)


def convert(folder: Path, out: Path, seed: int = 0) -> tuple[Path, float]:
    """Tip-Adapter folder -> cmm-cache/1 file; returns (path, class-mean baseline test accuracy)."""
    keys, ytr, vf, vl, tf, tl, subset, rest, rng = load_tip_folder(folder, seed)
    C, d = int(ytr.max()) + 1, keys.shape[1]
    unit = lambda a: a / np.linalg.norm(a, axis=-1, keepdims=True)  # noqa: E731
    m = np.stack([unit(vf[rest][vl[rest] == c]).mean(0) for c in range(C)])
    g = unit(rng.standard_normal(d))
    text = unit(m + np.linalg.norm(m, axis=1, keepdims=True) * g + rng.standard_normal((C, d)) / np.sqrt(d))
    baseline_protos = unit(np.stack([keys[ytr == c].mean(0) for c in range(C)]))
    baseline = 100.0 * float(np.mean((unit(tf) @ baseline_protos.T).argmax(1) == tl))
    write_cache(
        out,
        dataset=folder.name,
        backbone="vit-b-32",
        provenance={"model": "ViT-B-32", "source": "Tip-Adapter cache"},
        classnames=[f"class {c}" for c in range(C)],
        text={"simulated": (text, ["simulated from val-rest"])},
        default_templates="simulated",
        splits={
            "train": Split(keys[:, None], ytr, np.arange(len(ytr)), ["center"]),
            "val": Split(vf[subset][:, None], vl[subset], subset, ["center"]),
            "test": Split(tf[:, None], tl, np.arange(len(tl)), ["center"]),
        },
        fewshot={(16, 1): (np.arange(len(ytr)), np.arange(len(subset)))},
    )
    return out, baseline


def test_cmm_on_real_features_beats_class_means_and_zero_shot(tmp_path):
    path, baseline = convert(PETS, tmp_path / "pets.h5")
    assert 74 < baseline < 76  # the README's 75.0 %: the conversion kept rows and labels aligned
    cache = open_cache(path)
    # The paper's schedule (16,000 iterations at lr 1e-4): a few seconds with the compiled loop. A shortcut
    # such as 3,000 iterations at lr 1e-3 is chaotic enough that float rounding alone moves test accuracy
    # by ±3 points (float64 gives 74.5 %, one float32 order of operations 78.9 %); this schedule gives
    # 81.5-81.6 % for every implementation and seed.
    result, _ = fit_run(cache, 16, 1)
    assert result["test_acc"] > baseline + 2
    assert result["test_acc"] > result["zero_shot_test_acc"] + 20
