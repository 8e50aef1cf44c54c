"""Data loading (docs/data.md): captions, annotations, split index maps, teacher features, datasets."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from icsd.data.annotations import load_split
from icsd.data.build import load_data_split, load_teacher_features
from icsd.data.captions import caption_fingerprint, preprocess_caption
from icsd.data.datasets import EvalTexts, TrainPairs
from icsd.data.feature_file import MatrixRows, write_feature_matrix
from icsd.data.teacher_features import load_image_features, load_text_features
from icsd.distributed import DistEnv
from icsd.errors import DataError

from conftest import EXAMPLE_DATA


@pytest.mark.parametrize("raw, expected", [
    ("A man riding a wave on top of a surfboard.", "a man riding a wave on top of a surfboard"),
    ("  Two   dogs,\tplaying; in the SNOW!!  ", "two dogs playing in the snow"),
    ("It's a \"big\" (red) bus: #1 * ~ok?", "it s a big red bus 1 ok"),
    ("A black-and-white cat on a table/desk", "a black and white cat on a table desk"),
    ("<person> holds a <PERSON> sign", "person holds a person sign"),
    ("e-mail\nline\r\nbreak", "e mail line break"),
    ("keeps digits 3.5 and & < > signs", "keeps digits 3 5 and & < > signs"),
])
def test_preprocess_caption(raw, expected):
    assert preprocess_caption(raw) == expected


def test_preprocess_caption_cuts_to_max_words():
    assert preprocess_caption("one two, three. four five", max_words=3) == "one two three"
    assert preprocess_caption(" ... !!! ") == ""


def test_fingerprint_changes_with_text_and_order():
    a = caption_fingerprint(["a b", "c"])
    assert a == caption_fingerprint(["a b", "c"])
    assert a != caption_fingerprint(["c", "a b"]) and a != caption_fingerprint(["a", "b c"])


def write_split(tmp_path, records, name="test"):
    (tmp_path / "pics").mkdir(exist_ok=True)
    for rec in records:
        if "image_path" in rec:
            (tmp_path / rec["image_path"]).touch()
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(records))
    return str(path)


def test_index_maps_with_2_5_and_6_captions(tmp_path):
    counts = {"img_c": 6, "img_a": 2, "img_b": 5}
    records = [{"image_path": f"pics/{i}.jpg", "caption": f"caption {k} of {i}", "image_id": i}
               for i, n in counts.items() for k in range(n)]
    rng = np.random.default_rng(0)
    records = [records[i] for i in rng.permutation(len(records))]
    split = load_split("test", write_split(tmp_path, records), str(tmp_path))
    assert split.image_ids == ["img_a", "img_b", "img_c"]  # sorted by image_id
    assert [len(t) for t in split.img2txt] == [2, 5, 6]
    for i, texts in enumerate(split.img2txt):
        for t in texts:
            assert split.txt2img[t] == i
            assert records[t]["image_id"] == split.image_ids[i]
            assert split.captions[t] == records[t]["caption"]
    assert sorted(np.concatenate(split.img2txt).tolist()) == list(range(13))
    assert split.image_paths[0] == os.path.normpath(str(tmp_path / "pics/img_a.jpg"))
    # Evaluation texts: grouped by image, images in sorted order.
    texts = EvalTexts(split, lambda c: torch.zeros(1, 4))
    assert texts.txt2img.tolist() == [0] * 2 + [1] * 5 + [2] * 6
    assert sorted(split.captions[t] for t in texts.order[:2]) == [f"caption {k} of img_a" for k in range(2)]
    assert list(texts.order[:2]) == sorted(texts.order[:2])  # within an image, record order


@pytest.mark.parametrize("records, message", [
    ([{"caption": "x", "image_id": "a"}], r"record 0 has no field 'image_path'"),
    ([{"image_path": "pics/a.jpg", "caption": "ok", "image_id": "a"},
      {"image_path": "pics/a.jpg", "caption": " ?! ", "image_id": "a"}],
     r"record 1 \(image_id 'a'\) has an empty caption"),
    ([{"image_path": "pics/a.jpg", "caption": "x", "image_id": "a"},
      {"image_path": "pics/b.jpg", "caption": "y", "image_id": "a"}], r"image_id 'a' is listed with two image paths"),
    ([], r"expected a non-empty JSON list"),
])
def test_bad_annotations_name_the_file_and_record(tmp_path, records, message):
    path = write_split(tmp_path, records)
    with pytest.raises(DataError, match=message) as err:
        load_split("test", path, str(tmp_path))
    assert path in str(err.value)


def test_malformed_json_and_missing_image(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('[{"image_path": ')
    with pytest.raises(DataError, match=rf"{bad}: malformed JSON"):
        load_split("bad", str(bad), str(tmp_path))
    path = tmp_path / "test.json"
    path.write_text(json.dumps([{"image_path": "pics/gone.jpg", "caption": "x", "image_id": "g"}]))
    with pytest.raises(DataError, match=r"image of image_id 'g' not found: .*gone.jpg"):
        load_split("test", str(path), str(tmp_path))


def test_annotation_pattern_new_split(tmp_path, example_cfg):
    import dataclasses
    import shutil

    shutil.copy(os.path.join(EXAMPLE_DATA, "val.json"), tmp_path / "new_val.json")
    os.symlink(os.path.join(EXAMPLE_DATA, "pics"), tmp_path / "pics")
    data = dataclasses.replace(example_cfg.data, root=str(tmp_path), annotation="new_{split}.json")
    assert load_data_split(data, "val").num_captions == 100


# ----------------------------------------------------------------------------------------------------
# Teacher features
# ----------------------------------------------------------------------------------------------------
def make_features(tmp_path, ids, dim=6, seed=0):
    """The same random features in both layouts: released pickled dict and mmap matrix + sidecar."""
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((len(ids), dim)).astype(np.float16)
    released = str(tmp_path / "released.npy")
    np.save(released, {i: vectors[k][None, :] if k % 2 else vectors[k] for k, i in enumerate(ids)})
    matrix = str(tmp_path / "matrix.npy")
    order = rng.permutation(len(ids))  # rows in another order than the dict
    write_feature_matrix(matrix, vectors[order], {"ids": [ids[k] for k in order], "model": "random"})
    return vectors, released, matrix


def test_both_image_feature_layouts_load_and_agree(tmp_path):
    ids = [f"img{k}" for k in range(9)]
    vectors, released, matrix = make_features(tmp_path, ids)
    a, b = load_image_features(released), load_image_features(matrix)
    assert a.dim == b.dim == 6
    assert isinstance(b._rows, MatrixRows)
    query = ["img4", "img0", "img8"]
    for layout in (a, b):
        rows = layout.rows_for(query)
        got = np.stack([layout.vector(r) for r in rows])
        np.testing.assert_array_equal(got, vectors[[4, 0, 8]])


def test_flattened_token_features(tmp_path):
    released = str(tmp_path / "tokens.npy")
    tokens = {"a": np.arange(12, dtype=np.float32).reshape(1, 3, 4), "b": np.ones((3, 4), np.float32)}
    np.save(released, tokens)
    feats = load_image_features(released)
    assert feats.dim == 12
    np.testing.assert_array_equal(feats.vector(feats.rows_for(["a"])[0]), np.arange(12))


def test_missing_feature_names_file_and_id(tmp_path):
    _, released, matrix = make_features(tmp_path, ["x", "y"])
    for path in (released, matrix):
        with pytest.raises(DataError, match=rf"{path}: no image feature for image_id 'z'"):
            load_image_features(path).rows_for(["x", "z"])


def test_wrong_feature_dimension_names_file_and_id(tmp_path):
    path = str(tmp_path / "bad.npy")
    np.save(path, {"a": np.zeros(8), "b": np.zeros((1, 8)), "c": np.zeros(7)})
    with pytest.raises(DataError, match=rf"{path}: feature of image_id 'c' has dimension 7, the others have 8"):
        load_image_features(path)
    _, _, matrix = make_features(tmp_path, ["x", "y"])
    meta = json.load(open(matrix + ".meta.json"))
    json.dump({**meta, "dim": 5}, open(matrix + ".meta.json", "w"))
    with pytest.raises(DataError, match=r"sidecar says dim 5, the matrix has 6 columns"):
        load_image_features(matrix)
    json.dump({**meta, "ids": ["x"]}, open(matrix + ".meta.json", "w"))
    with pytest.raises(DataError, match=r"'ids' must list one image_id per row"):
        load_image_features(matrix)


def test_matrix_without_sidecar_is_refused(tmp_path):
    path = str(tmp_path / "m.npy")
    np.save(path, np.zeros((2, 3), np.float16))
    with pytest.raises(DataError, match=r"needs its sidecar"):
        load_image_features(path)


def test_text_cache_checks_captions_and_teacher(tmp_path):
    captions = ["a dog", "a cat", "two birds"]
    path = str(tmp_path / "t.npy")
    write_feature_matrix(path, np.eye(3, 4), {"model": "teacher-a", "fingerprint": caption_fingerprint(captions)})
    got = load_text_features(path, caption_fingerprint(captions), 3, "teacher-a")
    np.testing.assert_array_equal(np.asarray(got.array(), np.float32), np.eye(3, 4))
    assert load_text_features(path, caption_fingerprint(captions), 3, None).shape == (3, 4)
    with pytest.raises(DataError, match=rf"stale text feature cache {path}: it was built from other captions"):
        load_text_features(path, caption_fingerprint(captions[::-1]), 3, "teacher-a")
    with pytest.raises(DataError, match=r"built by teacher 'teacher-a', the config asks for 'teacher-b'"):
        load_text_features(path, caption_fingerprint(captions), 3, "teacher-b")
    with pytest.raises(DataError, match=r"text feature cache not found"):
        load_text_features(str(tmp_path / "none.npy"), "f", 3, None)


def test_example_train_pairs(example_cfg):
    from icsd.models.backbone import build_backbone

    split = load_data_split(example_cfg.data, "train")
    teacher = load_teacher_features(example_cfg.data, split)
    backbone = build_backbone(example_cfg.model)
    pairs = TrainPairs(split, backbone.transform, backbone.tokenizer, teacher.image, teacher.text)
    assert len(pairs) == 300
    item = pairs[7]
    assert item["image"].shape == (3, 64, 64) and item["tokens"].shape == (32,)
    assert int(item["image_index"]) == split.txt2img[7]
    assert item["ext_img"].shape == (teacher.image.dim,) and item["ext_txt"].shape == (384,)
    # the committed files, read independently of the loaders
    text = np.load(os.path.join(EXAMPLE_DATA, "train_minilm.npy"))
    np.testing.assert_array_equal(item["ext_txt"].numpy(), text[7])
    image = np.load(os.path.join(EXAMPLE_DATA, "train_unicom.npy"))
    ids = json.load(open(os.path.join(EXAMPLE_DATA, "train_unicom.npy.meta.json")))["ids"]
    np.testing.assert_array_equal(item["ext_img"].numpy(), image[ids.index(split.image_ids[split.txt2img[7]])])
    assert item["ext_img"].dtype == item["ext_txt"].dtype == torch.float16


def test_text_cache_is_built_once_when_missing(tmp_path, example_cfg, minilm_path):
    """The example's canonical teacher name with a local source builds the cache offline, recording the name."""
    import dataclasses
    import shutil

    from icsd.data.text_cache import ensure_text_cache

    for name in ("val.json", "val_unicom.npy", "val_unicom.npy.meta.json"):
        shutil.copy(os.path.join(EXAMPLE_DATA, name), tmp_path / name)
    os.symlink(os.path.join(EXAMPLE_DATA, "pics"), tmp_path / "pics")
    data = dataclasses.replace(example_cfg.data, root=str(tmp_path), text_teacher_source=minilm_path)
    assert data.text_teacher == "all-MiniLM-L6-v2"
    split = load_data_split(data, "val")
    with pytest.raises(DataError, match=f"text feature cache not found: {tmp_path}/val_minilm.npy"):
        load_teacher_features(data, split)  # loading never builds
    ensure_text_cache(data, split, DistEnv())
    teacher = load_teacher_features(data, split)
    assert teacher.text.shape == (100, 384)
    assert json.load(open(tmp_path / "val_minilm.npy.meta.json"))["model"] == "all-MiniLM-L6-v2"
    committed = np.load(os.path.join(EXAMPLE_DATA, "val_minilm.npy"))
    np.testing.assert_allclose(np.asarray(teacher.text.array(), np.float32), committed.astype(np.float32), atol=2e-3)
    stale = dataclasses.replace(data, text_teacher="another-teacher")
    with pytest.raises(DataError, match="stale text feature cache"):
        load_teacher_features(stale, split)


def test_matrix_rows_refuse_fortran_order_and_non_npy(tmp_path):
    path = str(tmp_path / "f.npy")
    np.save(path, np.asfortranarray(np.arange(12, dtype=np.float16).reshape(3, 4)))
    with pytest.raises(DataError, match=r"expected a C-ordered \[N, D\] matrix"):
        MatrixRows(path)
    bad = tmp_path / "bad.npy"
    bad.write_bytes(b"not numpy")
    with pytest.raises(DataError, match=rf"{bad}: not a plain .npy feature matrix"):
        MatrixRows(str(bad))
    good = str(tmp_path / "c.npy")
    np.save(good, np.arange(12, dtype=np.float16).reshape(3, 4))
    rows = MatrixRows(good)
    np.testing.assert_array_equal(rows[1], [4, 5, 6, 7])
    with pytest.raises(IndexError):
        rows[3]
