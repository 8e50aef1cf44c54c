"""Split converters (datasets/prepare_karpathy.py, datasets/prepare_albef.py): records, counts, checks."""
from __future__ import annotations

import json
import os

import pytest
from PIL import Image

from icsd.data.annotations import load_split
from icsd.data.captions import caption_fingerprint
from icsd.data.feature_file import read_meta
from icsd.errors import DataError
from icsd.tools.prep.albef import albef_records
from icsd.tools.prep.karpathy import karpathy_records

from conftest import EXAMPLE_DATA, load_dataset_script


def make_images(root, *relpaths):
    for rel in relpaths:
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.new("RGB", (4, 4), (10, 20, 30)).save(path)


def sentences(*raw):
    return [{"raw": r, "tokens": r.lower().split()} for r in raw]


KARPATHY_COCO = {"dataset": "coco", "images": [
    {"filepath": "val2014", "filename": "COCO_val2014_000000000001.jpg", "split": "test",
     "sentences": sentences("A cat.", "A cat on a mat.", "Cat", "A small cat", "Grey cat")},
    {"filepath": "train2014", "filename": "COCO_train2014_000000000002.jpg", "split": "train",
     "sentences": sentences("A dog runs.", "Dog running", "A brown dog", "Dog in park", "Running dog", "Sixth one")},
    {"filepath": "val2014", "filename": "COCO_val2014_000000000003.jpg", "split": "restval",
     "sentences": sentences("A bus.", "Red bus", "Bus on a road", "City bus")},
    {"filepath": "val2014", "filename": "COCO_val2014_000000000004.jpg", "split": "val",
     "sentences": sentences("A tree.", "Green tree", "Tall tree", "Old tree", "A tree in a field")},
]}


@pytest.fixture
def coco_root(tmp_path):
    root = tmp_path / "coco"
    make_images(root, *(f"images/{im['filepath']}/{im['filename']}" for im in KARPATHY_COCO["images"]))
    (tmp_path / "dataset_coco.json").write_text(json.dumps(KARPATHY_COCO))
    return root


def test_karpathy_coco_train_is_train_plus_restval(tmp_path, coco_root, capsys):
    rc = load_dataset_script("prepare_karpathy").main(["--karpathy", str(tmp_path / "dataset_coco.json"),
                                               "--root", str(coco_root), "--images", "images"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "train: 2 images, 10 captions" in out  # 6 + 4 captions: nothing assumes 5
    assert "val: 1 images, 5 captions" in out and "test: 1 images, 5 captions" in out
    train = json.loads((coco_root / "train.json").read_text())
    assert train[0] == {"image_path": "images/train2014/COCO_train2014_000000000002.jpg", "caption": "A dog runs.",
                        "image_id": "COCO_train2014_000000000002.jpg"}
    assert [r["caption"] for r in train][-4:] == ["A bus.", "Red bus", "Bus on a road", "City bus"]
    split = load_split("train", str(coco_root / "train.json"), str(coco_root))  # loads, images found
    assert split.image_ids == ["COCO_train2014_000000000002.jpg", "COCO_val2014_000000000003.jpg"]
    assert [len(t) for t in split.img2txt] == [6, 4]
    test = json.loads((coco_root / "test.json").read_text())
    assert [r["caption"] for r in test] == ["A cat.", "A cat on a mat.", "Cat", "A small cat", "Grey cat"]


def test_karpathy_flickr_has_no_filepath_and_stem_ids(tmp_path):
    data = {"images": [{"filename": f"{n}.jpg", "split": s, "sentences": sentences("a b", "c d")}
                       for n, s in ((100, "train"), (200, "val"), (300, "test"))]}
    (tmp_path / "dataset_flickr30k.json").write_text(json.dumps(data))
    make_images(tmp_path, "flickr30k-images/100.jpg", "flickr30k-images/200.jpg", "flickr30k-images/300.jpg")
    rc = load_dataset_script("prepare_karpathy").main(["--karpathy", str(tmp_path / "dataset_flickr30k.json"), "--root",
                                               str(tmp_path), "--images", "flickr30k-images", "--id-style", "stem",
                                               "--out", "new_{split}.json"])
    assert rc == 0
    val = json.loads((tmp_path / "new_val.json").read_text())
    assert val == [{"image_path": "flickr30k-images/200.jpg", "caption": c, "image_id": "200"} for c in ("a b", "c d")]


def test_karpathy_round_trip_of_dataset_example(tmp_path):
    """dataset_example's splits written as a Karpathy file convert back to the same records, so the
    committed text caches (fingerprints of the captions) still match."""
    images = []
    for split in ("train", "val", "test"):
        grouped: dict[str, dict] = {}
        for rec in json.load(open(os.path.join(EXAMPLE_DATA, f"{split}.json"))):
            entry = grouped.setdefault(rec["image_id"], {"filename": os.path.basename(rec["image_path"]),
                                                         "split": split, "sentences": []})
            entry["sentences"].append({"raw": rec["caption"]})
        images.extend(grouped.values())
    (tmp_path / "karpathy.json").write_text(json.dumps({"images": images}))
    os.symlink(os.path.join(EXAMPLE_DATA, "pics"), tmp_path / "pics")
    assert load_dataset_script("prepare_karpathy").main(["--karpathy", str(tmp_path / "karpathy.json"),
                                                 "--root", str(tmp_path), "--images", "pics"]) == 0
    for split in ("train", "val", "test"):
        original = json.load(open(os.path.join(EXAMPLE_DATA, f"{split}.json")))
        converted = json.loads((tmp_path / f"{split}.json").read_text())
        assert converted == [{**r, "image_path": os.path.normpath(r["image_path"])} for r in original]
        loaded = load_split(split, str(tmp_path / f"{split}.json"), str(tmp_path))
        fingerprint = read_meta(os.path.join(EXAMPLE_DATA, f"{split}_minilm.npy"))["fingerprint"]
        assert caption_fingerprint(loaded.captions) == fingerprint


def test_missing_images_are_listed_and_nothing_is_written(tmp_path, coco_root, capsys):
    os.remove(coco_root / "images/val2014/COCO_val2014_000000000003.jpg")
    rc = load_dataset_script("prepare_karpathy").main(["--karpathy", str(tmp_path / "dataset_coco.json"),
                                               "--root", str(coco_root), "--images", "images"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "dataset_coco.json (train split): 1 of 2 images not found" in err
    assert "images/val2014/COCO_val2014_000000000003.jpg (image_id 'COCO_val2014_000000000003.jpg')" in err
    assert not any(p.suffix == ".json" for p in coco_root.iterdir())
    # without the check, the splits are written
    assert load_dataset_script("prepare_karpathy").main(["--karpathy", str(tmp_path / "dataset_coco.json"), "--root",
                                                 str(coco_root), "--images", "images", "--no-check-images"]) == 0


@pytest.mark.parametrize("images, message", [
    ([{"filename": "a.jpg", "split": "train"}], r"images\[0\] has no field 'sentences'"),
    ([{"filename": "a.jpg", "split": "train", "sentences": []}], r"images\[0\] \(a\.jpg\) has no sentences"),
    ([{"filename": "a.jpg", "split": "holdout", "sentences": sentences("x")}],
     r"images\[0\] \(a\.jpg\) has unknown split 'holdout'"),
    ([{"filename": "a.jpg", "split": "val", "sentences": [{"imgid": 3}]}],
     r"images\[0\] \(a\.jpg\) has a sentence without 'raw' text"),
])
def test_bad_karpathy_entries_name_the_file_and_image(tmp_path, images, message):
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps({"images": images}))
    with pytest.raises(DataError, match=f"dataset_coco.json: {message}"):
        karpathy_records(str(path))


def test_not_a_karpathy_file(tmp_path):
    path = tmp_path / "coco_train.json"
    path.write_text(json.dumps([{"image": "a.jpg", "caption": "x"}]))
    with pytest.raises(DataError, match="coco_train.json: expected Karpathy's format"):
        karpathy_records(str(path))


def test_albef_train_and_test_files(tmp_path, capsys):
    ann = tmp_path / "ann"
    ann.mkdir()
    (ann / "coco_train.json").write_text(json.dumps([
        {"image": "val2014/COCO_val2014_000000000003.jpg", "caption": "A bus. ", "image_id": "coco_3"},
        {"image": "val2014/COCO_val2014_000000000003.jpg", "caption": "Red bus", "image_id": "coco_3"},
        {"image": "train2014/COCO_train2014_000000000002.jpg", "caption": "A dog", "image_id": "coco_2"}]))
    (ann / "coco_test.json").write_text(json.dumps([
        {"image": "val2014/COCO_val2014_000000000001.jpg", "caption": ["A cat.", "Grey cat", "Cat", "Mat", "Fur"]},
        {"image": "val2014/COCO_val2014_000000000004.jpg", "caption": ["A tree.", "Tall tree", "Old tree"]}]))
    root = tmp_path / "coco"
    make_images(root / "images", "val2014/COCO_val2014_000000000001.jpg", "val2014/COCO_val2014_000000000003.jpg",
                "val2014/COCO_val2014_000000000004.jpg", "train2014/COCO_train2014_000000000002.jpg")
    rc = load_dataset_script("prepare_albef").main(["--root", str(root), "--images", "images",
                                            "--train", str(ann / "coco_train.json"),
                                            "--test", str(ann / "coco_test.json")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "train: 2 images, 3 captions" in out and "test: 2 images, 8 captions" in out
    assert not (root / "val.json").exists()
    train = json.loads((root / "train.json").read_text())
    assert train[0] == {"image_path": "images/val2014/COCO_val2014_000000000003.jpg", "caption": "A bus.",
                        "image_id": "coco_3"}
    test = json.loads((root / "test.json").read_text())
    assert len(test) == 8 and test[5] == {"image_path": "images/val2014/COCO_val2014_000000000004.jpg",
                                          "caption": "A tree.", "image_id": "COCO_val2014_000000000004.jpg"}
    split = load_split("test", str(root / "test.json"), str(root))
    assert [len(t) for t in split.img2txt] == [5, 3]
    stems = albef_records(str(ann / "coco_test.json"), "images", id_style="stem")
    assert stems[0]["image_id"] == "COCO_val2014_000000000001"


@pytest.mark.parametrize("records, message", [
    ([{"caption": "x"}], r"record 0 has no field 'image'"),
    ([{"image": "a.jpg", "caption": "x"}, {"image": "b.jpg", "caption": []}],
     r"record 1 \(b\.jpg\): 'caption' must be a string or a non-empty list"),
    ([{"image": "a.jpg", "caption": [3]}], r"record 0 \(a\.jpg\): 'caption' must be"),
    ({"image": "a.jpg"}, "expected a non-empty JSON list"),
])
def test_bad_albef_records_name_the_file_and_record(tmp_path, records, message):
    path = tmp_path / "flickr30k_test.json"
    path.write_text(json.dumps(records))
    with pytest.raises(DataError, match=f"flickr30k_test.json: {message}"):
        albef_records(str(path))


def test_empty_caption_and_ambiguous_image_id_stop_before_writing(tmp_path, capsys):
    make_images(tmp_path, "a.jpg", "b.jpg")
    (tmp_path / "t.json").write_text(json.dumps([{"image": "a.jpg", "caption": "?!", "image_id": 1}]))
    argv = ["--root", str(tmp_path), "--train", str(tmp_path / "t.json")]
    assert load_dataset_script("prepare_albef").main(argv) == 1
    err = capsys.readouterr().err
    assert "t.json (train split): a caption of image_id '1' is empty after preprocessing: '?!'" in err
    (tmp_path / "t.json").write_text(json.dumps([{"image": "a.jpg", "caption": "x", "image_id": 1},
                                                 {"image": "b.jpg", "caption": "y", "image_id": 1}]))
    argv = ["--root", str(tmp_path), "--train", str(tmp_path / "t.json")]
    assert load_dataset_script("prepare_albef").main(argv) == 1
    assert "image_id '1' is used by two images (a.jpg and b.jpg)" in capsys.readouterr().err
    assert not (tmp_path / "train.json").exists()
