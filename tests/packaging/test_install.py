"""A non-editable install (a wheel, as `pip install .` builds) is complete.

The wheel must carry `cmm_cache.cli` (mapped from the top-level `cli/`) and
the dataset manifests as package data, and must not put a bare `cli` package
into site-packages. The dependencies are borrowed from the running
environment (a `.pth` file), so the test needs no network and no second
multi-GB torch install.
"""

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    # Build from a clean copy of the tracked sources: setuptools keeps a build/ folder in the source tree, and a
    # stale one from an older layout would put files in the wheel that the sources no longer have.
    src = tmp_path_factory.mktemp("src") / "cmm-cache"
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=False)
    if tracked.returncode == 0 and tracked.stdout:
        for rel in tracked.stdout.decode().split("\0"):
            if rel and (REPO / rel).is_file():
                (src / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / rel, src / rel)
    else:  # not a git checkout: copy the tree without build outputs
        shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(src)],
        check=True,
        capture_output=True,
    )
    (whl,) = out.glob("cmm_cache-*.whl")
    return whl


def test_wheel_layout(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "cmm_cache/cli/main.py" in names
    assert not any(n.startswith("cli/") for n in names), "a bare top-level `cli` package would be installed"
    assert any(n.startswith("cmm_cache/data_manifests/") and n.endswith(".json") for n in names)
    assert any(n.startswith("cmm_cache/backbones/configs/") and n.endswith(".json") for n in names)
    # the CPU training loop's source, compiled on first use
    kernel = "cmm_cache/methods/trainers/cmm/"
    assert {kernel + "cmm_loop.c", kernel + "cmm_ctx.h", kernel + "cmm_pool.h"} <= set(names)
    # Every subpackage of the source tree ships (pyproject lists them by hand).
    for init in (REPO / "cmm_cache").rglob("__init__.py"):
        rel = init.relative_to(REPO).as_posix()
        assert rel in names, f"{rel} is missing from the wheel: add its package to pyproject.toml"


def test_wheel_in_fresh_venv_lists_datasets(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    # Borrow the running environment's dependencies (torch, open_clip, ...)
    # without its copy of cmm_cache: a plain path entry does not run the
    # editable-install hook, and the fresh venv's own site-packages wins.
    site = Path(
        subprocess.check_output(
            [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
        ).strip()
    )
    # Installed before the borrowing, so pip does not see the running
    # environment's own cmm-cache and skip the install as "already satisfied".
    subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True, capture_output=True
    )
    # The running environment's site-packages, and any it borrows itself (a .pth of its own).
    deps = [sysconfig.get_paths()["purelib"]] + [p for p in sys.path if p.endswith("site-packages")]
    (site / "_borrowed_deps.pth").write_text("\n".join(dict.fromkeys(deps)) + "\n")
    env = {**os.environ, "PATH": f"{env_dir / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
    run = subprocess.run(
        [str(env_dir / "bin" / "cmm-cache"), "datasets"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    listing = run.stdout + run.stderr
    for name in ("dtd", "imagenet", "tiny"):
        assert name in listing
    where = subprocess.check_output(
        [str(py), "-c", "import cmm_cache; print(cmm_cache.__file__)"], cwd=tmp_path, env=env, text=True
    )
    assert str(site) in where, f"imported {where} instead of the installed wheel"
    assert not (site / "cli").exists()
