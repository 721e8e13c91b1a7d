"""Published numbers as data: load, validate and look up the figures other papers and repositories report.

The figures live in ``data_manifests/published/*.json`` (installed as ``cmm_cache.data_manifests/published``),
one file per source. ``data_manifests/published/README.md`` is the schema; in short, a file is

    {"schema": "cmm-published/1", "id": <file stem>, "title", "reference", "url", "decimals", "about",
     "entries": [<entry>, ...]}

and an entry is

    {"method", "table", "dataset" (or "average" with "datasets"), "backbone", "shots", "seeds", "value",
     "metric": "top1", "selection", "source", optional "variant", "shift", "std", "note",
     "per_dataset_table", "mean_of_variants", "average_check_skip"}

Everything is checked when loaded; anything wrong raises :class:`~cmm_cache.errors.CmmError` naming the file and
the entry. :func:`average_mismatches` recomputes every average a source gives together with its parts (the mean
over datasets of a ``per_dataset_table``, or the mean of ``mean_of_variants``) and lists where the published
average disagrees beyond rounding.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from cmm_cache.backbones.registry import list_backbones
from cmm_cache.datasets import manifests

from ..errors import CmmError

SCHEMA = "cmm-published/1"
SELECTIONS = ("test", "full-val", "few-shot-val", "none")
SELECTION_MEANING = {
    "test": "hyper-parameters, epochs or the reported run chosen on the test set",
    "full-val": "chosen on a full validation split (CoOp's val, larger than the few-shot budget)",
    "few-shot-val": "chosen on a few-shot validation set (min(K, 4) images per class)",
    "none": "no selection: fixed hyper-parameters (or none to choose)",
}
SHOTS = (0, 1, 2, 4, 8, 16)
METRICS = ("top1",)
AVERAGE = "average"

FILE_KEYS = {"schema", "id", "title", "reference", "url", "decimals", "about", "entries"}
FILE_REQUIRED = ("schema", "id", "title", "reference", "decimals", "entries")
ENTRY_REQUIRED = ("method", "table", "dataset", "backbone", "shots", "seeds", "value", "metric", "selection", "source")
ENTRY_OPTIONAL = (
    "datasets",
    "variant",
    "shift",
    "std",
    "note",
    "per_dataset_table",
    "mean_of_variants",
    "average_check_skip",
)
PAPER_SOURCE_KEYS = ({"paper", "table"}, {"url", "version"})
REPO_SOURCE_KEYS = ({"repo", "file", "commit"}, {"url"})

_SLUG = re.compile(r"^[a-z0-9][a-z0-9+._-]*$")
_REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class Entry:
    """One published figure (validated); ``file`` is the source file's id, ``index`` its place in that file."""

    method: str
    table: str
    dataset: str
    backbone: str
    shots: int
    seeds: tuple[int, ...] | None
    value: float
    metric: str
    selection: str
    source: dict = field(hash=False)
    datasets: tuple[str, ...] | None = None
    variant: str | None = None
    shift: str | None = None
    std: float | None = None
    note: str | None = None
    per_dataset_table: str | None = None
    mean_of_variants: tuple[str, ...] | None = None
    average_check_skip: str | None = None
    file: str = ""
    index: int = -1
    decimals: int = 2

    @property
    def is_average(self) -> bool:
        return self.dataset == AVERAGE

    def source_label(self) -> str:
        """Where the figure comes from, in one line (``paper, table`` or ``owner/repo file @ commit[:7]``)."""
        s = self.source
        if "paper" in s:
            return f"{s['paper']}, {s['table']}"
        return f"{s['repo']} {s['file']} @ {s['commit'][:7]}"

    def where(self) -> str:
        return f"{self.file}.json entry {self.index}"


# ---------------------------------------------------------------- where the files are


def published_dir() -> Path:
    """The folder holding the published-number files (``cmm_cache.data_manifests/published``)."""
    return Path(str(resources.files("cmm_cache.data_manifests") / "published"))


def list_published() -> list[str]:
    """Ids (file stems) of the shipped published-number files, sorted."""
    d = published_dir()
    return sorted(p.stem for p in d.glob("*.json")) if d.is_dir() else []


# ---------------------------------------------------------------- names the project knows


def _dataset_names() -> tuple[set[str], set[str]]:
    """(registered dataset names, those of kind ``shift``), from the dataset registry."""
    names = set(manifests.list_datasets())
    shifts = {n for n in names if manifests.get_manifest(n).get("kind") == "shift"}
    return names, shifts


def _backbone_names() -> set[str]:
    """cmm-cache's names of pretrained backbones (the registry's aliases with OpenAI weights)."""
    return {b.name for b in list_backbones() if b.pretrained}


# ---------------------------------------------------------------- validation


def _is_number(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _entry_problems(e: dict, datasets: set[str], shifts: set[str], backbones: set[str]) -> list[str]:
    if not isinstance(e, dict):
        return ["is not a JSON object"]
    p = []
    missing = [k for k in ENTRY_REQUIRED if k not in e]
    if missing:
        p.append(f"missing {', '.join(missing)}")
    unknown = sorted(set(e) - set(ENTRY_REQUIRED) - set(ENTRY_OPTIONAL))
    if unknown:
        p.append(f"unknown field(s) {', '.join(unknown)}")
    for key in ("method", "table"):
        v = e.get(key)
        if key in e and not (isinstance(v, str) and _SLUG.match(v)):
            p.append(f"{key} {v!r} is not a lowercase name (letters, digits, + . _ -)")
    if "backbone" in e and e["backbone"] not in backbones:
        p.append(f"backbone {e['backbone']!r} is not one of {', '.join(sorted(backbones))}")
    if "shots" in e and not (isinstance(e["shots"], int) and not isinstance(e["shots"], bool) and e["shots"] in SHOTS):
        p.append(f"shots {e['shots']!r} is not one of {', '.join(map(str, SHOTS))}")
    if "seeds" in e:
        s = e["seeds"]
        ok = s is None or (
            isinstance(s, list)
            and s
            and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in s)
            and len(set(s)) == len(s)
        )
        if not ok:
            p.append(f"seeds {s!r} must be null or a non-empty list of distinct non-negative integers")
    for key in ("value", "std"):
        if key not in e:
            continue
        v = e[key]
        if not _is_number(v) or not math.isfinite(v) or not 0 <= v <= 100:
            p.append(f"{key} {v!r} is not a finite number in [0, 100]")
    if "metric" in e and e["metric"] not in METRICS:
        p.append(f"metric {e['metric']!r} is not one of {', '.join(METRICS)}")
    if "selection" in e and e["selection"] not in SELECTIONS:
        p.append(f"selection {e['selection']!r} is not one of {', '.join(SELECTIONS)}")
    if "dataset" in e:
        d = e["dataset"]
        if d == AVERAGE:
            ds = e.get("datasets")
            if not (isinstance(ds, list) and ds and all(isinstance(x, str) for x in ds)):
                p.append("dataset 'average' needs a non-empty list 'datasets' (the datasets averaged)")
            else:
                bad = [x for x in ds if x not in datasets]
                if bad:
                    p.append(f"datasets {bad} are not registered dataset names")
                if len(set(ds)) != len(ds):
                    p.append("datasets lists a dataset twice")
        else:
            if d not in datasets:
                p.append(f"dataset {d!r} is neither 'average' nor a registered dataset name")
            if "datasets" in e:
                p.append("'datasets' belongs only to entries with dataset 'average'")
    if "shift" in e:
        if e["shift"] not in shifts:
            p.append(f"shift {e['shift']!r} is not a registered shift set ({', '.join(sorted(shifts))})")
    for key in ("variant", "note", "average_check_skip"):
        if key in e and not (isinstance(e[key], str) and e[key].strip()):
            p.append(f"{key} must be a non-empty string")
    if "per_dataset_table" in e:
        v = e["per_dataset_table"]
        if not (isinstance(v, str) and _SLUG.match(v)):
            p.append(f"per_dataset_table {v!r} is not a table name")
        if e.get("dataset") != AVERAGE:
            p.append("per_dataset_table belongs only to entries with dataset 'average'")
    if "mean_of_variants" in e:
        v = e["mean_of_variants"]
        if not (isinstance(v, list) and len(v) >= 2 and all(isinstance(x, str) and x for x in v)):
            p.append("mean_of_variants must list at least two variant names")
    if "source" in e:
        p += _source_problems(e["source"])
    return p


def _source_problems(s) -> list[str]:
    if not isinstance(s, dict):
        return ["source must be an object: {paper, table} or {repo, file, commit}"]
    keys = set(s)
    for required, optional in (PAPER_SOURCE_KEYS, REPO_SOURCE_KEYS):
        if required <= keys:
            extra = keys - required - optional
            if extra:
                return [f"source has unknown field(s) {', '.join(sorted(extra))}"]
            p = [f"source {k} must be a non-empty string" for k in sorted(keys) if not (isinstance(s[k], str) and s[k])]
            if p:
                return p
            if "repo" in s and not _REPO.match(s["repo"]):
                p.append(f"source repo {s['repo']!r} is not owner/name")
            if "commit" in s and not _COMMIT.match(s["commit"]):
                p.append(f"source commit {s['commit']!r} is not 40 lowercase hex digits")
            return p
    return [f"source {s!r} must give paper + table, or repo + file + commit"]


def validate_document(doc, name: str) -> list[Entry]:
    """The entries of one published-number document, validated; :class:`CmmError` naming file and entry otherwise."""
    where = f"published numbers {name}.json"
    if not isinstance(doc, dict):
        raise CmmError(f"{where}: must hold one JSON object.")
    missing = [k for k in FILE_REQUIRED if k not in doc]
    if missing:
        raise CmmError(f"{where}: missing {', '.join(missing)}.")
    unknown = sorted(set(doc) - FILE_KEYS)
    if unknown:
        raise CmmError(f"{where}: unknown field(s) {', '.join(unknown)}.")
    if doc["schema"] != SCHEMA:
        raise CmmError(f"{where}: schema {doc['schema']!r}, expected {SCHEMA!r}.")
    if doc["id"] != name:
        raise CmmError(f"{where}: id {doc['id']!r} must equal the file name {name!r}.")
    for key in ("title", "reference"):
        if not (isinstance(doc[key], str) and doc[key].strip()):
            raise CmmError(f"{where}: {key} must be a non-empty string.")
    dec = doc["decimals"]
    if not (isinstance(dec, int) and not isinstance(dec, bool) and 0 <= dec <= 4):
        raise CmmError(f"{where}: decimals {dec!r} must be an integer 0-4 (the precision the source prints).")
    entries = doc["entries"]
    if not (isinstance(entries, list) and entries):
        raise CmmError(f"{where}: entries must be a non-empty list.")
    datasets, shifts = _dataset_names()
    backbones = _backbone_names()
    out, seen = [], {}
    for i, e in enumerate(entries):
        problems = _entry_problems(e, datasets, shifts, backbones)
        if problems:
            raise CmmError(f"{where}, entry {i} ({_describe(e)}): {'; '.join(problems)}.")
        entry = Entry(
            method=e["method"],
            table=e["table"],
            dataset=e["dataset"],
            backbone=e["backbone"],
            shots=e["shots"],
            seeds=None if e["seeds"] is None else tuple(e["seeds"]),
            value=float(e["value"]),
            metric=e["metric"],
            selection=e["selection"],
            source=dict(e["source"]),
            datasets=tuple(e["datasets"]) if "datasets" in e else None,
            variant=e.get("variant"),
            shift=e.get("shift"),
            std=None if e.get("std") is None else float(e["std"]),
            note=e.get("note"),
            per_dataset_table=e.get("per_dataset_table"),
            mean_of_variants=tuple(e["mean_of_variants"]) if "mean_of_variants" in e else None,
            average_check_skip=e.get("average_check_skip"),
            file=name,
            index=i,
            decimals=dec,
        )
        key = _identity(entry)
        if key in seen:
            raise CmmError(f"{where}, entry {i} ({_describe(e)}): the same figure as entry {seen[key]}.")
        seen[key] = i
        out.append(entry)
    return out


def _identity(e: Entry) -> tuple:
    return (e.method, e.variant, e.table, e.dataset, e.shift, e.backbone, e.shots, e.metric)


def _describe(e) -> str:
    if not isinstance(e, dict):
        return "?"
    bits = [str(e.get(k)) for k in ("method", "variant", "dataset", "shift", "backbone") if e.get(k) is not None]
    if "shots" in e:
        bits.append(f"{e['shots']}-shot")
    return " ".join(bits) or "?"


# ---------------------------------------------------------------- loading and looking up


def _read(path: Path) -> list[Entry]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise CmmError(f"published numbers {path.name}: not valid JSON: {err}") from err
    return validate_document(doc, path.stem)


def load_published(name: str | None = None) -> list[Entry]:
    """Every published figure (or those of file ``name``, e.g. ``"gda"``), validated, in file order."""
    d = published_dir()
    names = list_published()
    if name is not None:
        if name not in names:
            raise CmmError(f"No published numbers named {name!r}.", f"Shipped: {', '.join(names) or 'none'} (in {d}).")
        names = [name]
    out = []
    for n in names:
        out += _read(d / f"{n}.json")
    return out


def sources() -> dict[str, dict]:
    """Each file's header (title, reference, url, decimals, about), by file id."""
    d = published_dir()
    out = {}
    for n in list_published():
        doc = json.loads((d / f"{n}.json").read_text(encoding="utf-8"))
        out[n] = {k: v for k, v in doc.items() if k not in ("entries", "schema")} if isinstance(doc, dict) else {}
    return out


_UNSET = object()


def lookup(
    entries: list[Entry] | None = None,
    *,
    method: str | None = None,
    dataset: str | None = None,
    backbone: str | None = None,
    shots: int | None = None,
    table: str | None = None,
    selection: str | None = None,
    file: str | None = None,
    variant=_UNSET,
    shift=_UNSET,
) -> list[Entry]:
    """The entries matching every criterion given (``None`` = any; for ``variant``/``shift`` pass ``None``
    explicitly to ask for entries without one). Searches all shipped files unless ``entries`` is given."""
    pool = load_published() if entries is None else entries
    crit = {
        "method": method,
        "dataset": dataset,
        "backbone": backbone,
        "shots": shots,
        "table": table,
        "selection": selection,
        "file": file,
    }
    out = [e for e in pool if all(v is None or getattr(e, k) == v for k, v in crit.items())]
    if variant is not _UNSET:
        out = [e for e in out if e.variant == variant]
    if shift is not _UNSET:
        out = [e for e in out if e.shift == shift]
    return out


# ---------------------------------------------------------------- checking a source's own averages


def _tolerance(avg: Entry, parts: list[Entry]) -> float:
    """How far a published mean may sit from the mean of its published (rounded) parts."""
    part_dec = min(p.decimals for p in parts)
    return 0.5 * 10.0**-avg.decimals + 0.5 * 10.0**-part_dec + 1e-9


def _same(e: Entry, a: Entry, *fields: str) -> bool:
    return all(getattr(e, f) == getattr(a, f) for f in fields)


def average_checks(entries: list[Entry]) -> list[tuple[Entry, list[Entry], float]]:
    """(average entry, its parts, mean of the parts) for every average whose parts are in ``entries``.

    Two kinds: an entry with ``dataset: average`` and ``per_dataset_table`` T averages the entries of table T
    (same file, method, variant, backbone, shots, shift) over its ``datasets``; an entry with ``mean_of_variants``
    averages the entries of those variants (same file, method, table, dataset, backbone, shots, shift). Averages
    marked ``average_check_skip`` are left out. Raises :class:`CmmError` when a declared part is missing.
    """
    out = []
    for a in entries:
        if a.average_check_skip:
            continue
        if a.per_dataset_table:
            parts = [
                e
                for e in entries
                if e.file == a.file
                and e.table == a.per_dataset_table
                and _same(e, a, "method", "variant", "backbone", "shots", "shift")
                and e.dataset in (a.datasets or ())
            ]
            missing = sorted(set(a.datasets or ()) - {e.dataset for e in parts})
            if missing:
                raise CmmError(
                    f"{a.where()}: averages table {a.per_dataset_table!r}, which lacks {', '.join(missing)}."
                )
        elif a.mean_of_variants:
            parts = [
                e
                for e in entries
                if e.file == a.file
                and e.variant in a.mean_of_variants
                and _same(e, a, "method", "table", "dataset", "backbone", "shots", "shift")
            ]
            missing = sorted(set(a.mean_of_variants) - {e.variant for e in parts})
            if missing:
                raise CmmError(f"{a.where()}: is the mean of variant(s) not in the file: {', '.join(missing)}.")
        else:
            continue
        out.append((a, parts, sum(p.value for p in parts) / len(parts)))
    return out


def average_mismatches(entries: list[Entry] | None = None) -> list[str]:
    """One line per published average that disagrees with the mean of its parts beyond rounding (empty: all agree)."""
    pool = load_published() if entries is None else entries
    bad = []
    for a, parts, mean in average_checks(pool):
        if abs(mean - a.value) > _tolerance(a, parts):
            bad.append(
                f"{a.where()} ({a.method} {a.variant or ''} {a.shots}-shot): published {a.value}, "
                f"mean of its {len(parts)} parts {mean:.4f}"
            )
    return bad
