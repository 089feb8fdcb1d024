"""The readers on fixtures that copy the real distributions' formats exactly (built here, tiny):
CUB_200_2011 as its tarball unpacks, iNat 2021's COCO-style JSON, ImageNet's train/<wnid>/ and flat
val/ with a label file. Images are odd-sized, some grayscale or CMYK, as in the real sets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from augment.datasets import get_dataset
from augment.downstream.mixing import load_split
from augment.errors import AugmentError

CUB_CLASSES = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "200.Common_Yellowthroat"]


def _jpeg(path: Path, size: tuple[int, int], mode: str = "RGB", seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, ((seed * 37) % 256, (seed * 91) % 256, 128)).convert(mode).save(path, "JPEG")
    return path


def make_cub(base: Path) -> Path:
    """CUB_200_2011.tgz unpacked: attributes.txt beside CUB_200_2011/, which holds the five
    metadata files ("<id> <value>" lines, ids from 1), images/NNN.Name/Name_NNNN_NNNNN.jpg, and the
    parts/, attributes/ folders and README the reader ignores. Image ids interleave the classes."""
    (base / "attributes.txt").write_text("1 has_bill_shape::curved_(up_or_down)\n")
    root = base / "CUB_200_2011"
    (root / "parts").mkdir(parents=True)
    (root / "attributes").mkdir()
    (root / "README").write_text("CUB-200-2011\n")
    images, labels, split, boxes = [], [], [], []
    sizes = [(500, 347), (333, 500), (500, 375), (120, 97)]
    image_id = 0
    for j in range(4):
        for c, cls in enumerate(CUB_CLASSES):
            image_id += 1
            cid = int(cls.split(".")[0])
            rel = f"{cls}/{cls.split('.', 1)[1]}_{j + 1:04d}_{1000 + image_id}.jpg"
            mode = "L" if (c, j) == (1, 0) else "RGB"  # CUB has a few grayscale JPEGs
            _jpeg(root / "images" / rel, sizes[(j + c) % len(sizes)], mode, image_id)
            images.append(f"{image_id} {rel}")
            labels.append(f"{image_id} {cid}")
            split.append(f"{image_id} {1 if j % 2 == 0 else 0}")
            boxes.append(f"{image_id} 60.0 27.0 325.0 304.0")
    (root / "classes.txt").write_text("".join(f"{int(c.split('.')[0])} {c}\n" for c in CUB_CLASSES))
    for name, rows in (("images.txt", images), ("image_class_labels.txt", labels),
                       ("train_test_split.txt", split), ("bounding_boxes.txt", boxes)):
        (root / name).write_text("\n".join(rows) + "\n")
    return base


def test_cub_as_unpacked(tmp_path):
    base = make_cub(tmp_path)
    for root in (base, base / "CUB_200_2011"):  # the parent of the tarball's folder, or the folder itself
        ds = get_dataset("cub", data_root=root)
        assert ds.class_names == ["black footed albatross", "laysan albatross", "common yellowthroat"]
        assert ds.split_sizes() == {"train": 6, "test": 6}
        # class ids need not be contiguous (200 is the third class here): index = position by id
        assert [s.label for s in ds.samples("train")[:3]] == [0, 1, 2]
    images, labels = load_split(ds, "test", 32)
    assert images.shape == (6, 3, 32, 32) and sorted(labels.tolist()) == [0, 0, 1, 1, 2, 2]
    grey = next(s for s in ds.samples("train") if "Laysan_Albatross_0001" in str(s.ref))
    assert ds.load_image(grey).mode == "RGB"


def make_inat(root: Path) -> Path:
    """iNat 2021: train.json / val.json (and train_mini.json) at the root, COCO-style with the 2021
    keys, file_name relative to the root (train/<image_dir_name>/<uuid>.jpg)."""
    cats = [
        {"id": 0, "name": "Lumbricus terrestris", "common_name": "Common Earthworm", "supercategory": "Animalia",
         "kingdom": "Animalia", "phylum": "Annelida", "class": "Clitellata", "order": "Haplotaxida",
         "family": "Lumbricidae", "genus": "Lumbricus", "specific_epithet": "terrestris",
         "image_dir_name": "00000_Animalia_Annelida_Clitellata_Haplotaxida_Lumbricidae_Lumbricus_terrestris"},
        {"id": 1, "name": "Eisenia fetida", "common_name": "Red Wiggler", "supercategory": "Animalia",
         "kingdom": "Animalia", "phylum": "Annelida", "class": "Clitellata", "order": "Haplotaxida",
         "family": "Lumbricidae", "genus": "Eisenia", "specific_epithet": "fetida",
         "image_dir_name": "00001_Animalia_Annelida_Clitellata_Haplotaxida_Lumbricidae_Eisenia_fetida"},
    ]
    n = 0
    for split, per in (("train", 3), ("train_mini", 2), ("val", 1)):
        images, annotations = [], []
        for cat in cats:
            for j in range(per):
                n += 1
                rel = f"{split}/{cat['image_dir_name']}/{n:08x}-0000-4000-8000-{n:012x}.jpg"
                size = (500, 375) if j % 2 == 0 else (375, 500)
                _jpeg(root / rel, size, seed=n)
                images.append({"id": n, "width": size[0], "height": size[1], "file_name": rel, "license": 1,
                               "rights_holder": "someone", "date": "2019-05-11 12:00:00+00:00",
                               "latitude": 51.5, "longitude": -0.1, "location_uncertainty": 10})
                annotations.append({"id": n, "image_id": n, "category_id": cat["id"]})
        data = {"info": {"year": 2021, "version": "2021", "description": "iNat 2021"},
                "images": images, "categories": cats, "annotations": annotations,
                "licenses": [{"id": 1, "name": "CC BY", "url": "http://creativecommons.org/licenses/by/4.0/"}]}
        (root / f"{split}.json").write_text(json.dumps(data))
    return root


def test_inat_2021_json(tmp_path):
    root = make_inat(tmp_path / "inat")
    ds = get_dataset("inat", data_root=root)
    assert ds.class_names == ["lumbricus terrestris", "eisenia fetida"]
    assert ds.split_sizes() == {"train": 6, "train_mini": 4, "val": 2}
    assert len(ds.samples("test")) == 2  # test is val: 2021's test labels are not public
    images, labels = load_split(ds, "train", 24)
    assert images.shape == (6, 3, 24, 24) and labels.tolist() == [0, 0, 0, 1, 1, 1]
    # a class list by image_dir_name, by name and by id
    (root / "list.txt").write_text(
        "00001_Animalia_Annelida_Clitellata_Haplotaxida_Lumbricidae_Eisenia_fetida\nLumbricus terrestris\n")
    assert get_dataset("inat", data_root=root, class_list=str(root / "list.txt")).class_names == [
        "eisenia fetida", "lumbricus terrestris"]
    assert get_dataset("inat", data_root=root, class_list=["0"]).class_names == ["lumbricus terrestris"]


WNIDS = ["n01440764", "n01443537"]  # tench, goldfish: classes 0 and 1 in timm's order


def make_imagenet(root: Path, val: str) -> Path:
    """ILSVRC2012: train/<wnid>/<wnid>_<n>.JPEG (some CMYK and grayscale, as in the real train set),
    and val/ either flat (``ILSVRC2012_val_<8 digits>.JPEG``, with ``LOC_val_solution.csv`` as
    Kaggle ships it or Caffe's ``val.txt``) or sorted into ``val/<wnid>/``."""
    for c, wnid in enumerate(WNIDS):
        for j in range(2):
            _jpeg(root / "train" / wnid / f"{wnid}_{1000 + j}.JPEG", (500, 333 + 40 * j),
                  "CMYK" if (c, j) == (0, 1) else "L" if (c, j) == (1, 0) else "RGB", j)
    for i in range(1, 5):
        wnid = WNIDS[i % 2]
        name = f"ILSVRC2012_val_{i:08d}.JPEG"
        _jpeg(root / "val" / (name if val != "sorted" else f"{wnid}/{name}"), (500, 375), seed=i)
    if val == "kaggle":
        rows = [f"ILSVRC2012_val_{i:08d},{WNIDS[i % 2]} 1 2 100 200 " for i in range(1, 5)]
        (root / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + "\n".join(rows) + "\n")
    elif val == "caffe":
        (root / "val.txt").write_text("".join(f"ILSVRC2012_val_{i:08d}.JPEG {i % 2}\n" for i in range(1, 5)))
    return root


@pytest.mark.parametrize("val", ["sorted", "kaggle", "caffe"])
def test_imagenet_train_and_val(tmp_path, val):
    ds = get_dataset("imagenet", data_root=make_imagenet(tmp_path / "imagenet", val))
    assert ds.split_sizes() == {"train": 4, "val": 4}
    by_file = {Path(str(s.ref)).stem: s.label for s in ds.samples("val")}
    assert by_file == {f"ILSVRC2012_val_{i:08d}": i % 2 for i in range(1, 5)}
    images, labels = load_split(ds, "train", 40)
    assert images.shape == (4, 3, 40, 40) and labels.tolist() == [0, 0, 1, 1]


def test_imagenet_flat_val_without_labels_says_what_to_add(tmp_path):
    root = make_imagenet(tmp_path / "imagenet", "flat")
    ds = get_dataset("imagenet", data_root=root)
    assert ds.splits() == ["train"]  # the flat val/ is not guessed at
    bare = tmp_path / "only_val"
    _jpeg(bare / "val" / "ILSVRC2012_val_00000001.JPEG", (50, 40))
    with pytest.raises(AugmentError, match="LOC_val_solution.csv or val.txt"):
        get_dataset("imagenet", data_root=bare)
