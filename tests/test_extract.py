"""Teacher-feature tools (icsd.prep, datasets/*.py): image and text extraction, resumption after an
interruption, the released pickled-dict converter, and the writer's checks."""
from __future__ import annotations

import json
import os
import sys
import types

import numpy as np
import open_clip
import pytest
import torch

from icsd.data import text_cache
from icsd.data.annotations import load_split
from icsd.data.captions import caption_fingerprint
from icsd.data.datasets import load_image
from icsd.data.feature_file import FeatureWriter, read_meta
from icsd.data.teacher_features import load_image_features, load_text_features
from icsd.data.text_cache import extract_text_features, load_sentence_model
from icsd.errors import ConfigError, DataError
from icsd.tools.prep import text as text_command
from icsd.tools.prep.image import extract_image_features
from icsd.tools.prep.image_encoders import build_image_encoder
from icsd.tools.prep.pickled import convert_pickled_dict

from conftest import EXAMPLE_CONFIG, EXAMPLE_DATA, TINY_MODEL, load_dataset_script

TEACHER = "all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def val_split():
    return load_split("val", os.path.join(EXAMPLE_DATA, "val.json"), EXAMPLE_DATA)


@pytest.fixture(scope="module")
def small_split(tmp_path_factory, val_split):
    """The first 4 images of val with their captions (absolute image paths)."""
    root = tmp_path_factory.mktemp("small")
    records = [{"image_path": val_split.image_paths[i], "caption": val_split.captions[t],
                "image_id": val_split.image_ids[i]} for i in range(4) for t in val_split.img2txt[i]]
    (root / "small.json").write_text(json.dumps(records))
    return load_split("small", str(root / "small.json"), str(root))


@pytest.fixture(scope="module")
def minilm(minilm_path):
    return load_sentence_model(minilm_path, device="cpu")


@pytest.fixture(scope="module")
def tiny_pooled():
    return build_image_encoder("open_clip", TINY_MODEL, None, "pooled", "cpu", seed=0)


def reference_tiny_features(split, mode: str) -> np.ndarray:
    """Independently: open_clip's own model (same seed), the visual tower's pooled output or its tokens."""
    open_clip.add_model_config(TINY_MODEL)
    torch.manual_seed(0)
    model, _, transform = open_clip.create_model_and_transforms("icsd-tiny", pretrained=None)
    model.eval()
    images = torch.stack([transform(load_image(p)) for p in split.image_paths])
    with torch.no_grad():
        model.visual.output_tokens = True
        pooled, tokens = model.visual(images)
    return (pooled if mode == "pooled" else tokens.reshape(len(images), -1)).numpy()


def count_batches(encoder, monkeypatch, fail_after=None):
    """Wrap ``encoder.forward``: count its calls, optionally raise on call ``fail_after + 1``."""
    calls = []
    original = encoder.forward

    def forward(images):
        if fail_after is not None and len(calls) >= fail_after:
            raise RuntimeError("simulated crash")
        calls.append(len(images))
        return original(images)

    monkeypatch.setattr(encoder, "forward", forward)
    return calls


def read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


# -- image teacher -------------------------------------------------------------------------------
@pytest.mark.parametrize("mode, dim", [("pooled", 64), ("tokens", 16 * 128)])
def test_open_clip_extraction_cli_matches_open_clip(tmp_path, val_split, mode, dim):
    script = load_dataset_script("extract_image_features")
    rc = script.main(["--root", EXAMPLE_DATA, "--splits", "val", "--backend", "open_clip", "--model", TINY_MODEL,
                      "--mode", mode, "--out", str(tmp_path / "{split}_img.npy"), "--device", "cpu",
                      "--num-workers", "0", "--batch-size", "8", "--no-progress"])
    assert rc == 0
    path = str(tmp_path / "val_img.npy")
    features = load_image_features(path)
    assert features.ids == val_split.image_ids and features.dim == dim
    assert np.load(path, mmap_mode="r").dtype == np.float16
    meta = read_meta(path)
    assert (meta["model"], meta["mode"], meta["backend"], meta["kind"]) == (TINY_MODEL, mode, "open_clip", "image")
    assert (meta["dim"], meta["rows"], meta["dtype"]) == (dim, 20, "float16")
    if mode == "tokens":
        assert meta["tokens"] == [16, 128]  # (64 / 16)^2 patches x width 128
    got = np.stack([features.vector(i) for i in range(len(features))])
    expected = reference_tiny_features(val_split, mode)
    np.testing.assert_allclose(got, expected, rtol=2e-3, atol=2e-3)
    assert not os.path.exists(path + ".progress.json") and not os.path.exists(path + ".partial.npy")


def test_timm_extraction_pooled_and_tokens(tmp_path, small_split):
    import timm

    for mode in ("pooled", "tokens"):
        encoder = build_image_encoder("timm", "test_vit", None, mode, "cpu", seed=3)
        path = str(tmp_path / f"{mode}.npy")
        assert extract_image_features(path, small_split, encoder, batch_size=3, num_workers=0, show_progress=False)
        torch.manual_seed(3)
        net = timm.create_model("test_vit", num_classes=0).eval()
        images = torch.stack([encoder.transform(load_image(p)) for p in small_split.image_paths])
        with torch.no_grad():
            expected = net(images) if mode == "pooled" else net.forward_features(images)[:, net.num_prefix_tokens:]
        got = np.load(path)[:4].astype(np.float32)
        assert got.shape[1] == (64 if mode == "pooled" else 100 * 64)
        np.testing.assert_allclose(got, expected.reshape(4, -1).numpy(), rtol=2e-3, atol=2e-3)


def test_unicom_backend_is_guarded_and_uses_forward_features(monkeypatch):
    monkeypatch.setitem(sys.modules, "unicom", None)  # as if not installed
    with pytest.raises(ConfigError, match="needs the 'unicom' package"):
        build_image_encoder("unicom", "ViT-B/32", None, "tokens")

    class FakeUnicom(torch.nn.Module):  # the unicom API: forward = embedding, forward_features = tokens
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(3, 2)

        def forward_features(self, x):
            return x.mean(dim=(2, 3)).repeat(1, 4)  # already flattened [B, N*C], as unicom returns

        def forward(self, x):
            return self.proj(x.mean(dim=(2, 3)))

    loaded = []
    fake = types.ModuleType("unicom")
    fake.load = lambda name, **kw: loaded.append((name, kw)) or (FakeUnicom(), lambda im: im)
    monkeypatch.setitem(sys.modules, "unicom", fake)
    images = torch.rand(2, 3, 8, 8)
    tokens = build_image_encoder("unicom", "ViT-B/32", "/weights", "tokens")
    assert loaded == [("ViT-B/32", {"download_root": "/weights"})]
    np.testing.assert_array_equal(tokens.encode(images).numpy(), images.mean(dim=(2, 3)).repeat(1, 4).numpy())
    pooled = build_image_encoder("unicom", "ViT-B/32", None, "pooled")
    assert pooled.encode(images).shape == (2, 2) and pooled.meta["mode"] == "pooled"


def test_bad_backend_mode_and_weights_are_clear_errors():
    with pytest.raises(ConfigError, match="unknown image backend 'keras'"):
        build_image_encoder("keras", "x")
    with pytest.raises(ConfigError, match="unknown feature mode 'cls'"):
        build_image_encoder("open_clip", TINY_MODEL, None, "cls")
    with pytest.raises(ConfigError, match="unknown timm model 'no_such_net'"):
        build_image_encoder("timm", "no_such_net")


# -- resumption ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, val_split, tiny_pooled):
    path = str(tmp_path_factory.mktemp("full") / "val.npy")
    assert extract_image_features(path, val_split, tiny_pooled, batch_size=4, num_workers=0, show_progress=False)
    return path


def test_stopped_extraction_resumes_to_the_same_file(tmp_path, val_split, tiny_pooled, uninterrupted, monkeypatch):
    path = str(tmp_path / "val.npy")
    done = extract_image_features(path, val_split, tiny_pooled, batch_size=4, num_workers=0, show_progress=False,
                                  max_batches=2)
    assert not done and not os.path.exists(path) and read_meta(path) is None
    with open(path + ".progress.json") as f:
        assert json.load(f)["rows_done"] == 8
    calls = count_batches(tiny_pooled, monkeypatch)
    assert extract_image_features(path, val_split, tiny_pooled, batch_size=4, num_workers=0, show_progress=False)
    assert calls == [4, 4, 4]  # only the 12 remaining rows were encoded
    assert read_bytes(path) == read_bytes(uninterrupted)
    assert read_meta(path) == read_meta(uninterrupted)
    assert not os.path.exists(path + ".progress.json") and not os.path.exists(path + ".partial.npy")
    # a complete file of the same job is kept, not recomputed
    assert extract_image_features(path, val_split, tiny_pooled, batch_size=4, num_workers=0, show_progress=False)
    assert calls == [4, 4, 4]


def test_crashed_extraction_resumes_to_the_same_file(tmp_path, val_split, tiny_pooled, uninterrupted, monkeypatch):
    path = str(tmp_path / "val.npy")
    count_batches(tiny_pooled, monkeypatch, fail_after=3)
    with pytest.raises(RuntimeError, match="simulated crash"):
        extract_image_features(path, val_split, tiny_pooled, batch_size=4, num_workers=0, show_progress=False)
    with open(path + ".progress.json") as f:
        assert json.load(f)["rows_done"] == 12  # the 3 batches before the crash were kept
    monkeypatch.undo()
    assert extract_image_features(path, val_split, tiny_pooled, batch_size=4, num_workers=0, show_progress=False)
    assert read_bytes(path) == read_bytes(uninterrupted)


def test_killed_extraction_redoes_rows_after_the_last_checkpoint(tmp_path, val_split, tiny_pooled, uninterrupted):
    """A hard kill: the progress file lags behind rows that were half written (garbage on disk)."""
    path = str(tmp_path / "val.npy")
    extract_image_features(path, val_split, tiny_pooled, batch_size=4, num_workers=0, show_progress=False,
                           max_batches=3)
    partial = path + ".partial.npy"
    offset = np.load(partial, mmap_mode="r").offset
    with open(partial, "r+b") as f:  # rows 4.. hold garbage, as if the writes were cut
        f.seek(offset + 4 * 64 * 2)
        f.write(b"\xff" * (8 * 64 * 2))
    with open(path + ".progress.json") as f:
        progress = json.load(f)
    progress["rows_done"] = 4
    with open(path + ".progress.json", "w") as f:
        json.dump(progress, f)
    assert extract_image_features(path, val_split, tiny_pooled, batch_size=4, num_workers=0, show_progress=False)
    assert read_bytes(path) == read_bytes(uninterrupted)


def test_partial_file_of_another_job_is_not_continued(tmp_path, val_split, tiny_pooled, uninterrupted, caplog):
    path = str(tmp_path / "val.npy")
    tokens = build_image_encoder("open_clip", TINY_MODEL, None, "tokens", "cpu", seed=0)
    extract_image_features(path, val_split, tokens, batch_size=4, num_workers=0, show_progress=False, max_batches=1)
    with caplog.at_level("WARNING"):
        assert extract_image_features(path, val_split, tiny_pooled, batch_size=4, num_workers=0, show_progress=False)
    assert "left by another job" in caplog.text
    assert read_bytes(path) == read_bytes(uninterrupted)


def test_text_extraction_resumes_to_the_same_file(tmp_path, small_split, minilm):
    full, part = str(tmp_path / "full.npy"), str(tmp_path / "part.npy")
    captions = small_split.captions[:11]
    assert extract_text_features(full, TEACHER, captions, model=minilm, batch_size=4, show_progress=False)
    assert not extract_text_features(part, TEACHER, captions, model=minilm, batch_size=4, show_progress=False,
                                     max_batches=1)
    assert np.load(part + ".partial.npy")[4:].max() == 0  # rows 4.. not written yet
    calls = []
    counting = types.SimpleNamespace(encode=lambda chunk, **kw: calls.append(len(chunk)) or minilm.encode(chunk, **kw))
    assert extract_text_features(part, TEACHER, captions, model=counting, batch_size=4, show_progress=False)
    assert calls == [4, 3]  # only rows 4..10 were encoded
    assert read_bytes(part) == read_bytes(full)
    assert read_meta(part) == read_meta(full)


# -- text teacher --------------------------------------------------------------------------------
def test_text_extraction_cli_matches_the_committed_cache(tmp_path, val_split, minilm, minilm_path, monkeypatch):
    asked = []  # the model loads once per module (fixture ``minilm``); the CLI must ask for --source
    monkeypatch.setattr(text_command, "load_sentence_model", lambda name, device=None: asked.append(name) or minilm)
    script = load_dataset_script("extract_text_features")
    out = str(tmp_path / "{split}_minilm.npy")
    rc = script.main(["--config", EXAMPLE_CONFIG, "--root", EXAMPLE_DATA, "--splits", "val", "--source", minilm_path,
                      "--out", out, "--device", "cpu", "--batch-size", "32", "--no-progress"])
    assert rc == 0 and asked == [minilm_path]
    path = out.format(split="val")
    meta = read_meta(path)
    assert (meta["model"], meta["kind"], meta["dim"], meta["rows"], meta["dtype"]) == (TEACHER, "text", 384, 100,
                                                                                       "float16")
    assert meta["fingerprint"] == caption_fingerprint(val_split.captions)
    cache = load_text_features(path, caption_fingerprint(val_split.captions), 100, TEACHER)
    # committed: all-MiniLM-L6-v2 over the whole list at once, by the earlier (non-resumable) implementation
    committed = np.load(os.path.join(EXAMPLE_DATA, "val_minilm.npy")).astype(np.float32)
    np.testing.assert_allclose(np.asarray(cache.array(), np.float32), committed, atol=2e-3)
    with pytest.raises(DataError, match="stale text feature cache"):
        load_text_features(path, caption_fingerprint(val_split.captions[::-1]), 100, TEACHER)


def test_training_cache_builder_is_the_resumable_extraction(tmp_path, small_split, minilm, minilm_path,
                                                            monkeypatch):
    """Training's ensure_text_cache continues an interrupted build; the model comes from
    data.text_teacher_source while the sidecar records the canonical data.text_teacher."""
    from icsd.config import DataConfig
    from icsd.data.text_cache import ensure_text_cache
    from icsd.distributed import DistEnv

    asked = []
    monkeypatch.setattr(text_cache, "load_sentence_model", lambda name, device=None: asked.append(name) or minilm)
    direct, built = str(tmp_path / "direct.npy"), str(tmp_path / "small_built.npy")
    captions = small_split.captions
    extract_text_features(direct, TEACHER, captions, model=minilm, batch_size=4, show_progress=False)
    assert not extract_text_features(built, TEACHER, captions, model=minilm, batch_size=4,
                                     show_progress=False, max_batches=1)  # an earlier build was interrupted
    data = DataConfig(root=str(tmp_path), text_features="{split}_built.npy", text_teacher=TEACHER,
                      text_teacher_source=minilm_path, text_teacher_batch_size=4)
    ensure_text_cache(data, small_split, DistEnv())
    assert asked == [minilm_path]
    assert read_bytes(built) == read_bytes(direct) and read_meta(built) == read_meta(direct)
    assert read_meta(built)["model"] == TEACHER


# -- released pickled dicts ----------------------------------------------------------------------
def test_pickled_dict_converts_to_the_same_vectors(tmp_path):
    rng = np.random.default_rng(0)
    released = {}
    for i, key in enumerate([42, "b.jpg", "a.jpg", 7, "c.jpg"]):
        vec = rng.standard_normal(24).astype(np.float32)
        released[key] = vec[None] if i % 2 else vec  # (1, D) and (D,) mixed
    src, dst = str(tmp_path / "released.npy"), str(tmp_path / "train_unicom.npy")
    np.save(src, released)
    ann = tmp_path / "train.json"
    ann.write_text(json.dumps([{"image_path": f"{k}", "caption": "a cat", "image_id": k} for k in (7, "a.jpg")]))
    rc = load_dataset_script("convert_pickled_features").main([src, dst, "--annotation", str(ann)])
    assert rc == 0
    original = load_image_features(src)  # the pickled-dict loader
    converted = load_image_features(dst)
    assert np.load(dst, mmap_mode="r").dtype == np.float16
    assert converted.ids == sorted(str(k) for k in released)
    assert sorted(original.ids) == converted.ids
    for key, vec in released.items():
        got = converted.vector(converted.rows_for([str(key)])[0])
        np.testing.assert_array_equal(got, vec.reshape(-1).astype(np.float16).astype(np.float32))
        np.testing.assert_array_equal(got, original.vector(original.rows_for([str(key)])[0]).astype(np.float16))
    meta = read_meta(dst)
    assert (meta["model"], meta["mode"], meta["dim"], meta["rows"]) == ("unicom", "released", 24, 5)


def test_pickled_dict_is_emptied_while_streaming(tmp_path):
    data = {f"{i}.jpg": np.full((1, 8), i, np.float32) for i in range(10)}
    assert convert_pickled_dict("mem", str(tmp_path / "out.npy"), data=data, chunk_rows=3) == 10
    assert data == {}  # each entry dropped once written: no second copy accumulates
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy")[:, 0], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9])


def test_pickled_dict_errors_name_the_file_and_record(tmp_path, capsys):
    src = str(tmp_path / "bad.npy")
    np.save(src, {"a.jpg": np.zeros(4, np.float32), "b.jpg": np.zeros((1, 5), np.float32)})
    with pytest.raises(DataError, match=r"bad\.npy: feature of image_id 'b\.jpg' has 5 values"):
        convert_pickled_dict(src, str(tmp_path / "out.npy"))
    np.save(src, np.zeros((3, 4), np.float32))
    with pytest.raises(DataError, match="expected a non-empty pickled dict"):
        convert_pickled_dict(src, str(tmp_path / "out.npy"))
    assert load_dataset_script("convert_pickled_features").main([src, src]) == 1
    assert "in place would destroy the original" in capsys.readouterr().err


# -- the writer ----------------------------------------------------------------------------------
def test_writer_refuses_inconsistent_blocks(tmp_path):
    writer = FeatureWriter(str(tmp_path / "f.npy"), 4, {"model": "m"})
    writer.write(np.ones((2, 3)))
    with pytest.raises(DataError, match=r"rows 2\.\.3 have dimension 5, the earlier rows have 3"):
        writer.write(np.ones((2, 5)))
    with pytest.raises(DataError, match="row 3 has a non-finite feature"):
        writer.write(np.array([[1, 2, 3], [1e6, 0, 0]]))
    with pytest.raises(DataError, match="only 2 of 4 rows were written"):
        writer.finish()
    writer.close()
    assert not os.path.exists(tmp_path / "f.npy")


def test_unknown_text_teacher_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot load the sentence-transformers text teacher '.*no_such_model'"):
        extract_text_features(str(tmp_path / "t.npy"), "x", ["a caption"], source=str(tmp_path / "no_such_model"),
                              device="cpu", show_progress=False)
    assert not os.path.exists(tmp_path / "t.npy")
