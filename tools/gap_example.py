"""The README's gap picture (docs/gap-example.png), reproducible from a checkout of this repository:

    python tools/gap_example.py docs/gap-example.png

It writes a **synthetic** cache with a planted modality gap (tests/support/synth.py: each class a random
concept; text = concept + a shared text offset + per-class noise; images = a fixed linear distortion of the
concept + a shared image offset + noise; 12 classes, 32-d, not CLIP features), fits CMM on it with the
default settings (4 shots, seed 1) and runs ``cmm-cache gap`` on the run. Every command it runs is printed;
the numbers go to stdout as the command's JSON. Not part of the package.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
IMAGE_NOISE = 0.3  # per-image noise of the synthetic world (0.15 in the tests): CMM is not an easy 100 % here


def run(args: list[str]) -> str:
    print("$ " + shlex.join(args), file=sys.stderr)
    return subprocess.run(args, check=True, stdout=subprocess.PIPE, text=True).stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("picture", help="where to write the PNG (or SVG)")
    ap.add_argument("--json", dest="json_out", default=None, help="also keep gap's JSON here")
    a = ap.parse_args()
    sys.path.insert(0, str(REPO / "tests"))
    from support.synth import make_cache  # the planted-gap world the tests use

    with tempfile.TemporaryDirectory() as tmp:
        cache, _ = make_cache(
            Path(tmp) / "planted-gap.h5", shots=(4,), seeds=(1,), dataset="planted-gap", img_noise=IMAGE_NOISE
        )
        fitted = json.loads(
            run(["cmm-cache", "fit", "--cache", str(cache), "--shots", "4", "--seed", "1",
                 "--runs-dir", str(Path(tmp) / "runs"), "--json"])
        )  # fmt: skip
        out = run(["cmm-cache", "gap", "--run", fitted["run"], "--plot", a.picture, "--per-class", "40", "--json"])
    picture = Path(a.picture)
    if picture.suffix.lower() == ".png":  # a 64-colour palette: the same picture at a third of the bytes
        from PIL import Image

        with Image.open(picture) as im:
            small = im.convert("RGB").quantize(colors=64, method=Image.Quantize.MEDIANCUT)
        small.save(picture, optimize=True)
    if a.json_out:
        Path(a.json_out).write_text(out)
    sys.stdout.write(out)


if __name__ == "__main__":
    main()
