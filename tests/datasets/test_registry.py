"""The registry's entry points and its one-line errors."""

from __future__ import annotations

import pytest

from augment.datasets import DATASETS, NamesOnlyDataset, get_dataset, list_datasets
from augment.datasets.base import Sample
from augment.errors import AugmentError


def test_list_datasets():
    rows = list_datasets()
    assert [r[0] for r in rows] == list(DATASETS) == ["digits", "cub", "inat", "imagenet", "folder"]
    needs = {name: needs_root for name, _, needs_root in rows}
    assert needs == {"digits": False, "cub": True, "inat": True, "imagenet": False, "folder": True}
    assert all(desc and "\n" not in desc for _, desc, _ in rows)


def test_unknown_dataset_lists_known():
    with pytest.raises(AugmentError, match="unknown dataset 'cifar'.*digits, cub, inat, imagenet, folder"):
        get_dataset("cifar")


@pytest.mark.parametrize("name", ["cub", "inat", "folder"])
def test_needs_data_root(name):
    with pytest.raises(AugmentError, match="--data-root") as e:
        get_dataset(name)
    assert "\n" not in e.value.message and "classifier" in e.value.message


@pytest.mark.parametrize("name", ["cub", "inat", "folder", "imagenet"])
def test_missing_root(name, tmp_path):
    with pytest.raises(AugmentError, match="does not exist"):
        get_dataset(name, data_root=tmp_path / "nowhere")


def test_root_is_a_file(tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(AugmentError, match="is a file"):
        get_dataset("folder", data_root=f)


def test_missing_required_file_is_named(tmp_path):
    (tmp_path / "classes.txt").write_text("1 001.A\n")
    with pytest.raises(AugmentError, match="lacks images.txt"):
        get_dataset("cub", data_root=tmp_path)


def test_unknown_option(fake_cub):
    with pytest.raises(AugmentError, match="takes no option 'class_list'"):
        get_dataset("cub", data_root=fake_cub, class_list="x.txt")
    get_dataset("cub", data_root=fake_cub, class_list=None)  # None = option not given


def test_names_only_from_class_names():
    ds = get_dataset("cub", class_names=["001.Black_footed_Albatross", "002.Laysan_Albatross"])
    assert isinstance(ds, NamesOnlyDataset) and ds.name == "cub"
    assert ds.class_names == ["black footed albatross", "laysan albatross"]
    assert ds.raw_names == ["001.Black_footed_Albatross", "002.Laysan_Albatross"]
    assert ds.splits() == [] and ds.split_sizes() == {}
    with pytest.raises(AugmentError, match="--data-root"):
        ds.kshot(1, seed=0)
    with pytest.raises(AugmentError, match="no images"):
        ds.load_image(Sample("x", 0))
    assert get_dataset("imagenet", class_names=["n01443537", "Tabby, tabby cat"]).class_names == [
        "goldfish",
        "tabby",
    ]
    assert get_dataset("folder", class_names=["Red_Fox"]).class_names == ["red fox"]
    with pytest.raises(AugmentError, match="empty"):
        get_dataset("inat", class_names=[])


def test_data_root_wins_over_class_names(fake_folder):
    ds = get_dataset("folder", data_root=fake_folder, class_names=["x"])
    assert ds.class_names == ["..evil", "red fox", "st. bernard"]


def test_digits_ignores_root_and_names():
    ds = get_dataset("digits", data_root=None, class_names=["a"])
    assert len(ds.class_names) == 10 and ds.split_sizes() == {"train": 1347, "test": 450}
