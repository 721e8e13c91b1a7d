"""The README's set-up lines, copied here literally: they must stay in the README word for word, CI must run
the default ones, and the CPU variant must install torch's CPU wheels inside the virtual environment before
the project (so pip keeps them instead of pulling the CUDA build).

Changing a set-up line means changing it in three places: the README, .ci/run and here."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SETUP = (
    'python3 -m venv .venv && . .venv/bin/activate && pip install ".[test]" && '
    "cmm-cache extract --dataset tiny --backbone tiny && cmm-cache fit --shots 4"
)
TESTS = ". .venv/bin/activate && pytest"
CPU_SETUP = (
    "python3 -m venv .venv && . .venv/bin/activate && "
    "pip install torch torchvision --index-url https://download.pytorch.org/whl/cpu && "
    'pip install ".[test]" && cmm-cache extract --dataset tiny --backbone tiny && cmm-cache fit --shots 4'
)


def _lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]


def _setup_block(readme: str) -> list[str]:
    """The first fenced block after the set-up heading: the two commands."""
    section = readme.split("## Set-up (two commands)", 1)[1]
    block = section.split("```bash", 1)[1].split("```", 1)[0]
    return [line.strip() for line in block.strip().splitlines()]


def test_the_readme_holds_the_set_up_lines_word_for_word():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert _setup_block(readme) == [SETUP, TESTS]
    assert CPU_SETUP in _lines(REPO / "README.md")  # the variant for a machine without a GPU, a complete line


def test_ci_runs_the_readme_set_up_lines():
    ci = _lines(REPO / ".ci" / "run")
    assert SETUP in ci and TESTS in ci
    assert ci.index(SETUP) < ci.index(TESTS)


def test_the_cpu_variant_installs_the_cpu_torch_inside_the_venv_before_the_project():
    steps = [s.strip() for s in CPU_SETUP.split("&&")]
    activate = steps.index(". .venv/bin/activate")
    torch = next(i for i, s in enumerate(steps) if "download.pytorch.org/whl/cpu" in s)
    project = steps.index('pip install ".[test]"')
    assert steps[0] == "python3 -m venv .venv" and activate < torch < project
    assert steps[torch].startswith("pip install torch torchvision ")
    # apart from that one step it is the default line: the same install, the same first run
    assert [s for i, s in enumerate(steps) if i != torch] == [s.strip() for s in SETUP.split("&&")]
