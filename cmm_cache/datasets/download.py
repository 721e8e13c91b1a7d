"""`--download`: fetch a dataset from its official public source into `<data root>/<folder>` (CoOp layout)."""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

from cmm_cache.datasets import manifests as _mf
from cmm_cache.datasets.base import get_hint, indent
from cmm_cache.errors import CmmError
from cmm_cache.util.atomic import atomic_dir

DOWNLOAD_BASE_ENV = "CMM_DOWNLOAD_BASE"
ARCHIVE_EXTS = (".zip", ".tar", ".tgz", ".tar.gz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


def _resolve_url(url: str) -> str:
    """Apply the mirror override `$CMM_DOWNLOAD_BASE` (a URL or a local folder): base + archive file name."""
    base = os.environ.get(DOWNLOAD_BASE_ENV)
    if not base:
        return url
    name = os.path.basename(urllib.parse.urlparse(url).path)
    if "://" not in base:
        return (Path(base).expanduser().resolve() / name).as_uri()
    return base.rstrip("/") + "/" + name


def _fetch(url: str, dest: Path, console=None) -> Path:
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    console = console or Console(stderr=True)
    try:
        resp = urllib.request.urlopen(url, timeout=60)
    except (OSError, ValueError) as e:
        raise CmmError(
            f"Could not download {url}: {e}",
            f"Check the address, or set {DOWNLOAD_BASE_ENV} to a mirror folder/URL holding the archive.",
        ) from e
    total = int(resp.headers.get("Content-Length") or 0) or None
    name = os.path.basename(urllib.parse.urlparse(url).path) or "download"
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with (
        resp,
        open(dest, "wb") as out,
        Progress(*columns, TimeRemainingColumn(), console=console, transient=True) as prog,
    ):
        task = prog.add_task(f"downloading {name}", total=total)
        while chunk := resp.read(1 << 20):
            out.write(chunk)
            prog.update(task, advance=len(chunk))
    return dest


def _safe_extract(archive: Path, into: Path) -> None:
    into.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            for n in z.namelist():
                if n.startswith("/") or ".." in Path(n).parts:
                    raise CmmError(f"Refusing to extract {archive}: unsafe member path {n!r}.")
            z.extractall(into)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as t:
            for mem in t.getmembers():
                if mem.name.startswith("/") or ".." in Path(mem.name).parts or mem.issym() or mem.islnk():
                    raise CmmError(f"Refusing to extract {archive}: unsafe member {mem.name!r}.")
            t.extractall(into, filter="data")
    else:
        raise CmmError(f"{archive} is neither a zip nor a tar archive.")


def _fetch_archive(i: int, a: dict, work: Path, staging: Path, console) -> None:
    """Download archive `a` into the scratch folder `work` and move its content (or the plain file) into `staging`."""
    url = _resolve_url(a["url"])
    fname = os.path.basename(urllib.parse.urlparse(url).path) or f"archive{i}"
    got = _fetch(url, work / f"dl{i}-{fname}", console)
    if a.get("sha256"):
        h = hashlib.sha256(got.read_bytes()).hexdigest()
        if h != a["sha256"]:
            raise CmmError(f"Checksum mismatch for {url}: got {h}, expected {a['sha256']}.")
    is_archive = zipfile.is_zipfile(got) or tarfile.is_tarfile(got)
    if not is_archive and fname.lower().endswith(ARCHIVE_EXTS):
        raise CmmError(
            f"{url} is not a readable archive (damaged or incomplete download).", "Run again, or fetch it by hand."
        )
    if not is_archive:
        os.replace(got, staging / fname)  # a plain file (e.g. a label .mat)
        return
    ex = work / f"ex{i}"
    _safe_extract(got, ex)
    got.unlink()
    if a.get("nested"):
        ex2 = work / f"ex{i}n"
        _safe_extract(ex / a["nested"], ex2)
        ex = ex2
    src = ex / a["strip"] if a.get("strip") else ex
    if not src.is_dir():
        raise CmmError(f"{url} does not contain the expected folder {a.get('strip')!r}.")
    for child in src.iterdir():
        target = staging / child.name
        if target.exists():
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        os.replace(child, target)


def download_dataset(manifest, data_root, *, console=None) -> Path:
    """Fetch a dataset from its official public source into `<data_root>/<folder>` (CoOp layout).

    Each archive is streamed to a scratch folder beside the target and
    extracted there; a new dataset folder is filled as a temporary folder and
    renamed into place only when complete (``cmm_cache.util.atomic.atomic_dir``), and
    into an existing one only complete entries that are missing are moved. A
    killed download never leaves a folder a later run would trust.
    `$CMM_DOWNLOAD_BASE` (a folder or URL) replaces the host, for mirrors and
    offline tests. Datasets without a public source raise CmmError saying
    where to get them.
    """
    m = _mf.get_manifest(manifest) if isinstance(manifest, str) else manifest
    dl = m.get("download")
    if not dl or not dl.get("archives"):
        raise CmmError(
            f"'{m['name']}' has no public archive cmm-cache can download.",
            (get_hint(m) + f"\nExpected layout under the data root:\n{indent(m.get('layout', ''))}").strip(),
        )
    if data_root is None:
        raise CmmError("--download needs a data root to put the data in.", "Pass --data-root DIR or set CMM_DATA_ROOT.")
    root = Path(data_root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    final = root / m["folder"]
    work = Path(tempfile.mkdtemp(prefix=f".{m['folder']}.partial-", dir=root))  # archives and their extraction
    try:
        if final.exists():
            staging = work / "dataset"
            staging.mkdir()
            for i, a in enumerate(dl["archives"]):
                _fetch_archive(i, a, work, staging, console)
            for child in staging.iterdir():  # complete entries only; existing ones are kept
                if not (final / child.name).exists():
                    os.replace(child, final / child.name)
        else:
            try:
                with atomic_dir(final, replace=False) as staging:
                    for i, a in enumerate(dl["archives"]):
                        _fetch_archive(i, a, work, staging, console)
            except FileExistsError:
                pass  # another download put a complete folder in place meanwhile
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final


download = download_dataset  # the short name the CLI and the tests use
