"""A broken torch/torchvision/open_clip/h5py install is one message with the fix, before a command runs;
`--help` needs none of them."""

import subprocess
import sys
from pathlib import Path

import pytest

from cmm_cache.errors import CmmError
from cmm_cache.util.stack import CPU_INDEX, check_stack

REPO = Path(__file__).resolve().parents[2]


def _failing(bad: str, error: Exception):
    def importer(name):
        if name == bad:
            raise error
        return None

    return importer


def test_a_torchvision_mismatch_names_the_fix():
    err = RuntimeError("operator torchvision::nms does not exist")
    with pytest.raises(CmmError) as e:
        check_stack(importer=_failing("torchvision", err))
    msg, hint = e.value.message, e.value.hint
    assert "torchvision does not load" in msg and "operator torchvision::nms does not exist" in msg
    assert "torch " in msg and "h5py " in msg  # the installed versions, read from metadata
    assert f"--index-url {CPU_INDEX}" in hint and "pip install --force-reinstall torch torchvision" in hint


def test_open_clip_failing_on_torchvision_is_the_same_mismatch():
    err = ImportError("cannot import name 'nms' from 'torchvision.ops' (torchvision)")
    with pytest.raises(CmmError) as e:
        check_stack(importer=_failing("open_clip", err))
    assert "torchvision does not load" in e.value.message and "torch torchvision" in e.value.hint


def test_another_broken_package_is_reinstalled_by_name():
    with pytest.raises(CmmError) as e:
        check_stack(importer=_failing("h5py", OSError("libhdf5.so.310: cannot open shared object file")))
    assert "h5py does not load (OSError: libhdf5.so.310" in e.value.message
    assert "pip install --force-reinstall h5py" in e.value.hint


def test_a_working_stack_passes_and_only_the_named_modules_are_imported():
    seen = []
    check_stack(("torch", "h5py"), importer=seen.append)
    assert seen == ["torch", "h5py"]
    check_stack()  # the real one, in this environment


def _cli(args, pythonpath, tmp_path):
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(pythonpath), "CMM_CACHE_DIR": str(tmp_path / "cache")}
    code = "import sys; from cmm_cache.cli.main import main; sys.argv = ['cmm-cache'] + sys.argv[1:]; main()"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path
    )


@pytest.mark.slow
def test_the_cli_says_how_to_repair_a_mismatched_torchvision_instead_of_a_traceback(tmp_path):
    fake = tmp_path / "site" / "torchvision"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('raise RuntimeError("operator torchvision::nms does not exist")\n')
    r = _cli(["extract", "--dataset", "tiny", "--backbone", "tiny"], fake.parent, tmp_path)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and "torchvision does not load" in r.stderr
    assert "pip install --force-reinstall torch torchvision" in r.stderr
    assert not (tmp_path / "cache").exists()  # refused before any work
    helped = _cli(["extract", "--help"], fake.parent, tmp_path)  # help needs no stack
    assert helped.returncode == 0 and "--dataset" in helped.stdout


def test_help_imports_no_part_of_the_stack():
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from cmm_cache.cli.main import main\n"
        "r = CliRunner().invoke(main, ['--help'])\n"
        "assert r.exit_code == 0, r.output\n"
        "print(sorted(m for m in ('torch', 'torchvision', 'open_clip', 'h5py') if m in sys.modules))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
