"""Rich tables shared by `fit`, `results merge` and `compare`."""

from __future__ import annotations


def fmt_mean_std(mean, std):
    return "-" if mean is None else f"{mean:.2f} ± {std:.2f}"


def summary_table(summary, title):
    from rich.table import Table

    t = Table(title=title)
    for c in ("dataset", "backbone", "shots", "runs", "test acc", "zero-shot", "CMM logits only", "val acc"):
        t.add_column(c, justify="right" if c not in ("dataset", "backbone") else "left")
    for r in summary:
        t.add_row(
            r["dataset"],
            r["backbone"],
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
    for c in ("dataset", "backbone", "shots", "seed", "alpha", "val", "test", "zero-shot", "CMM only", "fit s"):
        t.add_column(c, justify="left" if c in ("dataset", "backbone") else "right")
    for r in results:
        a = "-" if r.get("alpha") is None else f"{r['alpha']:.1f}"
        t.add_row(
            r["dataset"],
            r["backbone"],
            str(r["shots"]),
            str(r["seed"]),
            a,
            f"{r['val_acc']:.2f}",
            f"{r['test_acc']:.2f}",
            f"{r['zero_shot_test_acc']:.2f}",
            f"{r['cmm_only_test_acc']:.2f}",
            f"{r.get('fit_seconds', 0):.1f}",
        )
    return t
