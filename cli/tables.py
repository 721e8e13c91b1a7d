"""Rich tables shared by `fit`, `results merge`, `compare` and `runs ls`.

Numbers never wrap or get cut (``no_wrap``); names and paths fold onto a second line on a narrow terminal
instead of ending in "…". In a log the console is as wide as any line (cli/common.py), so nothing folds there.
"""

from __future__ import annotations

TEXT_COLUMNS = ("dataset", "backbone", "method", "config", "run folder", "path")


def fmt_mean_std(mean, std, runs=None):
    """``mean ± std``; one run (``runs == 1``) has no spread to show: the mean alone."""
    if mean is None:
        return "-"
    return f"{mean:.2f}" if runs == 1 else f"{mean:.2f} ± {std:.2f}"


def plain(value):
    """A cell shown as it is (a name or path holding "[...]" is not rich markup)."""
    from rich.text import Text

    return Text(str(value))


def title(text: str):
    """A table title that is never wrapped to the table's width (a narrow table keeps a long title whole)."""
    from rich.text import Text

    return Text(str(text), no_wrap=True, overflow="ignore")


def _acc(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def new_table(columns, heading=None):
    """A table whose text columns fold (never "…") and whose other columns never wrap; `heading`: its title."""
    from rich.table import Table

    t = Table(title=None if heading is None else title(heading))
    for c in columns:
        if c in TEXT_COLUMNS:
            t.add_column(c, justify="left", overflow="fold")
        else:
            t.add_column(c, justify="left" if c == "run id" else "right", no_wrap=True)
    return t


def summary_table(summary, title):
    """One row per (dataset, backbone, method, config, shots): mean ± std over seeds."""
    cols = ("dataset", "backbone", "method", "config", "shots", "runs", "test acc", "zero-shot", "CMM logits only")
    t = new_table((*cols, "val acc"), title)
    for r in summary:
        n = r.get("runs")
        t.add_row(
            plain(r["dataset"]),
            plain(r["backbone"]),
            plain(r.get("method") or "cmm"),
            plain(r.get("config_key") or "-"),
            str(r["shots"]),
            str(n),
            fmt_mean_std(r["test_acc_mean"], r["test_acc_std"], n),
            fmt_mean_std(r["zero_shot_test_acc_mean"], r["zero_shot_test_acc_std"], n),
            fmt_mean_std(r["cmm_only_test_acc_mean"], r["cmm_only_test_acc_std"], n),
            fmt_mean_std(r["val_acc_mean"], r["val_acc_std"], n),
        )
    return t


def runs_table(results):
    """One row per run, with its run id and folder (what `--run` takes)."""
    cols = ("run id", "dataset", "backbone", "method", "config", "shots", "seed", "alpha", "val", "test")
    t = new_table((*cols, "zero-shot", "CMM only", "fit s", "run folder"))
    for r in results:
        a = "-" if r.get("alpha") is None else f"{r['alpha']:.1f}"
        t.add_row(
            r.get("run_id") or "-",
            plain(r["dataset"]),
            plain(r["backbone"]),
            plain(r.get("method") or "cmm"),
            plain(r.get("config_key") or "-"),
            str(r["shots"]),
            str(r["seed"]),
            a,
            _acc(r.get("val_acc")),
            _acc(r.get("test_acc")),
            _acc(r.get("zero_shot_test_acc")),
            _acc(r.get("cmm_only_test_acc")),
            f"{r.get('fit_seconds') or 0:.1f}",
            plain(r.get("run") or "-"),
        )
    return t
