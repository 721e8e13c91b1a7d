"""`python -m cmm_cache` works from a source checkout too (where `cli/` is not yet mapped into the package),
and `--json` always puts one JSON object on stdout, also when a command fails."""

import json
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner
from cmm_cache.cli.main import main

REPO = Path(__file__).resolve().parents[2]

# Run the checkout's own sources, as `python -m cmm_cache` from the repository root does without an install:
# drop any editable-install finder, put the checkout first on sys.path.
_FROM_SOURCE = (
    "import runpy, sys\n"
    "sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]\n"
    "sys.path.insert(0, {repo!r})\n"
    "sys.argv = ['cmm_cache'] + {args!r}\n"
    "runpy.run_module('cmm_cache', run_name='__main__', alter_sys=True)\n"
)


def _from_source(*args):
    code = _FROM_SOURCE.format(repo=str(REPO), args=list(args))
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)


def test_python_m_from_the_source_tree():
    r = _from_source("datasets", "--json")
    assert r.returncode == 0, r.stderr
    names = {d["name"] for d in json.loads(r.stdout)["datasets"]}
    assert {"dtd", "imagenet", "tiny"} <= names


def test_json_error_is_one_object_on_stdout(tmp_path):
    r = CliRunner().invoke(main, ["fit", "--cache", str(tmp_path / "missing.h5"), "--json"])
    assert r.exit_code == 2
    out = json.loads(r.stdout)
    assert "No cache file" in out["error"] and out["hint"]
