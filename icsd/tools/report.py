"""Compare runs: one row per config, mean ± std over seeds, deltas to a baseline, published anchors.

    python -m icsd.report output/vitb32/coco/ --baseline contrastive
    python -m icsd.report 'output/example/*_seed*' --json

Reads run folders (``config.yaml``, ``log.jsonl``, ``eval_best*.json``; see ``icsd.runs`` for the
conventions). Per config (the run folder without ``_seed{N}``): the seeds found, the best epoch (selected
on val by the trainer), the val metrics of that epoch and the test metrics of the best checkpoint, as mean
± sample std (n-1) over the finished seeds. A run whose log has not reached ``train.epochs`` is
unfinished: it gets a row of its own, marked with its epoch, and is never averaged with finished seeds.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import logging
import statistics
from dataclasses import dataclass, field
from typing import Optional, Sequence

from icsd.runs import ReportError, Run, group_runs, load_runs, short_names
from icsd.tools.command import run_command

logger = logging.getLogger(__name__)

# The metric order of evaluation's table (icsd.evaluate.METRIC_ORDER, restated: importing it would pull
# torch in and cost this command seconds).
METRICS = ("txt_r1", "txt_r5", "txt_r10", "img_r1", "img_r5", "img_r10", "r_mean", "rsum")
EXTRA_METRICS = ("txt_r_mean", "img_r_mean")
FOLD_PREFIX = "1k_"
VAL_COLUMNS = ("r_mean", "rsum")
HEADERS = {"txt_r1": "i2t R@1", "txt_r5": "i2t R@5", "txt_r10": "i2t R@10", "img_r1": "t2i R@1",
           "img_r5": "t2i R@5", "img_r10": "t2i R@10", "r_mean": "r_mean", "rsum": "RSUM"}



@dataclass(frozen=True)
class Anchor:
    """A published number a row is compared with: its method's name in the config ladder, the paper's name for
    it, backbone, test split, RSUM, and the setting it was obtained in (docs/results.md lists the sources)."""

    config: str  # the ladder's config name (the run folder without _seed: contrastive, cusa, clip_finetune)
    name: str
    backbone: str
    data: str
    rsum: float
    setting: str


COCO, FLICKR = "COCO 5K test", "Flickr30K 1K test"
_BASELINE = "OpenAI CLIP + random LayerNorm->Linear heads, contrastive only, AdamW 1e-5, 30 (COCO) / 50 (Flickr) epochs"
_CUSA = "OpenAI CLIP, CUSA's released settings: batch 128 (B/32) / 16 (L/14) x 4 GPUs, 30 (COCO) / 40 (Flickr) epochs"
_FINETUNE = "OpenAI CLIP, CLIP's own projections, lr 1e-5, batch 256, 5 epochs"
ANCHORS = (
    Anchor("contrastive", "contrastive fine-tune (ICSD, CUSA papers)", "ViT-B/32", COCO, 422.6, _BASELINE),
    Anchor("contrastive", "contrastive fine-tune (ICSD, CUSA papers)", "ViT-B/32", FLICKR, 520.0, _BASELINE),
    Anchor("contrastive", "contrastive fine-tune (ICSD, CUSA papers)", "ViT-L/14@336", COCO, 469.6, _BASELINE),
    Anchor("contrastive", "contrastive fine-tune (ICSD, CUSA papers)", "ViT-L/14@336", FLICKR, 554.5, _BASELINE),
    Anchor("cusa", "CUSA (AAAI'24)", "ViT-B/32", COCO, 429.7, _CUSA),
    Anchor("cusa", "CUSA (AAAI'24)", "ViT-B/32", FLICKR, 526.3, _CUSA),
    Anchor("cusa", "CUSA (AAAI'24)", "ViT-L/14@336", COCO, 473.1, _CUSA),
    Anchor("cusa", "CUSA (AAAI'24)", "ViT-L/14@336", FLICKR, 560.2, _CUSA),
    Anchor("clip_finetune", "plain fine-tune (CLIP_ITM)", "ViT-B/32", COCO, 444.9, _FINETUNE),
    Anchor("clip_finetune", "NPC's plain CLIP fine-tune (AAAI'24)", "ViT-B/32", COCO, 436.9,
           "OpenAI CLIP, CLIP's own projections, NPC's recipe"),
    Anchor("clip_finetune", "NPC's plain CLIP fine-tune (AAAI'24)", "ViT-B/32", FLICKR, 544.2,
           "OpenAI CLIP, CLIP's own projections, NPC's recipe"),
    Anchor("clip_finetune", "NPC (AAAI'24)", "ViT-B/32", COCO, 454.1, "OpenAI CLIP, NPC's negative-aware recipe"),
    Anchor("clip_finetune", "NPC (AAAI'24)", "ViT-B/32", FLICKR, 551.3, "OpenAI CLIP, NPC's negative-aware recipe"),
    Anchor("clip_finetune", "OSA (2024)", "ViT-B/32", COCO, 455.4, "OpenAI CLIP, OSA's recipe"),
)


@dataclass(frozen=True)
class Stat:
    """Mean, sample standard deviation (None for a single value) and count of one metric."""

    mean: float
    std: Optional[float]
    n: int

    @staticmethod
    def of(values: Sequence[float]) -> Stat:
        return Stat(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None, len(values))

    def to_json(self) -> dict:
        return {"mean": self.mean, "std": self.std, "n": self.n}


@dataclass
class Row:
    name: str
    group: str
    finished: bool
    runs: list[Run]
    val: dict[str, Stat]
    test: dict[str, Stat]
    backbone: str  # model.clip as configured (deltas pair rows of the same backbone and data)
    data: str  # data.root as configured
    anchors: tuple[Anchor, ...]  # the published numbers of this row's method, backbone and data
    extra: dict[str, dict[str, Stat]] = field(default_factory=dict)  # transfer datasets (eval.extra) by name
    delta: dict[str, float] = field(default_factory=dict)
    baseline: Optional[str] = None

    @property
    def seeds(self) -> list:
        return [r.seed for r in self.runs]

    @property
    def label(self) -> str:
        if self.finished:
            return self.name
        run = self.runs[0]
        return f"{self.name} seed {run.seed} (unfinished, epoch {run.last_epoch}/{run.epochs})"


def anchors_for(config: dict, group: str) -> tuple[Anchor, ...]:
    """The published anchors of the row's method (its config's name: the run folder's last component without
    ``_seed``), backbone (from ``model.clip``) and data (``data.root`` or the run path naming coco or flickr);
    none for anything else (the example's tiny model, ICSD itself)."""
    clip = str(config.get("model", {}).get("clip", ""))
    backbone = "ViT-L/14@336" if "ViT-L-14-336" in clip else "ViT-B/32" if "ViT-B-32" in clip else None
    where = f"{config.get('data', {}).get('root', '')} {group}".lower()
    data = COCO if "coco" in where else FLICKR if "flickr" in where else None
    method = group.replace("\\", "/").rsplit("/", 1)[-1]
    return tuple(a for a in ANCHORS if (a.config, a.backbone, a.data) == (method, backbone, data))


def ordered_metrics(keys: set[str]) -> list[str]:
    """Evaluation's order first (then the 1K fold metrics in the same order), anything else sorted."""
    known = [*METRICS, *EXTRA_METRICS, *(FOLD_PREFIX + m for m in (*METRICS, *EXTRA_METRICS))]
    return [k for k in known if k in keys] + sorted(keys - set(known))


def aggregate(runs: list[Run], split: str) -> dict[str, Stat]:
    """Mean ± std of ``split``'s best-checkpoint metrics over ``runs`` (metrics every run has)."""
    per_run = [run.split_metrics(split) for run in runs]
    common = set.intersection(*(set(m) for m in per_run))  # a group has at least one run
    return {k: Stat.of([m[k] for m in per_run]) for k in ordered_metrics(common)}


def build_rows(runs: list[Run], val_split: str = "val", test_split: str = "test",
               baseline: Optional[str] = None) -> list[Row]:
    """One row per group of finished seeds, one per unfinished run; deltas to ``baseline``'s row."""
    groups = group_runs(runs)
    names = short_names(list(groups))
    rows = []
    for group, members in groups.items():
        finished = [r for r in members if r.finished]
        parts = ([(True, finished)] if finished else []) + [(False, [r]) for r in members if not r.finished]
        for done, part in parts:
            config = part[0].config
            extra = {e["name"]: aggregate(part, e["name"]) for e in config.get("eval", {}).get("extra", [])
                     if isinstance(e, dict) and "name" in e}
            rows.append(Row(name=names[group], group=group, finished=done, runs=part,
                            val=aggregate(part, val_split), test=aggregate(part, test_split),
                            backbone=str(config.get("model", {}).get("clip")),
                            data=str(config.get("data", {}).get("root")), anchors=anchors_for(config, group),
                            extra={k: v for k, v in extra.items() if v}))
    if baseline is not None:
        add_deltas(rows, baseline)
    return rows


def names_group(baseline: str, shown_name: str) -> bool:
    """``--baseline`` names a group by its shown name or the name's last path component."""
    return baseline in (shown_name, shown_name.rsplit("/", 1)[-1])


def add_deltas(rows: list[Row], baseline: str) -> None:
    """Test-metric deltas (mean minus the baseline's mean) to the finished baseline row of the same
    backbone and data (``baseline``: see ``names_group``)."""
    matches = [r for r in rows if r.finished and names_group(baseline, r.name)]
    if not matches:
        available = sorted({r.name for r in rows if r.finished})
        raise ReportError(f"--baseline {baseline}: no finished run group of that name (groups: "
                          f"{', '.join(available) or 'none finished'})")
    by_context = {(r.backbone, r.data): r for r in matches}
    for row in rows:
        base = by_context.get((row.backbone, row.data))
        if base is None:
            continue
        row.baseline = base.name
        row.delta = {k: row.test[k].mean - base.test[k].mean for k in row.test if k in base.test}


# ----------------------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------------------
def fmt_stat(stat: Optional[Stat]) -> str:
    if stat is None:
        return "—"
    return f"{stat.mean:.2f}" if stat.std is None else f"{stat.mean:.2f} ± {stat.std:.2f}"


def metric_columns(rows: list[Row]) -> list[str]:
    fold = any(FOLD_PREFIX + "rsum" in r.test for r in rows)
    return [*METRICS, *((FOLD_PREFIX + m for m in METRICS) if fold else ())]


def header(metric: str) -> str:
    return f"1K {HEADERS[metric[len(FOLD_PREFIX):]]}" if metric.startswith(FOLD_PREFIX) else HEADERS[metric]


def to_markdown(rows: list[Row], val_split: str = "val", test_split: str = "test") -> str:
    columns = metric_columns(rows)
    with_delta = any(r.baseline for r in rows)
    shown = list(dict.fromkeys(a for r in rows for a in r.anchors))  # numbered in the notes
    extras = list(dict.fromkeys(name for r in rows for name in r.extra))
    head = (["run", "seeds", "best epoch"] + [f"{val_split} {header(m)}" for m in VAL_COLUMNS]
            + [f"{test_split} {header(m)}" for m in columns]
            + [f"{name} {header(m)}" for name in extras for m in VAL_COLUMNS]
            + (["Δ RSUM", "Δ r_mean"] if with_delta else []) + (["published RSUM"] if shown else []))
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row.label, f"{', '.join(str(s) for s in row.seeds)} (n={len(row.runs)})",
                 ", ".join("—" if r.best_epoch is None else str(r.best_epoch) for r in row.runs)]
        cells += [fmt_stat(row.val.get(m)) for m in VAL_COLUMNS] + [fmt_stat(row.test.get(m)) for m in columns]
        cells += [fmt_stat(row.extra.get(name, {}).get(m)) for name in extras for m in VAL_COLUMNS]
        if with_delta:
            cells += [f"{row.delta[m]:+.2f}" if m in row.delta else "" for m in ("rsum", "r_mean")]
        if shown:
            cells.append(", ".join(f"{a.rsum:.1f} [{shown.index(a) + 1}]" for a in row.anchors))
        lines.append("| " + " | ".join(cells) + " |")
    notes = [f"mean ± sample std (n-1) over the finished seeds; a value without ± is a single seed (n=1, no std); "
             f"{val_split}: the best epoch "
             f"(selected on val by the trainer); {test_split}: checkpoint_best (eval_best*.json if present, "
             f"else the best epoch's log line)"]
    if with_delta:
        baselines = ", ".join(sorted({r.baseline for r in rows if r.baseline}))
        notes.append(f"Δ: {test_split} mean minus the baseline's ({baselines})")
    if any(not r.finished for r in rows):
        notes.append("unfinished runs (log short of train.epochs) are shown alone, never averaged with finished seeds")
    if extras:
        notes.append(f"{', '.join(extras)}: transfer evaluation (eval.extra) at the best epoch")
    notes += [f"[{i}] {a.name}: RSUM {a.rsum:.1f}, {a.backbone}, {a.data}; {a.setting}" for i, a in enumerate(shown, 1)]
    return "\n".join(lines + [""] + [f"- {n}" for n in notes])


def row_json(row: Row) -> dict:
    return {"name": row.name, "group": row.group, "finished": row.finished, "seeds": row.seeds,
            "n": len(row.runs), "runs": [r.path for r in row.runs],
            "best_epochs": [r.best_epoch for r in row.runs], "last_epochs": [r.last_epoch for r in row.runs],
            "epochs": [r.epochs for r in row.runs], "backbone": row.backbone, "data": row.data,
            "val": {k: s.to_json() for k, s in row.val.items()},
            "test": {k: s.to_json() for k, s in row.test.items()},
            "extra": {name: {k: s.to_json() for k, s in stats.items()} for name, stats in row.extra.items()},
            "baseline": row.baseline, "delta": row.delta,
            "anchors": [dataclasses.asdict(a) for a in row.anchors]}


def to_json(rows: list[Row], val_split: str = "val", test_split: str = "test") -> str:
    return json.dumps({"val_split": val_split, "test_split": test_split, "rows": [row_json(r) for r in rows]},
                      indent=2)


def to_csv(rows: list[Row], val_split: str = "val", test_split: str = "test") -> str:
    val_keys = ordered_metrics({k for r in rows for k in r.val})
    test_keys = ordered_metrics({k for r in rows for k in r.test})
    head = ["run", "finished", "seeds", "n", "best_epochs", "last_epochs", "epochs"]
    head += [f"{val_split}_{k}_{s}" for k in val_keys for s in ("mean", "std")]
    head += [f"{test_split}_{k}_{s}" for k in test_keys for s in ("mean", "std")]
    head += ["baseline", "delta_rsum", "delta_r_mean", "published_rsum"]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(head)

    def stat_cells(stats: dict[str, Stat], keys: list[str]) -> list:
        return [c for k in keys for c in ((stats[k].mean, "" if stats[k].std is None else stats[k].std)
                                          if k in stats else ("", ""))]

    for row in rows:
        writer.writerow([row.name, row.finished, " ".join(map(str, row.seeds)), len(row.runs),
                         " ".join(map(str, (r.best_epoch for r in row.runs))),
                         " ".join(str(r.last_epoch) for r in row.runs), " ".join(str(r.epochs) for r in row.runs),
                         *stat_cells(row.val, val_keys), *stat_cells(row.test, test_keys), row.baseline or "",
                         row.delta.get("rsum", ""), row.delta.get("r_mean", ""),
                         " ".join(f"{a.rsum}:{a.name}" for a in row.anchors)])
    return out.getvalue()


def report(patterns: list[str], baseline: Optional[str] = None, fmt: str = "markdown", val_split: str = "val",
           test_split: str = "test") -> str:
    """The report of the run folders named by ``patterns`` as text (markdown, json or csv)."""
    rows = build_rows(load_runs(patterns), val_split, test_split, baseline)
    render = {"markdown": to_markdown, "json": to_json, "csv": to_csv}[fmt]
    return render(rows, val_split, test_split)


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m icsd.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR_OR_GLOB",
                        help="run folders, globs, or folders holding run folders")
    parser.add_argument("--baseline", default=None, help="group name for the delta columns (e.g. contrastive)")
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="JSON instead of Markdown")
    out.add_argument("--csv", action="store_true", help="CSV instead of Markdown")
    parser.add_argument("--split-val", default="val", help="the split of the best-epoch columns (default: val)")
    parser.add_argument("--split-test", default="test", help="the split of the test columns (default: test)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    fmt = "json" if args.json else "csv" if args.csv else "markdown"

    def body() -> None:
        print(report(args.runs, args.baseline, fmt, args.split_val, args.split_test))  # the command's output

    return run_command(body)

