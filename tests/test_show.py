"""icsd.show: evaluation's scores, the ground truth marked where it is in the top 5 (from the data)."""
from __future__ import annotations

import json
import os

import pytest
import torch
from PIL import Image

from icsd.config import load_config
from icsd.data.build import load_data_split
from icsd.metrics import recall_from_ranks, similarity_ranks
from icsd.tools import show

from conftest import EXAMPLE_CONFIG, tiny_overrides
from example_runs import example_runs


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return example_runs(tmp_path_factory)


def test_compute_sheet_on_known_scores():
    # 3 images, 6 captions (two per image); caption j belongs to image j // 2
    sim = torch.tensor([[0.9, 0.1, 0.8, 0.0, 0.2, 0.3],
                        [0.5, 0.4, 0.1, 0.2, 0.7, 0.6],
                        [0.1, 0.3, 0.2, 0.9, 0.6, 0.5]])
    txt2img = torch.tensor([0, 0, 1, 1, 2, 2])
    sheet = show.compute_sheet(sim, txt2img, [f"c{j}" for j in range(6)], ["a", "b", "c"], ["pa", "pb", "pc"],
                               n_queries=3, k=2)
    assert [q.index for q in sheet.text_queries] == [0, 2, 5] and [q.index for q in sheet.image_queries] == [0, 1, 2]
    q0, q2, q5 = sheet.text_queries
    assert [(h.index, h.correct) for h in q0.hits] == [(0, True), (1, False)] and q0.gt_rank == 0
    assert [(h.index, h.correct) for h in q2.hits] == [(0, False), (2, False)] and q2.gt_rank == 2  # gt is last
    assert [(h.index, h.correct) for h in q5.hits] == [(1, False), (2, True)] and q5.gt_rank == 1
    i0, i1, i2 = sheet.image_queries
    assert [(h.text, h.correct) for h in i0.hits] == [("c0", True), ("c2", False)] and i0.gt_rank == 0
    assert [(h.text, h.correct) for h in i1.hits] == [("c4", False), ("c5", False)] and i1.gt_rank == 4
    assert [(h.text, h.correct) for h in i2.hits] == [("c3", False), ("c4", True)] and i2.gt_rank == 1
    assert show.pick(100, 3) == [0, 50, 99] and show.pick(5, 9) == [0, 1, 2, 3, 4]
    drawn = show.pick(100, 3, seed=1)
    assert drawn == sorted(set(drawn)) and len(drawn) == 3 and all(0 <= i < 100 for i in drawn)
    assert drawn == show.pick(100, 3, seed=1) and drawn != show.pick(100, 3, seed=2) != [0, 50, 99]


def test_sheet_png_and_html(runs, tmp_path, capsys):
    best = os.path.join(runs["icsd"][0], "checkpoint_best.pth")
    sheet, sim, txt2img = show.sheet_for_checkpoint(best, "test", 3)
    # The same encoding as evaluation.py: its metrics, exactly
    with open(runs["eval_json"]) as f:
        assert recall_from_ranks(*similarity_ranks(sim, txt2img)) == json.load(f)["test"]
    assert len(sheet.text_queries) == 3 and len(sheet.image_queries) == 3
    for q in sheet.text_queries:
        gt = int(txt2img[q.index])
        assert [h.correct for h in q.hits] == [h.index == gt for h in q.hits] and len(q.hits) == 5
        assert any(h.correct for h in q.hits) == (q.gt_rank < 5)
        if q.gt_rank < 5:
            assert q.hits[q.gt_rank].correct  # framed where it is
        assert [h.score for h in q.hits] == sorted(sim[:, q.index].tolist(), reverse=True)[:5]
    for q in sheet.image_queries:
        assert [h.correct for h in q.hits] == [int(txt2img[h.index]) == q.index for h in q.hits]
        assert any(h.correct for h in q.hits) == (q.gt_rank < 5)
    # Texts and images as the annotation pairs them (not through the sheet's own index maps)
    split = load_data_split(load_config(EXAMPLE_CONFIG, tiny_overrides()).data, "test")
    images_of = {}
    for record, caption in enumerate(split.captions):
        images_of.setdefault(caption, set()).add(split.image_paths[split.txt2img[record]])
    for q in sheet.text_queries:
        assert q.image_path in images_of[q.text]
    for q in sheet.image_queries:
        assert q.image_path == split.image_paths[q.index]
        assert [h.correct for h in q.hits] == [q.image_path in images_of[h.text] for h in q.hits]

    png, page = str(tmp_path / "sheet.png"), str(tmp_path / "sheet.html")
    assert show.main([best, "--split", "test", "--queries", "3", "--out", png, page]) == 0
    with Image.open(png) as image:
        image.load()
        assert image.format == "PNG" and image.size[0] > 400
    text = open(page, encoding="utf-8").read()
    framed = sum(h.correct for q in sheet.text_queries for h in q.hits)
    ticked = sum(h.correct for q in sheet.image_queries for h in q.hits)
    assert text.count("class='gt'") == framed and text.count("✓ ") == ticked
    assert "src='data:image/jpeg;base64," in text and "src='/" not in text  # self-contained
    assert show.main([best, "--out", str(tmp_path / "sheet.pdf")]) == 1
    assert capsys.readouterr().err.endswith("the extension must be .png or .html\n")
