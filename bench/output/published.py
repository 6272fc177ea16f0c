"""Published CIFAR-10 numbers (unconditional FID, 50k samples vs the training set, TF-Inception unless
marked), shown in a separate, clearly labelled table: never mixed with measured rows."""

from __future__ import annotations

# (method, NFE, FID, source)
CIFAR10_PUBLISHED: list[tuple[str, str, str, str]] = [
    (
        "chargen (reference code's stats file)",
        "1 / 2 / 5 / 20",
        "4.59 / 3.50 / 2.90 / 2.63",
        "burning489/CharacteristicGenerator stats/stats.csv",
    ),
    ("its teacher ODE (DEIS)", "1 / 5 / 10 / 20", "14.06 / 5.38 / 3.16 / 2.50", "same"),
    ("2-rectified flow + distill", "1", "4.85", "Consistency Models paper, Table 1"),
    ("1-rectified flow + distill", "1", "6.18", "same"),
    ("progressive distillation", "1 / 2", "8.34 / 5.58", "same"),
    ("consistency distillation (LPIPS)", "1 / 2", "3.55 / 2.93", "same"),
    ("consistency training", "1 / 2", "8.70 / 5.83", "same"),
    ("iCT-deep", "1 / 2", "2.51 / 2.24", "iCT paper abstract"),
    ("ECT", "1 / 2", "3.60 / 2.11", "locuslab/ect README"),
    ("SiD", "1", "1.92", "mingyuanzhou/SiD README"),
    ("StyleGAN2-ADA", "1", "2.92", "Consistency Models paper, Table 1"),
    ("OT-CFM, dopri5", "~134", "3.58", "conditional flow matching paper (TMLR), Table 5"),
    ("EDM", "35", "1.97", "NVlabs/edm README"),
]


def render_published() -> str:
    lines = [
        "# Published CIFAR-10 numbers (not measured by this suite)",
        "",
        "Unconditional CIFAR-10, FID on 50,000 samples against training-set statistics, TF-Inception features",
        "unless marked; copied from the sources named. Protocol details differ between papers; these rows are",
        "context for the measured leaderboard, never part of it.",
        "",
        "| method | NFE | FID | source |",
        "|---|---|---|---|",
    ]
    lines += [f"| {m} | {n} | {f} | {s} |" for m, n, f, s in CIFAR10_PUBLISHED]
    return "\n".join(lines) + "\n"
