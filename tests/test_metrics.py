import itertools
import math

import numpy as np
import pytest
import SimpleITK as sitk

from vnet_tf.evaluation.metrics import case_metrics, confusion_matrix, label_metrics, summarize, surface


def _ball(shape, centre, radius, spacing=(1, 1, 1)):
    grid = np.indices(shape).astype(float)
    d = sum(((g - c) * s) ** 2 for g, c, s in zip(grid, centre, spacing))
    return d <= radius ** 2


def _brute_force(p, r, spacing):
    """Surface voxels by explicit neighbour checks, distances by all pairs."""
    def surf(mask):
        out = np.zeros_like(mask)
        for idx in zip(*np.nonzero(mask)):
            for axis, step in itertools.product(range(3), (-1, 1)):
                n = list(idx)
                n[axis] += step
                if not (0 <= n[axis] < mask.shape[axis]) or not mask[tuple(n)]:
                    out[idx] = True
                    break
        return out
    sp, sr = surf(p), surf(r)
    a = np.argwhere(sp) * spacing
    b = np.argwhere(sr) * spacing
    d = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    d_pr, d_rp = d.min(1), d.min(0)
    return sp, sr, d_pr, d_rp


def test_dice_iou_and_volumes_against_numpy(rng):
    p = rng.random((10, 12, 14)) > 0.6
    r = rng.random((10, 12, 14)) > 0.5
    spacing = (2.0, 0.5, 0.8)
    m = label_metrics(p, r, spacing)
    inter = np.logical_and(p, r).sum()
    assert m["dice"] == pytest.approx(2 * inter / (p.sum() + r.sum()))
    assert m["iou"] == pytest.approx(inter / np.logical_or(p, r).sum())
    assert m["volume_reference_mm3"] == pytest.approx(r.sum() * 0.8)
    assert m["volume_difference_mm3"] == pytest.approx((p.sum() - r.sum()) * 0.8)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (2.5, 0.7, 1.3)])
def test_surface_distances_against_brute_force_and_simpleitk(spacing):
    shape = (14, 16, 15)
    p = _ball(shape, (7, 8, 7), 4.5) | _ball(shape, (2, 2, 2), 1.2)
    r = _ball(shape, (6.5, 7, 8), 5.0)
    m = label_metrics(p, r, spacing)
    sp, sr, d_pr, d_rp = _brute_force(p, r, np.array(spacing))
    np.testing.assert_array_equal(surface(p), sp)
    np.testing.assert_array_equal(surface(r), sr)
    assert m["hd"] == pytest.approx(max(d_pr.max(), d_rp.max()), abs=1e-4)
    assert m["hd95"] == pytest.approx(max(np.percentile(d_pr, 95), np.percentile(d_rp, 95)), abs=1e-4)
    assert m["assd"] == pytest.approx((d_pr.sum() + d_rp.sum()) / (d_pr.size + d_rp.size), abs=1e-4)
    assert m["asd"] == pytest.approx(d_pr.mean(), abs=1e-4)
    assert m["hd95_pooled"] == pytest.approx(np.percentile(np.concatenate([d_pr, d_rp]), 95), abs=1e-4)
    # SimpleITK's own Hausdorff filter on the same surfaces, with the same spacing.
    images = []
    for s in (sp, sr):
        image = sitk.GetImageFromArray(s.astype(np.uint8))
        image.SetSpacing(spacing[::-1])
        images.append(image)
    hd_filter = sitk.HausdorffDistanceImageFilter()
    hd_filter.Execute(*images)
    assert m["hd"] == pytest.approx(hd_filter.GetHausdorffDistance(), abs=1e-4)


def test_anisotropic_shift_distance_is_in_millimetres():
    shape = (10, 10, 10)
    r = np.zeros(shape, bool)
    r[3:6, 3:6, 3:6] = True
    p = np.roll(r, 2, axis=0)  # shifted 2 voxels along z
    m = label_metrics(p, r, (3.0, 1.0, 1.0))
    assert m["hd"] == pytest.approx(6.0)


def test_empty_mask_rules():
    empty = np.zeros((5, 5, 5), bool)
    full = empty.copy()
    full[1:3, 1:3, 1:3] = True
    both = label_metrics(empty, empty, (1, 1, 1))
    assert both["dice"] == 1.0 and both["hd95"] == 0.0 and not both["distances_missing"]
    one = label_metrics(empty, full, (1, 1, 1))
    assert one["dice"] == 0.0 and math.isnan(one["hd95"]) and one["distances_missing"]
    other = label_metrics(full, empty, (1, 1, 1))
    assert other["iou"] == 0.0 and math.isnan(other["assd"]) and math.isnan(other["asd"])
    assert both["asd"] == both["hd95_pooled"] == 0.0
    stats = summarize([0.5, float("nan"), 1.5])
    assert stats["mean"] == 1.0 and stats["missing"] == 1 and stats["n"] == 2
    assert summarize([float("nan")])["mean"] is None


def test_case_metrics_per_label(rng):
    ref = rng.integers(0, 3, size=(6, 6, 6))
    out = case_metrics(ref, ref, (1, 1, 1), labels=(1, 2))
    assert set(out) == {1, 2} and all(v["dice"] == 1.0 and v["hd"] == 0.0 for v in out.values())
    with pytest.raises(ValueError, match="shape"):
        label_metrics(np.zeros((2, 2, 2)), np.zeros((2, 2, 3)), (1, 1, 1))


def test_confusion_matrix_against_a_voxel_loop(rng):
    ref = rng.integers(0, 3, size=(5, 6, 7))
    pred = rng.integers(0, 3, size=(5, 6, 7)).astype(np.float32)  # label files are often float
    expected = np.zeros((3, 3), np.int64)
    for r, p in zip(ref.ravel(), pred.ravel()):
        expected[int(r), int(p)] += 1
    m = confusion_matrix(pred, ref, 3)
    np.testing.assert_array_equal(m, expected)
    # its diagonal and margins give the per-label Dice that label_metrics computes
    for k in (1, 2):
        dice = 2 * m[k, k] / (m[k].sum() + m[:, k].sum())
        assert dice == pytest.approx(label_metrics(pred == k, ref == k, (1, 1, 1))["dice"])


def test_confusion_matrix_refuses_labels_out_of_range():
    with pytest.raises(ValueError, match=r"prediction holds values outside the integer labels 0\.\.2: \[0, 3\]"):
        confusion_matrix(np.array([0, 3]), np.array([0, 1]), 3)
    with pytest.raises(ValueError, match="reference holds"):
        confusion_matrix(np.array([0, 1]), np.array([0.5, 1]), 3)
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(np.zeros(2), np.zeros(3), 3)


@pytest.mark.parametrize("spacing", [(0.625, 0.625, 0.625), (2.5, 0.7, 1.3)])
def test_the_one_way_asd_and_pooled_hd95_are_medpys(spacing, rng):
    """ASD and pooled HD95 as medpy's ``asd`` / ``hd95`` compute them (its surface: the mask
    minus its 6-connected erosion; its distances: scipy's Euclidean distance transform), on
    random blobs: the left-atrium literature's metrics."""
    ndimage = pytest.importorskip("scipy.ndimage")
    shape = (16, 18, 17)
    p = _ball(shape, (8, 9, 8), 5.0) | (rng.random(shape) > 0.97)
    r = _ball(shape, (7.5, 8, 9), 5.5)

    def medpy_distances(a, b):
        cross = ndimage.generate_binary_structure(3, 1)
        a_border = a ^ ndimage.binary_erosion(a, structure=cross, iterations=1)
        b_border = b ^ ndimage.binary_erosion(b, structure=cross, iterations=1)
        return ndimage.distance_transform_edt(~b_border, sampling=spacing)[a_border]

    m = label_metrics(p, r, spacing)
    forward, backward = medpy_distances(p, r), medpy_distances(r, p)
    assert m["asd"] == pytest.approx(forward.mean(), rel=1e-5)
    assert m["hd95_pooled"] == pytest.approx(np.percentile(np.hstack((forward, backward)), 95), rel=1e-5)
