"""Benchmark: memory of the training data loader over a COCO-scale image-teacher file in the project's
mmap layout (docs/data.md: it must not need the whole file in RAM).

    .venv/bin/python bench/feature_mmap_rss.py                   # 20,000 x 37,632 float16 = 1.5 GB
    .venv/bin/python bench/feature_mmap_rss.py --batches 500 --num-workers 2

1. Writes a synthetic ``train_unicom.npy`` (random float16, Unicom ViT-B/32 token size 49 x 768) with the
   project's writer (``icsd.data.feature_file``), chunk by chunk, into a temporary folder (deleted at the
   end), plus a text-teacher cache, then drops both from the page cache (fsync + POSIX_FADV_DONTNEED).
2. Open: ``load_image_features`` + ``rows_for`` (what training does). Reports the RSS growth and the bytes
   actually read from disk (/proc/self/io read_bytes), both of which must stay far below the file size.
3. Load: ``icsd.data.datasets.TrainPairs`` (one item per caption, 5 per image, external image and text
   features attached) under a ``DataLoader`` in random order, batch 128, a few hundred batches.

Memory is read from /proc/<pid>/status: ``RssAnon`` (private memory: what the loader allocates) and
``RssFile`` (file-backed pages mapped into the process). Rows of the mmap layout are read with ``os.pread``
(``icsd.data.feature_file.MatrixRows``), so touched rows stay in the kernel's page cache and are never mapped
into the loader: ``VmRSS`` itself should stay flat. The 300 MB criterion is on the peak growth of the
whole RSS: ``VmRSS`` of this process with ``--num-workers 0`` (the default), or ``Pss_Anon + Pss_File``
(/proc/<pid>/smaps_rollup) summed over this process and its workers otherwise (a worker's RSS also counts,
once per worker, the copy-on-write pages it shares with its parent; PSS splits them).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import psutil
import torch
from PIL import Image
from torch.utils.data import DataLoader

from icsd.data.annotations import Split
from icsd.data.captions import caption_fingerprint
from icsd.data.datasets import TrainPairs
from icsd.data.feature_file import FeatureWriter
from icsd.data.teacher_features import load_image_features, load_text_features

MB = 1_000_000  # decimal megabytes, as the 300 MB criterion
STATUS_FIELDS = ("RssAnon", "RssFile", "VmRSS", "VmHWM")  # this process, from /proc/self/status
PSS_FIELDS = ("Pss_Anon", "Pss_File")                      # summed over this process and its workers
FIELDS = ("RssAnon", "RssFile", "VmRSS") + PSS_FIELDS


def _read_kb(path: str, fields) -> dict:
    out = {}
    with open(path) as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in fields:
                out[key] = int(value.split()[0]) * 1024
    return out


def memory() -> dict:
    """RssAnon, RssFile, VmRSS, VmHWM of this process, and Pss_Anon, Pss_File of it plus its workers
    (proportional set size: a copy-on-write page shared by k processes counts 1/k in each)."""
    out = _read_kb("/proc/self/status", STATUS_FIELDS)
    totals = _read_kb("/proc/self/smaps_rollup", PSS_FIELDS)
    for child in psutil.Process().children(recursive=True):
        try:
            for key, value in _read_kb(f"/proc/{child.pid}/smaps_rollup", PSS_FIELDS).items():
                totals[key] += value
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            pass
    return {**out, **totals}


def disk_read_bytes() -> int:
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("read_bytes"))


def drop_from_page_cache(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def write_image_features(path: str, rows: int, dim: int, chunk: int, seed: int) -> list[str]:
    ids = [f"COCO_train2014_{i:012d}.jpg" for i in range(rows)]
    writer = FeatureWriter(path, rows, {"model": "synthetic", "mode": "tokens", "kind": "image", "ids": ids},
                           resume=False)
    rng = np.random.default_rng(seed)
    for start in range(0, rows, chunk):
        n = min(chunk, rows - start)
        writer.write(rng.standard_normal((n, dim), dtype=np.float32).astype(np.float16))
    writer.finish()
    return ids


def synthetic_split(ids: list[str], captions_per_image: int, image_path: str) -> Split:
    n = len(ids)
    txt2img = np.repeat(np.arange(n, dtype=np.int64), captions_per_image)
    captions = [f"caption {t} of image {t // captions_per_image}" for t in range(len(txt2img))]
    img2txt = [np.arange(i * captions_per_image, (i + 1) * captions_per_image) for i in range(n)]
    return Split(name="train", annotation_file="<synthetic>", captions=captions, image_ids=ids, file_order=None,
                 image_paths=[image_path] * n, txt2img=txt2img, img2txt=img2txt)


def fmt(nbytes: float) -> str:
    return f"{nbytes / MB:9.1f} MB"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=20_000, help="images (rows of the feature file)")
    parser.add_argument("--dim", type=int, default=49 * 768, help="values per row (Unicom ViT-B/32 tokens)")
    parser.add_argument("--captions-per-image", type=int, default=5)
    parser.add_argument("--text-dim", type=int, default=384)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--limit-mb", type=float, default=300.0, help="criterion on peak RssAnon growth")
    parser.add_argument("--dir", default=None, help="parent of the temporary folder (default: the system's)")
    args = parser.parse_args(argv)

    tmp = tempfile.mkdtemp(prefix="icsd_bench_", dir=args.dir)
    ok = True
    try:
        image_path = os.path.join(tmp, "train_unicom.npy")
        t0 = time.perf_counter()
        ids = write_image_features(image_path, args.rows, args.dim, chunk=500, seed=0)
        write_s = time.perf_counter() - t0
        size = os.path.getsize(image_path)
        print(f"image features: {args.rows} x {args.dim} float16, file {size / MB:.1f} MB "
              f"({size / 1e9:.2f} GB), written in {write_s:.1f} s")

        pic = os.path.join(tmp, "pic.jpg")
        Image.new("RGB", (8, 8), (90, 120, 200)).save(pic)
        split = synthetic_split(ids, args.captions_per_image, pic)
        text_path = os.path.join(tmp, "train_text.npy")
        writer = FeatureWriter(text_path, split.num_captions, {"model": "synthetic-text", "kind": "text",
                                                               "fingerprint": caption_fingerprint(split.captions)})
        rng = np.random.default_rng(1)
        for start in range(0, split.num_captions, 10_000):
            writer.write(rng.standard_normal((min(10_000, split.num_captions - start), args.text_dim),
                                             dtype=np.float32))
        writer.finish()
        print(f"text features: {split.num_captions} x {args.text_dim} float16, "
              f"file {os.path.getsize(text_path) / MB:.1f} MB")
        for path in (image_path, text_path):
            drop_from_page_cache(path)

        # -- 2. open -------------------------------------------------------------------------------
        before, read_before = memory(), disk_read_bytes()
        t0 = time.perf_counter()
        features = load_image_features(image_path)
        features.rows_for(split.image_ids)
        text = load_text_features(text_path, caption_fingerprint(split.captions), split.num_captions, None)
        open_s = time.perf_counter() - t0
        after, read = memory(), disk_read_bytes() - read_before
        growth = after["VmRSS"] - before["VmRSS"]
        open_ok = growth < 0.05 * size and read < 0.05 * size
        ok &= open_ok
        print(f"\nopen ({open_s:.2f} s): load_image_features + rows_for + load_text_features")
        print(f"  VmRSS growth {fmt(growth)} (RssAnon {fmt(after['RssAnon'] - before['RssAnon'])}, "
              f"RssFile {fmt(after['RssFile'] - before['RssFile'])}); read from disk {fmt(read)}")
        print(f"  = {100 * growth / size:.2f}% / {100 * read / size:.2f}% of the {size / MB:.0f} MB file "
              f"-> {'PASS' if open_ok else 'FAIL'} (criterion: both < 5% of the file)")

        # -- 3. the training loader ----------------------------------------------------------------
        pairs = TrainPairs(split, transform=lambda im: torch.from_numpy(np.array(im)).permute(2, 0, 1).float(),
                           tokenizer=lambda caption: torch.zeros((1, 8), dtype=torch.long),
                           image_features=features, text_features=text)
        loader = DataLoader(pairs, batch_size=args.batch_size, shuffle=True, drop_last=True,
                            num_workers=args.num_workers, generator=torch.Generator().manual_seed(0))
        start = memory()
        peak = dict(start)
        checksum, seen = 0.0, set()
        read_before = disk_read_bytes()
        t0 = time.perf_counter()
        for n, batch in enumerate(loader):
            if n == args.batches:
                break
            assert batch["ext_img"].shape == (args.batch_size, args.dim) and batch["ext_img"].dtype == torch.float16
            checksum += float(batch["ext_img"][:, 0].sum()) + float(batch["ext_txt"][:, 0].sum())
            seen.update(int(i) for i in batch["image_index"])
            now = memory()
            for key in FIELDS:
                peak[key] = max(peak[key], now[key])
        load_s = time.perf_counter() - t0
        end = memory()
        read = disk_read_bytes() - read_before
        del loader
        items = args.batches * args.batch_size
        print(f"\nloader: TrainPairs + DataLoader(batch {args.batch_size}, shuffle, {args.num_workers} workers), "
              f"{args.batches} batches = {items} items in {load_s:.1f} s ({items / load_s:.0f} items/s)")
        print(f"  {len(seen)} distinct images touched = {len(seen) * args.dim * 2 / MB:.0f} MB of the file; "
              f"read from disk {fmt(read)} (this process and its exited workers)")
        print(f"  {'':30s} {'before':>12s} {'after':>12s} {'peak growth':>12s}")
        for key in FIELDS:
            label = f"{key} ({'this process' if key in STATUS_FIELDS else 'all processes'})"
            print(f"  {label:30s} {fmt(start[key])}  {fmt(end[key])}  {fmt(peak[key] - start[key])}")
        print(f"  VmHWM (peak VmRSS of this process since it started) {fmt(end['VmHWM'])}")
        keys = ("VmRSS",) if args.num_workers == 0 else PSS_FIELDS
        growth = sum(peak[k] for k in keys) - sum(start[k] for k in keys)
        loader_ok = growth < args.limit_mb * MB
        ok &= loader_ok
        print(f"  criterion: peak {' + '.join(keys)} growth {growth / MB:.1f} MB < {args.limit_mb:.0f} MB "
              f"-> {'PASS' if loader_ok else 'FAIL'}")
        print(f"  checksum {checksum:.3f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n{'PASS' if ok else 'FAIL'}; temporary folder {tmp} deleted")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
