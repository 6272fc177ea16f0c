"""One rule picks a table's quality metric for the leaderboard, the report and the budget study."""

from __future__ import annotations

from bench.output.quality import metric_name, metric_order, quality_metric, quality_metrics


def test_every_feature_space_frechet_distance_is_a_quality_axis():
    assert quality_metric(["kid_fmnist", "precision_fmnist", "fd_fmnist", "recall_fmnist"]) == "fd_fmnist"
    assert quality_metric(["sw2", "w2", "modes"]) == "w2"
    assert quality_metric(["kid", "precision"]) is None
    assert quality_metrics(["fd_digits", "fid", "kid_digits"]) == ["fid", "fd_digits"]
    assert metric_name("fd_fmnist") == "FD_fmnist" and metric_name("w2") == "W2"


def test_metric_order_puts_quality_first_then_kid_precision_recall_then_the_rest():
    names = ["modes", "recall_fmnist", "kid_fmnist", "fd_fmnist", "precision_fmnist", "sw2", "w2"]
    assert metric_order(names) == [
        "w2",
        "sw2",
        "fd_fmnist",
        "kid_fmnist",
        "precision_fmnist",
        "recall_fmnist",
        "modes",
    ]


def test_the_report_draws_quality_figures_for_a_new_image_set(tmp_path):
    from bench.output.report import quality_metric as table_quality

    assert table_quality({"metrics": ["fd_fmnist", "kid_fmnist"]}) == "fd_fmnist"
