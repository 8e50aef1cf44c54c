"""Config loading: typed keys, unknown-key suggestions, overrides, _base_ inheritance, saving."""
from __future__ import annotations

import glob
import os

import pytest
import yaml

from icsd.config import ConfigError, config_to_dict, load_config
from icsd.files import write_yaml


def write(tmp_path, text: str, name: str = "c.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_defaults_are_the_reference_settings():
    cfg = load_config(None)
    assert cfg.model.clip == "ViT-B-32-quickgelu" and cfg.model.pretrained == "openai"
    c, s = cfg.loss.contrastive.temperature, cfg.loss.soft_label
    assert (c.init, c.min, c.max, c.learnable) == (0.05, 0.01, 0.10, True)
    assert (s.student.init, s.student.min, s.student.max, s.student.learnable) == (0.45, 0.10, 0.99, True)
    assert (s.teacher.init, s.teacher.min, s.teacher.max, s.teacher.learnable) == (1.0, 0.10, 1.00, False)
    assert (s.weight, s.alpha, s.kind) == (0.15, 0.3, "kl")
    assert (cfg.train.optimizer.lr, cfg.train.optimizer.weight_decay, cfg.train.scheduler.min_lr) == (1e-5, 1e-4, 1e-6)
    assert (cfg.eval.image_batch_size, cfg.eval.text_batch_size, cfg.eval.select_on) == (128, 256, "val")
    assert cfg.run_dir == "output/vitb32/coco/icsd_seed42"


def test_unknown_key_names_key_section_file_and_suggests(tmp_path):
    path = write(tmp_path, "train:\n  optimizer:\n    lrr: 0.1\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert "'lrr'" in msg and "train.optimizer" in msg and path in msg and "did you mean 'lr'" in msg


def test_unknown_top_level_section(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'trian' in the top level; did you mean 'train'"):
        load_config(write(tmp_path, "trian: {epochs: 3}\n"))


def test_wrong_type(tmp_path):
    with pytest.raises(ConfigError, match=r"key 'train.epochs': expected int, got 'ten'"):
        load_config(write(tmp_path, "train: {epochs: ten}\n"))
    with pytest.raises(ConfigError, match=r"key 'loss.soft_label.detach_internal': expected bool"):
        load_config(write(tmp_path, "loss: {soft_label: {detach_internal: 1}}\n"))
    with pytest.raises(ConfigError, match=r"key 'train.precision': expected one of 'fp32' \| 'amp_bf16'"):
        load_config(write(tmp_path, "train: {precision: fp64}\n"))


def test_section_must_be_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match=r"section 'loss.contrastive' must be a mapping"):
        load_config(write(tmp_path, "loss: {contrastive: 3}\n"))


def test_overrides_are_typed_and_validated(tmp_path):
    path = write(tmp_path, "train: {epochs: 3}\n")
    cfg = load_config(path, ["train.epochs=5", "loss.soft_label.alpha=0", "model.pretrained=null",
                             "eval.splits=[val]"])
    assert cfg.train.epochs == 5 and cfg.loss.soft_label.alpha == 0.0 and cfg.model.pretrained is None
    assert cfg.eval.splits == ["val"]
    with pytest.raises(ConfigError, match=r"key 'train.epochs': expected int, got 'many'"):
        load_config(path, ["train.epochs=many"])
    with pytest.raises(ConfigError, match=r"bad override 'train.epochs': expected section.key=value"):
        load_config(path, ["train.epochs"])
    with pytest.raises(ConfigError, match=r"unknown key 'epoch' in section 'train'.*did you mean 'epochs'"):
        load_config(path, ["train.epoch=4"])
    with pytest.raises(ConfigError, match=r"'epochs' is not a section"):
        load_config(path, ["train.epochs.x=4"])


def test_ranges_are_checked(tmp_path):
    with pytest.raises(ConfigError, match=r"loss.contrastive.tau = 0.5 must lie in \[tau_min, tau_max\] = "
                                          r"\[0.01, 0.1\]"):
        load_config(None, ["loss.contrastive.tau=0.5"])
    with pytest.raises(ConfigError, match=r"loss.soft_label.teacher_tau_min = 0.0 must be > 0"):
        load_config(None, ["loss.soft_label.teacher_tau_min=0"])
    with pytest.raises(ConfigError, match=r"train.batch_size = -32 must be >= 1"):
        load_config(None, ["train.batch_size=-32"])
    with pytest.raises(ConfigError, match=r"train.grad_clip = 0.0 must be > 0"):
        load_config(None, ["train.grad_clip=0"])
    with pytest.raises(ConfigError, match=r"loss.soft_label.alpha = 1.5 must be in \[0, 1\]"):
        load_config(None, ["loss.soft_label.alpha=1.5"])
    with pytest.raises(ConfigError, match=r"select_on 'test' must be one of eval.splits"):
        load_config(None, ["eval.splits=[val]", "eval.select_on=test"])
    with pytest.raises(ConfigError, match=r"data.pixel_cache and data.image_root are both set: keep data.pixel_cache "
                                          r"\(decoded pixels, exact.*or data.image_root \(a resized JPEG copy"):
        load_config(os.path.join(os.path.dirname(__file__), "..", "configs", "vitb32", "coco", "icsd.yaml"),
                    ["data.image_root=images_224"])
    with pytest.raises(ConfigError, match=r"data.token_cache 'tokens.npy' must contain '\{split\}'"):
        load_config(None, ["data.token_cache=tokens.npy"])


def test_base_inheritance_deep_merges(tmp_path):
    write(tmp_path, "train: {epochs: 7, batch_size: 16}\nloss: {soft_label: {alpha: 0.5}}\n", "base.yaml")
    cfg = load_config(write(tmp_path, "_base_: base.yaml\ntrain: {epochs: 9}\n"))
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.loss.soft_label.alpha) == (9, 16, 0.5)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "train: [unclosed\n"))


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(None, ["train.epochs=3", "loss.soft_label.shared_tau=false"])
    path = str(tmp_path / "resolved.yaml")
    write_yaml(path, config_to_dict(cfg))
    assert load_config(path) == cfg
    assert yaml.safe_load(open(path))["train"]["epochs"] == 3
    assert config_to_dict(cfg)["loss"]["soft_label"]["shared_tau"] is False


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "configs", "**",
                                                               "*.yaml"), recursive=True)))
def test_every_shipped_config_is_valid(path):
    load_config(path)


def test_paper_configs_have_the_reference_settings(repo):
    expected = {"vitb32/coco": ("ViT-B-32-quickgelu", 128, 128, 30),
                "vitb32/flickr": ("ViT-B-32-quickgelu", 128, 128, 50),
                "vitl14_336/coco": ("ViT-L-14-336-quickgelu", 16, 32, 30),
                "vitl14_336/flickr": ("ViT-L-14-336-quickgelu", 16, 32, 50)}
    for name, (clip, batch, image_batch, epochs) in expected.items():
        cfg = load_config(os.path.join(repo, "configs", name, "icsd.yaml"))
        assert (cfg.model.clip, cfg.train.batch_size, cfg.eval.image_batch_size, cfg.train.epochs) == \
            (clip, batch, image_batch, epochs), name
        assert cfg.model.pretrained == "openai" and cfg.loss.gather_features is False
        assert cfg.eval.text_batch_size == 256 and cfg.train.optimizer.lr == 1e-5
        assert cfg.train.scheduler.warmup_epochs == 0 and cfg.train.scheduler.min_lr == 1e-6


def test_exponent_floats_and_named_choices(tmp_path):
    cfg = load_config(write(tmp_path, "train: {optimizer: {lr: 1e-5}}\n"), ["train.scheduler.min_lr=2e-7"])
    assert cfg.train.optimizer.lr == 1e-5 and cfg.train.scheduler.min_lr == 2e-7
    with pytest.raises(ConfigError, match=r"key 'train.optimizer.lr': expected float, got 'fast'"):
        load_config(None, ["train.optimizer.lr=fast"])
    with pytest.raises(ConfigError, match=r"'adamww' is not a timm optimizer \(closest: \['adamw'"):
        load_config(None, ["train.optimizer.name=adamww"])
    with pytest.raises(ConfigError, match=r"key 'eval.select_metric': expected one of 'r_mean'"):
        load_config(None, ["eval.select_metric=rmean"])
    with pytest.raises(ConfigError, match=r"key 'train.scheduler.name': expected one of 'cosine'"):
        load_config(None, ["train.scheduler.name=cosin"])


# Keys added after the snapshot in tests/data/resolved_configs_v0.json, with the default every shipped
# config resolves them to. A key added to the schema must be listed here on purpose.
ADDED_KEYS = {
    "data.text_teacher_source": None,
    "data.image_root": None,
    "eval.rank_chunk_size": 1024,
    "train.checkpoint_every_steps": 0,
    "train.report_to": [],
    "train.wandb_project": "icsd",
    "model.heads": "linear",
    "model.lock_image": False,
    "model.lock_image_unlocked_groups": 0,
    "model.lock_text": False,
    "model.lock_text_unlocked_layers": 0,
    "train.optimizer.head_lr_scale": 1.0,
    "train.optimizer.pdm_lr_scale": 1.0,
    "train.optimizer.temperature_lr_scale": 1.0,
    "loss.contrastive.tau_from_model": False,
    "eval.extra": [],
}
# added keys the shipped configs set: the caches, named by the model's input size
CACHE_SIZE = {"configs/example": 64, "configs/vitb32": 224, "configs/vitl14_336": 336}


def _added_keys(path: str) -> dict:
    size = next(v for prefix, v in CACHE_SIZE.items() if path.startswith(prefix))
    return {**ADDED_KEYS, "data.pixel_cache": f"{{split}}_pixels{size}.npy", "data.token_cache": "{split}_tokens.npy"}


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_shipped_configs_resolve_as_stored(repo, monkeypatch):
    """Every shipped paper config (and the example's) resolves to exactly its stored copy (same keys, same
    values); keys the schema gained after a copy was stored are the ADDED_KEYS, at their defaults."""
    import glob
    import json

    monkeypatch.chdir(repo)
    stored = json.load(open(os.path.join(repo, "tests", "data", "resolved_configs_v0.json")))
    shipped = sorted(glob.glob("configs/vitb32/*/*.yaml") + glob.glob("configs/vitl14_336/*/*.yaml"))
    assert set(shipped) | {"configs/example/icsd.yaml"} == set(stored)
    for path, before in stored.items():
        now, before = _flatten(config_to_dict(load_config(path))), _flatten(before)
        assert {k: now[k] for k in before} == before, path
        assert {k: v for k, v in now.items() if k not in before} == \
            {k: v for k, v in _added_keys(path).items() if k not in before}, path


def test_list_items_are_checked_by_their_place():
    """Items of a list key, and the keys of a list of sections (eval.extra), are named with their index."""
    with pytest.raises(ConfigError, match=r"key 'eval.splits\[1\]': expected str, got 3"):
        load_config(None, ["eval.splits=[val, 3]"])
    with pytest.raises(ConfigError, match=r"key 'eval.extra\[0\].split': expected str, got 3"):
        load_config(None, ["eval.extra=[{name: f, root: r, split: 3}]"])
    with pytest.raises(ConfigError, match=r"unknown key 'rot' in the item 'eval.extra\[0\]'; did you mean 'root'"):
        load_config(None, ["eval.extra=[{name: f, rot: r}]"])
    with pytest.raises(ConfigError, match=r"key 'eval.extra\[0\]': expected a mapping with keys name, root"):
        load_config(None, ["eval.extra=[3]"])


def test_temperature_keys_map_onto_one_type(tmp_path):
    """The users' flat keys (tau, tau_min, ..., learn_teacher_tau) fill one TemperatureConfig each."""
    cfg = load_config(write(tmp_path, "loss:\n  soft_label: {tau: 0.3, tau_max: 0.5, learn_teacher_tau: true}\n"),
                      ["loss.contrastive.tau_min=0.02", "loss.soft_label.teacher_tau=0.8"])
    s = cfg.loss.soft_label
    assert (s.student.init, s.student.min, s.student.max, s.student.learnable) == (0.3, 0.10, 0.5, True)
    assert (s.teacher.init, s.teacher.learnable) == (0.8, True)
    assert cfg.loss.contrastive.temperature.min == 0.02
    saved = config_to_dict(cfg)["loss"]["soft_label"]
    assert list(saved)[5:9] == ["tau", "tau_min", "tau_max", "learn_tau"] and saved["teacher_tau"] == 0.8
    with pytest.raises(ConfigError, match=r"unknown key 'tau_mn' in section 'loss.soft_label'; did you mean 'tau_min'"):
        load_config(None, ["loss.soft_label.tau_mn=0.2"])
    with pytest.raises(ConfigError, match=r"unknown key 'student' in section 'loss.soft_label'"):
        load_config(None, ["loss.soft_label.student=0.2"])  # the code's field names are not YAML keys
    with pytest.raises(ConfigError, match=r"key 'loss.soft_label.learn_tau': expected bool"):
        load_config(None, ["loss.soft_label.learn_tau=1"])
