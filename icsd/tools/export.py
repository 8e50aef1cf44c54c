"""Export a checkpoint's model for sharing: ``model.safetensors`` + the resolved ``config.yaml``.

    python -m icsd.export output/vitb32/coco/icsd_seed42/checkpoint_best.pth exports/icsd_coco

The folder holds the weights alone (no optimizer, scheduler or RNG state: a fraction of the checkpoint),
the config it was trained with (``model.pretrained`` set to null: the weights are in the folder) and
``export.json`` (format version, source checkpoint, epoch, metrics of that epoch when its log is beside the
checkpoint). ``icsd.load_pretrained(OUT_DIR)`` loads it; ``evaluation.py --checkpoint OUT_DIR`` evaluates
it like the checkpoint, with the same numbers.
"""
from __future__ import annotations

import argparse
import copy
import logging
import os
from typing import Optional

from icsd.config import config_to_dict
from icsd.errors import CheckpointError, ICSDError
from icsd.files import require_creatable_folder, write_atomic, write_json, write_yaml
from icsd.pretrained import CONFIG, FORMAT, FORMAT_VERSION, INFO, WEIGHTS, config_for_weights, load_checkpoint_or_export
from icsd.runs import LOG, read_log
from icsd.tools.command import run_command

logger = logging.getLogger(__name__)

METRIC_PREFIXES = ("train_", "val_", "test_")


def plain_tensors(state_dict: dict) -> dict:
    """Contiguous tensors owning their memory: safetensors refuses tensors that share storage (tied
    weights) or are views, and the checkpoint's are memory-mapped."""
    return {name: tensor.detach().clone().contiguous() for name, tensor in state_dict.items()}


def logged_metrics(checkpoint: str, epoch: Optional[int]) -> dict:
    """The metrics of ``epoch`` in the run's ``log.jsonl`` beside the checkpoint ({} when there is none)."""
    log = os.path.join(os.path.dirname(os.path.abspath(checkpoint)), LOG)
    if epoch is None or not os.path.isfile(log):
        return {}
    record = next((r for r in read_log(log) if r.get("epoch") == epoch), {})
    return {k: v for k, v in record.items() if k.startswith(METRIC_PREFIXES)}


def exported_config(state: dict, checkpoint: str, config: Optional[str]) -> dict:
    """The config saved with the checkpoint; a released ICSD/CUSA checkpoint's comes from ``config``, fitted to
    it (its architecture and PDM)."""
    if state.get("reference") is not None or config is not None:
        return config_to_dict(config_for_weights(state, checkpoint, config, []))
    if state.get("config") is None:
        raise CheckpointError(f"{checkpoint} holds no config: it cannot be exported")
    return copy.deepcopy(state["config"])


def export_checkpoint(checkpoint: str, out_dir: str, force: bool = False, config: Optional[str] = None) -> dict:
    """Write the export folder; returns its ``export.json`` content. ``export.json`` is written last, so a
    folder without it is an interrupted export (``load_pretrained`` says so)."""
    from safetensors.torch import save

    require_creatable_folder(out_dir, "OUT_DIR")
    state = load_checkpoint_or_export(checkpoint, "CKPT")
    exported = exported_config(state, checkpoint, config)
    if os.path.exists(os.path.join(out_dir, WEIGHTS)) and not force:
        raise ICSDError(f"{out_dir} already holds an export ({WEIGHTS}); pass --force to replace it")
    os.makedirs(out_dir, exist_ok=True)
    info_path = os.path.join(out_dir, INFO)
    if os.path.exists(info_path):
        os.remove(info_path)  # the folder is incomplete until the new record is written

    original_pretrained = (state.get("config") or exported).get("model", {}).get("pretrained")
    exported.setdefault("model", {})["pretrained"] = None
    weights = plain_tensors(state["model"])
    weights_path = os.path.join(out_dir, WEIGHTS)
    write_atomic(weights_path, lambda f: f.write(save(weights, metadata={"format": "pt"})), "exported weights")
    write_yaml(os.path.join(out_dir, CONFIG), exported, "exported config")
    info = {"format": FORMAT, "format_version": FORMAT_VERSION, "source_checkpoint": os.path.abspath(checkpoint),
            "epoch": state.get("epoch"), "best": state.get("best"), "trained_from": original_pretrained,
            "num_tensors": len(weights), "num_parameters": sum(t.numel() for t in weights.values()),
            "weights_bytes": os.path.getsize(weights_path),
            "metrics": logged_metrics(checkpoint, state.get("epoch"))}
    write_json(info_path, info, "export record", indent=2)
    return info


def folder_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(path, name)) for name in (WEIGHTS, CONFIG, INFO))


def megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m icsd.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", metavar="CKPT", help="an ICSD checkpoint (.pth), or one the ICSD or CUSA authors "
                                                           "released (then --config is needed)")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="the export folder (created)")
    parser.add_argument("--force", action="store_true", help="replace an existing export in OUT_DIR")
    parser.add_argument("--config", default=None, help="the config to export with the weights (default: the "
                                                       "checkpoint's own; needed for a released ICSD/CUSA checkpoint)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)

    def body() -> None:
        info = export_checkpoint(args.checkpoint, args.out_dir, args.force, args.config)
        ckpt, out = os.path.getsize(args.checkpoint), folder_bytes(args.out_dir)
        logger.info(f"checkpoint {args.checkpoint}: {megabytes(ckpt)}")
        logger.info(f"export     {args.out_dir}: {megabytes(out)} ({WEIGHTS} {megabytes(info['weights_bytes'])}, "
                    f"{info['num_parameters']:,} parameters, epoch {info['epoch']}) = "
                    f"{100 * out / ckpt:.0f}% of the checkpoint")

    return run_command(body)

