"""Reading and checking the published protocol files for `tools/build_manifests.py` (never fixing them)."""

from __future__ import annotations

import ast
import collections
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cmm_cache.datasets.fewshot import group_name, parse_group  # noqa: E402  (the one shot_K-seed_S rule)


def clip_md_templates(md: str) -> dict[str, list[str]]:
    """`## Name` sections of CLIP's data/prompts.md -> its `templates = [...]` list."""
    out = {}
    for sec in re.split(r"^## ", md, flags=re.M)[1:]:
        name = sec.split("\n", 1)[0].strip()
        m = re.search(r"^templates = (\[.*?^\])", sec, flags=re.M | re.S)
        if m:
            out[name] = list(ast.literal_eval(m.group(1)))
    return out


def tip_templates(py: str) -> dict[str, list[str]]:
    """The Tip-Adapter hand-crafted sets (evaluated as literal data, not executed)."""
    tree = ast.parse(py)
    lists = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.List):
            lists[node.targets[0].id] = ast.literal_eval(node.value)
    for node in tree.body:
        if isinstance(node, ast.Assign) and node.targets[0].id == "TIP_ADAPTER_TEMPLATES":
            return {ast.literal_eval(k): lists[v.id] for k, v in zip(node.value.keys, node.value.values)}
    raise SystemExit("TIP_ADAPTER_TEMPLATES not found")


def prompt_name(raw: str) -> str:
    """CoOp prompts with `classname.replace("_", " ")`."""
    return raw.replace("_", " ")


def load_fewshot_files(folder: Path):
    """[(K, S, data)] of the `shot_K-seed_S.json` files, sorted by K, S."""
    out = []
    for f in folder.glob("shot_*-seed_*.json"):
        K, S = parse_group(f.name.removesuffix(".json"))
        out.append((K, S, json.loads(f.read_text())))
    return sorted(out, key=lambda t: (t[0], t[1]))


def check_group(name, K, S, d):
    """The protocol: K per class in train, min(K, 4) per class in val, disjoint."""
    for part, exp in (("train", K), ("val", min(K, 4))):
        c = collections.Counter(r["label"] for r in d[part]["data"])
        bad = {lab: n for lab, n in c.items() if n != exp}
        if bad:
            raise SystemExit(
                f"{name} {group_name(K, S)} {part}: {len(bad)} classes do not have {exp} images: "
                f"{list(bad.items())[:5]}"
            )
        if len(d[part]["indices"]) != len(d[part]["data"]) or len(set(d[part]["indices"])) != len(d[part]["indices"]):
            raise SystemExit(f"{name} {group_name(K, S)} {part}: indices not unique / not aligned")
    tp = {r["impath"] for r in d["train"]["data"]}
    vp = {r["impath"] for r in d["val"]["data"]}
    if tp & vp:
        raise SystemExit(f"{name} {group_name(K, S)}: {len(tp & vp)} images in both train and val")


def rel_after(impath: str, marker: str) -> str:
    """'./data/dtd/images/banded/x.jpg' with marker 'dtd/images/' -> 'banded/x.jpg'."""
    i = impath.find(marker)
    if i < 0:
        raise SystemExit(f"{impath!r} does not contain {marker!r}")
    return impath[i + len(marker) :]


def read_common(protocol: Path) -> dict:
    """Templates and ImageNet class names / WordNet ids, used by several datasets."""
    in80 = [t for t in (protocol / "templates/openai_imagenet_80_templates.txt").read_text().splitlines() if t.strip()]
    in_names = [t for t in (protocol / "classnames/imagenet_classnames_clip.txt").read_text().splitlines() if t.strip()]
    in_wnids = [t for t in (protocol / "classnames/imagenet_wnids.txt").read_text().splitlines() if t.strip()]
    assert len(in_names) == 1000 and len(in_wnids) == 1000 and len(set(in_wnids)) == 1000
    assert len(in80) == 80
    return {
        "tip": tip_templates((protocol / "templates/cross_modal_adaptation_hand_crafted.py").read_text()),
        "clipmd": clip_md_templates((protocol / "templates/openai_CLIP_data_prompts.md").read_text()),
        "in80": in80,
        "in_names": in_names,
        "in_wnids": in_wnids,
        "wnid_pos": {w: i for i, w in enumerate(in_wnids)},
    }
