"""Rich tables shared by `fit`, `results merge` and `compare`."""

from __future__ import annotations


def fmt_mean_std(mean, std):
    return "-" if mean is None else f"{mean:.2f} ± {std:.2f}"


def _acc(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def summary_table(summary, title):
    """One row per (dataset, backbone, method, config, shots): mean ± std over seeds."""
    from rich.table import Table

    t = Table(title=title)
    cols = ("dataset", "backbone", "method", "config", "shots", "runs", "test acc", "zero-shot", "CMM logits only")
    for c in (*cols, "val acc"):
        t.add_column(c, justify="left" if c in ("dataset", "backbone", "method", "config") else "right")
    for r in summary:
        t.add_row(
            r["dataset"],
            r["backbone"],
            r.get("method") or "cmm",
            r.get("config_key") or "-",
            str(r["shots"]),
            str(r["runs"]),
            fmt_mean_std(r["test_acc_mean"], r["test_acc_std"]),
            fmt_mean_std(r["zero_shot_test_acc_mean"], r["zero_shot_test_acc_std"]),
            fmt_mean_std(r["cmm_only_test_acc_mean"], r["cmm_only_test_acc_std"]),
            fmt_mean_std(r["val_acc_mean"], r["val_acc_std"]),
        )
    return t


def runs_table(results):
    from rich.table import Table

    t = Table()
    cols = ("dataset", "backbone", "method", "config", "shots", "seed", "alpha", "val", "test", "zero-shot")
    for c in (*cols, "CMM only", "fit s"):
        t.add_column(c, justify="left" if c in ("dataset", "backbone", "method", "config") else "right")
    for r in results:
        a = "-" if r.get("alpha") is None else f"{r['alpha']:.1f}"
        t.add_row(
            r["dataset"],
            r["backbone"],
            r.get("method") or "cmm",
            r.get("config_key") or "-",
            str(r["shots"]),
            str(r["seed"]),
            a,
            _acc(r.get("val_acc")),
            _acc(r.get("test_acc")),
            _acc(r.get("zero_shot_test_acc")),
            _acc(r.get("cmm_only_test_acc")),
            f"{r.get('fit_seconds') or 0:.1f}",
        )
    return t
