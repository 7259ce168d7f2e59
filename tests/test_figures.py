"""The evaluation figures: the reference drawn filled, the prediction outlined, in the
label's colour; points instead of boxes for a handful of cases."""

import numpy as np

from vnet_tf.evaluation.figures import MIN_CASES_FOR_BOXES, case_figure, metric_plot


def _red_pixels(path):
    import matplotlib.image
    rgb = matplotlib.image.imread(path)[..., :3]
    return int(np.count_nonzero(rgb[..., 0] - np.maximum(rgb[..., 1], rgb[..., 2]) > 0.2))


def test_the_reference_is_filled_and_the_prediction_outlined(tmp_path):
    image = np.zeros((20, 20, 20), np.float32)
    square = np.zeros((20, 20, 20), np.uint8)
    square[5:15, 5:15, 5:15] = 1
    empty = np.zeros_like(square)
    case_figure(tmp_path / "filled.png", image, square, empty, [1], "reference only")
    case_figure(tmp_path / "outlined.png", image, empty, square, [1], "prediction only")
    case_figure(tmp_path / "none.png", image, empty, empty, [1], "nothing")
    filled, outlined, none = (_red_pixels(tmp_path / f"{n}.png") for n in ("filled", "outlined", "none"))
    assert none < 400  # the legend's swatch and line
    assert filled > 3 * outlined > 3 * none  # a filled square covers more than its outline


def _records(n):
    return [{"case_id": f"c{i}", "labels": {"1": {"dice": 0.8 + 0.01 * i, "hd95": 1.0 + i}}} for i in range(n)]


def test_a_handful_of_cases_is_drawn_as_points(tmp_path):
    assert metric_plot(tmp_path / "one.png", _records(1), [1]) == "points"
    assert metric_plot(tmp_path / "few.png", _records(MIN_CASES_FOR_BOXES - 1), [1]) == "points"
    assert metric_plot(tmp_path / "many.png", _records(MIN_CASES_FOR_BOXES), [1]) == "boxes"
    assert all((tmp_path / f"{n}.png").stat().st_size > 1000 for n in ("one", "few", "many"))


def test_the_figures_name_each_class_as_the_dataset_does(tmp_path, monkeypatch):
    import matplotlib.figure
    texts, save = [], matplotlib.figure.Figure.savefig

    def keep_texts(fig, *args, **kwargs):
        texts.append({t.get_text() for legend in fig.legends for t in legend.get_texts()}
                     | {t.get_text() for ax in fig.axes for t in ax.get_xticklabels()})
        return save(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", keep_texts)
    square = np.zeros((20, 20, 20), np.uint8)
    square[5:15, 5:15, 5:15] = 1
    case_figure(tmp_path / "case.png", np.zeros(square.shape, np.float32), square, square, [1], "t",
                names={1: "left atrium"})
    metric_plot(tmp_path / "plot.png", _records(3), [1], names={1: "left atrium"})
    metric_plot(tmp_path / "unnamed.png", _records(3), [1])
    assert {"label 1 (left atrium) reference", "label 1 (left atrium) prediction"} <= texts[0]
    assert "label 1 (left atrium)" in texts[1] and "label 1" in texts[2]
