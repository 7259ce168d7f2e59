
import numpy as np
import pytest

from vnet_tf.augment import chain as A
from helpers import spacing_geometry, write_msd
from vnet_tf.data.cache import preprocess_dataset
from vnet_tf.data.cases import find_cases
from vnet_tf.training.pipeline import CaseStore, PipelineConfig, PatchSampler, training_dataset
from vnet_tf.data.preprocess import PreprocessConfig


def _cached(tmp_path, volumes):
    """Writes ``volumes`` [(image, label)] as an MSD dataset and caches it; returns paths."""
    root = write_msd(tmp_path / "data", {f"c_{i:02d}": (image, label, spacing_geometry((1, 1, 1)))
                                         for i, (image, label) in enumerate(volumes)})
    cases = find_cases(root, "msd").cases
    return preprocess_dataset(cases, PreprocessConfig(normalization="none"), tmp_path / "cache")


@pytest.fixture
def blob_cases(tmp_path, rng):
    """Three 40x40x40 volumes; label 1 a 3x3x3 blob, label 2 a 40x40x4 slab (far apart)."""
    volumes = []
    for i in range(3):
        label = np.zeros((40, 40, 40), np.uint8)
        label[2:5, 2:5, 2:5] = 1
        label[:, :, 30:34] = 2
        image = (label * 10.0 + i).astype(np.float32)
        volumes.append((image, label))
    return _cached(tmp_path, volumes)


def test_batches_have_the_patch_shape_and_types(blob_cases):
    config = PipelineConfig(patch_size_zyx=(16, 24, 8), batch_size=3, seed=0)
    batch = next(iter(training_dataset(blob_cases, config)))
    assert batch["image"].shape == (3, 16, 24, 8, 1) and batch["image"].dtype.name == "float32"
    assert batch["label"].shape == (3, 16, 24, 8) and batch["label"].dtype.name == "int32"
    # image = 10 * label + case index: the patch's image and label come from the same place
    image, label = batch["image"].numpy()[..., 0], batch["label"].numpy()
    np.testing.assert_array_equal(np.round(image - np.floor(image % 10)) / 10, label)


def test_volumes_smaller_than_the_patch_are_padded(tmp_path):
    label = np.ones((6, 7, 8), np.uint8)
    paths = _cached(tmp_path, [(np.full((6, 7, 8), 5.0, np.float32), label)])
    config = PipelineConfig(patch_size_zyx=(16, 16, 16), batch_size=2, seed=0)
    batch = next(iter(training_dataset(paths, config)))
    image, lab = batch["image"].numpy(), batch["label"].numpy()
    assert image.shape == (2, 16, 16, 16, 1)
    assert lab.sum() == 2 * 6 * 7 * 8 and image.sum() == 5.0 * 2 * 6 * 7 * 8  # all of it, once
    assert set(np.unique(lab)) == {0, 1}


def test_foreground_fraction_and_class_balance(blob_cases):
    config = PipelineConfig(patch_size_zyx=(8, 8, 8), batch_size=4, foreground_fraction=0.5, seed=1)
    sampler = PatchSampler(CaseStore(blob_cases), config)
    has1 = has2 = total = 0
    for i in range(100):
        _, label = sampler.batch(i)
        has1 += sum((lab == 1).any() for lab in label)
        has2 += sum((lab == 2).any() for lab in label)
        total += len(label)
    # Random 8^3 patches rarely touch the 3^3 blob (~0.4 %); balanced foreground draws pick
    # it in half of the forced half: ~25 % + a little. The slab: ~25 % + its random share.
    assert 0.18 < has1 / total < 0.34, has1 / total
    unbalanced = PatchSampler(CaseStore(blob_cases), PipelineConfig(
        patch_size_zyx=(8, 8, 8), batch_size=4, foreground_fraction=0.5, class_balance=False, seed=1))
    rare = sum(sum((lab == 1).any() for lab in unbalanced.batch(i)[1]) for i in range(100))
    assert rare / total < 0.1  # by voxel count the blob is 27 of ~6400 foreground voxels
    assert has2 / total > 0.3


def test_zero_and_full_foreground_fraction(blob_cases):
    full = PatchSampler(CaseStore(blob_cases), PipelineConfig(patch_size_zyx=(8, 8, 8), batch_size=8,
                                                            foreground_fraction=1.0, seed=2))
    assert all((lab > 0).any() for i in range(10) for lab in full.batch(i)[1])


def test_same_seed_same_batches_and_resume_position(blob_cases):
    config = PipelineConfig(patch_size_zyx=(16, 16, 16), batch_size=2, seed=5, parallel_calls=4)
    first = [b["image"].numpy() for _, b in zip(range(6), training_dataset(blob_cases, config))]
    again = [b["image"].numpy() for _, b in zip(range(6), training_dataset(blob_cases, config))]
    resumed = [b["image"].numpy() for _, b in zip(range(3), training_dataset(blob_cases, config, start_batch=3))]
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(first[3:], resumed):
        np.testing.assert_array_equal(a, b)
    other = next(iter(training_dataset(blob_cases, PipelineConfig(patch_size_zyx=(16, 16, 16), seed=6))))
    assert not np.array_equal(other["image"].numpy(), first[0])


def test_every_case_once_per_epoch(blob_cases):
    sampler = PatchSampler(CaseStore(blob_cases), PipelineConfig(batch_size=1, seed=3))
    epoch = [int(sampler.case_indices(i)[0]) for i in range(3)]
    assert sorted(epoch) == [0, 1, 2]


def test_host_augmentation_in_the_pipeline(blob_cases):
    aug = A.build_augmentation(A.AugmentConfig(elastic_probability=1.0, elastic_sigma=2.0,
                                               flip_axes=(0, 1, 2)), num_classes=3, seed=0)
    config = PipelineConfig(patch_size_zyx=(16, 16, 16), batch_size=2, seed=0)
    plain = next(iter(training_dataset(blob_cases, config)))
    augmented = next(iter(training_dataset(blob_cases, config, host_augmentation=aug)))
    assert augmented["image"].shape == plain["image"].shape
    assert not np.array_equal(augmented["label"].numpy(), plain["label"].numpy())
    assert set(np.unique(augmented["label"].numpy())) <= {0, 1, 2}


def test_out_of_memory_budget_reads_from_files(blob_cases):
    store = CaseStore(blob_cases, memory_budget_bytes=1)
    assert not store.in_memory
    in_memory = CaseStore(blob_cases)
    config = PipelineConfig(patch_size_zyx=(8, 8, 8), seed=0)
    np.testing.assert_array_equal(PatchSampler(store, config).batch(4)[0], PatchSampler(in_memory, config).batch(4)[0])


def test_bad_pipeline_settings():
    with pytest.raises(ValueError, match="foreground_fraction"):
        PipelineConfig(foreground_fraction=1.5).validate()
    with pytest.raises(ValueError, match="patch_size_zyx"):
        PipelineConfig(patch_size_zyx=(8, 8)).validate()
    with pytest.raises(ValueError, match="at least one"):
        CaseStore([])
