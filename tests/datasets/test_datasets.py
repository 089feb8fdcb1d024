"""Every dataset against the one interface: names, split sizes, RGB images, seeded k-shot."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from augment.datasets import get_dataset
from augment.datasets.base import Dataset
from augment.errors import AugmentError
from tests.fixtures.datasets import FAKE_CUB_NAMES

# name, fixture (None: no data root), options, expected names (prefix), split sizes, train split, good k
CASES = {
    "digits": ("digits", None, {}, ["zero", "one", "two"], {"train": 1347, "test": 450}, "train"),
    "cub": ("cub", "fake_cub", {}, FAKE_CUB_NAMES, {"train": 12, "test": 6}, "train"),
    "inat": (
        "inat",
        "fake_inat",
        {},
        ["lumbricus terrestris", "haliaeetus leucocephalus", "quercus alba", "amanita muscaria"],
        {"train": 12, "val": 8},
        "train",
    ),
    "folder": ("folder", "fake_folder", {}, ["..evil", "red fox", "st. bernard"], {"train": 10}, "train"),
    "folder_splits": (
        "folder",
        "fake_folder_splits",
        {},
        ["cat", "dog breed"],
        {"train": 6, "test": 2},
        "train",
    ),
    "imagenet": (
        "imagenet",
        "fake_imagenet",
        {},
        ["tench", "goldfish", "great white shark"],
        {"val": 4},
        "val",
    ),
}


@pytest.fixture(params=list(CASES))
def case(request) -> tuple[Dataset, list[str], dict[str, int], str]:
    name, fixture, options, names, sizes, split = CASES[request.param]
    root = request.getfixturevalue(fixture) if fixture else None
    return get_dataset(name, data_root=root, **options), names, sizes, split


def test_names_and_sizes(case):
    ds, names, sizes, _ = case
    assert ds.class_names[: len(names)] == names
    assert all(isinstance(n, str) and n for n in ds.class_names)
    assert ds.split_sizes() == sizes
    assert ds.splits() == list(sizes)


def test_samples_fixed_order_and_labels(case):
    ds, _, _, split = case
    a, b = ds.samples(split), ds.samples(split)
    assert a == b
    assert all(0 <= s.label < len(ds.class_names) for s in a)


def test_load_image_rgb(case):
    ds, _, _, split = case
    for s in ds.samples(split)[:3]:
        if "broken" in str(s.ref):
            continue
        img = ds.load_image(s)
        assert isinstance(img, Image.Image) and img.mode == "RGB"
        assert img.size[0] > 0


def test_kshot_deterministic_superset_and_too_large(case):
    ds, _, _, split = case
    if ds.name == "imagenet":  # the fake val folder has 2 of the 1000 classes: k-shot must refuse
        with pytest.raises(AugmentError, match="larger than the smallest class"):
            ds.kshot(1, seed=0, split=split)
        return
    by_class: dict[int, int] = {}
    for s in ds.samples(split):
        by_class[s.label] = by_class.get(s.label, 0) + 1
    smallest = min(by_class.values())
    k1 = ds.kshot(1, seed=3, split=split)
    assert k1 == ds.kshot(1, seed=3, split=split)
    assert len(k1) == len(ds.class_names)
    assert sorted(s.label for s in k1) == list(range(len(ds.class_names)))
    k2 = ds.kshot(smallest, seed=3, split=split)
    assert set(k1) <= set(k2) and len(k2) == smallest * len(ds.class_names)
    if smallest > 1:  # another seed picks another set somewhere (digits, folder...)
        others = [set(ds.kshot(1, seed=s, split=split)) for s in range(4, 12)]
        assert any(o != set(k1) for o in others)
    assert ds.kshot(0, seed=3, split=split) == []
    with pytest.raises(AugmentError, match=f"use k <= {smallest}"):
        ds.kshot(smallest + 1, seed=3, split=split)


def test_missing_split_is_an_error(case):
    ds, _, _, _ = case
    with pytest.raises(AugmentError, match="no .*split 'nope'"):
        ds.samples("nope")


# --- dataset-specific behaviour ---------------------------------------------------------------


def test_digits_classes_match_manifest():
    ds = get_dataset("digits")
    path = Path(__file__).resolve().parents[2] / "manifests" / "digits" / "classes.txt"
    assert path.read_text().splitlines() == ds.class_names
    assert len(ds.class_names) == 10
    assert ds.load_image(ds.samples("test")[0]).size == (32, 32)


def test_cub_accepts_parent_folder(fake_cub):
    a = get_dataset("cub", data_root=fake_cub)
    b = get_dataset("cub", data_root=fake_cub.parent)
    assert a.class_names == b.class_names == FAKE_CUB_NAMES
    assert a.samples("test") == b.samples("test")
    assert a.raw_names[2] == "003.Sooty.Albatross"
    # split flags from train_test_split.txt: the first 4 of each class are train
    assert all(Path(s.ref).stem.endswith(("0000", "0001", "0002", "0003")) for s in a.samples("train"))


def test_cub_missing_metadata_file_is_named(fake_cub):
    (fake_cub / "train_test_split.txt").unlink()
    for root in (fake_cub, fake_cub.parent):
        with pytest.raises(AugmentError, match="lacks train_test_split.txt"):
            get_dataset("cub", data_root=root)


def test_cub_missing_image_file_names_it(fake_cub):
    ds = get_dataset("cub", data_root=fake_cub)
    s = ds.samples("train")[0]
    Path(s.ref).unlink()
    with pytest.raises(AugmentError, match="does not exist") as e:
        ds.load_image(s)
    assert Path(s.ref).name in str(e.value)


def test_cub_malformed_line(fake_cub):
    (fake_cub / "images.txt").write_text("1\n")
    with pytest.raises(AugmentError, match=r"images.txt line 1"):
        get_dataset("cub", data_root=fake_cub)


def test_inat_class_list(fake_inat):
    ds = get_dataset("inat", data_root=fake_inat, class_list=fake_inat / "class_list.txt")
    assert ds.class_names == ["haliaeetus leucocephalus", "lumbricus terrestris"]
    assert ds.category_ids == [11, 10]
    assert ds.split_sizes() == {"train": 6, "val": 4}
    assert ds.samples("test") == ds.samples("val")  # alias
    assert all("Haliaeetus" in s.ref for s in ds.samples("train") if s.label == 0)
    # a list works as well, by image_dir_name too
    ds2 = get_dataset("inat", data_root=fake_inat, class_list=["00012_Plantae_Tracheophyta_Quercus_alba"])
    assert ds2.class_names == ["quercus alba"] and ds2.split_sizes() == {"train": 3, "val": 2}


def test_inat_bad_class_list(fake_inat, tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("Lumbricus terrestris\nNot a species\n")
    with pytest.raises(AugmentError, match="'Not a species'"):
        get_dataset("inat", data_root=fake_inat, class_list=bad)
    with pytest.raises(AugmentError, match="does not exist"):
        get_dataset("inat", data_root=fake_inat, class_list=tmp_path / "missing.txt")
    bad.write_text("10\nlumbricus_terrestris\n")
    with pytest.raises(AugmentError, match="twice"):
        get_dataset("inat", data_root=fake_inat, class_list=bad)


def test_inat_missing_json(fake_inat):
    (fake_inat / "train.json").unlink()
    ds = get_dataset("inat", data_root=fake_inat)  # val only still works
    assert ds.splits() == ["val"]
    with pytest.raises(AugmentError, match="no split 'train'"):
        ds.kshot(1, seed=0)
    (fake_inat / "val.json").unlink()
    with pytest.raises(AugmentError, match="lacks train.json and val.json"):
        get_dataset("inat", data_root=fake_inat)


def test_inat_corrupt_json(fake_inat):
    (fake_inat / "val.json").write_text("{not json")
    with pytest.raises(AugmentError, match="cannot read .*val.json"):
        get_dataset("inat", data_root=fake_inat)


def test_folder_odd_names_corrupt_and_junk(fake_folder):
    ds = get_dataset("folder", data_root=fake_folder)
    assert ds.folder_names == ["..evil", "red fox", "st. bernard"]
    assert ds.empty_dirs == ["empty"]
    refs = [Path(s.ref).name for s in ds.samples("train")]
    assert "notes.txt" not in refs and ".DS_Store" not in refs
    assert "b.PNG" in refs and "c.webp" in refs and "c.jpeg" in refs
    broken = next(s for s in ds.samples("train") if s.ref.endswith("broken.jpg"))
    with pytest.raises(AugmentError, match="broken.jpg"):
        ds.load_image(broken)
    assert ds.skipped == [broken.ref]
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        loaded = ds.load_images(ds.samples("train"))
    assert len(loaded) == 9 and all(img.mode == "RGB" for _, img in loaded)
    assert ds.skipped == [broken.ref]


def test_folder_without_images(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.txt").write_text("x")
    with pytest.raises(AugmentError, match="no class folders with images"):
        get_dataset("folder", data_root=tmp_path)


def test_imagenet_names_without_root():
    ds = get_dataset("imagenet")
    assert len(ds.class_names) == 1000 and ds.class_names[:2] == ["tench", "goldfish"]
    assert ds.wnids[0] == "n01440764" and ds.wnids[-1] == "n15075141"
    assert ds.class_names[999] == "toilet tissue" and ds.class_names.count("crane") == 2
    assert ds.class_names == [n.lower() for n in ds.class_names]
    assert ds.splits() == []
    with pytest.raises(AugmentError, match="--data-root"):
        ds.samples("val")


def test_imagenet_train_val_parent(tmp_path):
    from tests.fixtures.datasets import make_fake_imagenet

    make_fake_imagenet(tmp_path / "val")
    make_fake_imagenet(tmp_path / "train")
    ds = get_dataset("imagenet", data_root=tmp_path)
    assert ds.split_sizes() == {"train": 4, "val": 4}
    assert {s.label for s in ds.samples("val")} == {0, 1}


def test_imagenet_flat_val_folder_hint(tmp_path):
    from tests.fixtures.datasets import save_image

    save_image(tmp_path / "ILSVRC2012_val_00000001.JPEG", 1)
    with pytest.raises(AugmentError, match="valprep"):
        get_dataset("imagenet", data_root=tmp_path)


def test_folder_symlink_loop_and_relative_root(fake_folder, monkeypatch):
    (fake_folder / "red fox" / "loop").symlink_to(fake_folder / "red fox", target_is_directory=True)
    monkeypatch.chdir(fake_folder.parent)
    ds = get_dataset("folder", data_root=fake_folder.name)
    assert ds.split_sizes() == {"train": 10}
    assert all(Path(s.ref).is_absolute() for s in ds.samples("train"))


def test_datasets_pickle(case):
    import pickle

    ds, names, sizes, split = case
    back = pickle.loads(pickle.dumps(ds))
    assert back.class_names == ds.class_names and back.samples(split) == ds.samples(split)


def test_folders_that_clean_to_one_name_are_refused_naming_both(tmp_path):
    from tests.fixtures.datasets import save_image

    for i, folder in enumerate(("Red_Fox", "otter", "red fox")):
        save_image(tmp_path / folder / "a.jpg", i)
    with pytest.raises(AugmentError) as e:
        get_dataset("folder", data_root=tmp_path)
    msg = e.value.message
    assert "'Red_Fox' and 'red fox'" in msg and "'red fox'" in msg and str(tmp_path) in msg


def test_cub_classes_that_clean_to_one_name_are_refused(fake_cub):
    classes = fake_cub / "classes.txt"
    classes.write_text(classes.read_text().replace("003.Sooty.Albatross", "003.Laysan.Albatross"))
    with pytest.raises(AugmentError, match=r"'002.Laysan_Albatross' and '003.Laysan.Albatross' .*'laysan albatross'"):
        get_dataset("cub", data_root=fake_cub)


def test_inat_categories_that_clean_to_one_name_are_refused(fake_inat):
    import json

    for split in ("train", "val"):
        path = fake_inat / f"{split}.json"
        data = json.loads(path.read_text())
        data["categories"][1]["name"] = "lumbricus_Terrestris"  # id 11 cleans to id 10's name
        path.write_text(json.dumps(data))
    with pytest.raises(AugmentError, match=r"'Lumbricus terrestris' and 'lumbricus_Terrestris'"):
        get_dataset("inat", data_root=fake_inat)
