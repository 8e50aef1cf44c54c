"""Image-teacher features of every image of each split, in the project's layout (float16 ``[N, D]``
``.npy`` + ``.meta.json`` sidecar listing the image_id of each row), batched and resumable: rerun the
same command after an interruption and it continues from its last checkpoint. Run from the repo root:

    # Unicom ViT-B/32 patch tokens (49 x 768 = 37,632 values per image), as the released features
    python datasets/extract_image_features.py --root datasets/coco --backend unicom --model ViT-B/32 --mode tokens
    # any open_clip model (tag or local weights), pooled embedding
    python datasets/extract_image_features.py --root datasets/coco --backend open_clip \\
        --model ViT-L-14 --pretrained datacomp_xl_s13b_b90k --mode pooled --out "{split}_clipl14.npy"
    # any timm model ('hub' = timm's own weights, or a local weights file)
    python datasets/extract_image_features.py --root datasets/coco --backend timm \\
        --model vit_base_patch16_224.augreg_in21k --pretrained hub --mode tokens

See datasets/README.md.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from icsd.features.cli import add_data_arguments, default_device, resolve_data_arguments, run_cli  # noqa: E402
from icsd.features.image_encoders import BACKENDS, MODES  # noqa: E402


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arguments(parser, "--out", 'output file pattern under the root (default: the config\'s '
                                        'data.image_features, else "{split}_unicom.npy")')
    parser.add_argument("--backend", choices=BACKENDS, default="open_clip", help="model library (default open_clip)")
    parser.add_argument("--model", required=True,
                        help="open_clip name or model-config JSON, timm name, or unicom name (ViT-B/32)")
    parser.add_argument("--pretrained", default=None,
                        help="open_clip tag or weights file; timm: 'hub' or a weights file; unicom: weights "
                             "folder; none: random init (with --seed)")
    parser.add_argument("--mode", choices=MODES, default="pooled",
                        help="pooled embedding, or the final patch tokens flattened (N x C)")
    parser.add_argument("--force-quick-gelu", action="store_true", help="open_clip: QuickGELU (OpenAI weights)")
    parser.add_argument("--seed", type=int, default=0, help="seed of a random initialisation")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--num-workers", type=int, default=4, help="image-loading processes")
    parser.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda when available)")
    parser.add_argument("--precision", choices=("fp32", "amp_fp16", "amp_bf16"), default="fp32")
    parser.add_argument("--flush-every", type=int, default=20, help="checkpoint progress every N batches")
    parser.add_argument("--max-batches", type=int, default=None, help="stop (resumably) after N batches per split")
    parser.add_argument("--overwrite", action="store_true", help="recompute even a complete file of the same job")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)

    def body():
        from icsd.data.annotations import load_split
        from icsd.features.image import extract_image_features
        from icsd.features.image_encoders import build_image_encoder

        resolve_data_arguments(args, "image_features")
        splits = [load_split(name, os.path.join(args.root, args.annotation.format(split=name)), args.root,
                             args.max_words) for name in args.splits]  # all checked before the model loads
        encoder = build_image_encoder(args.backend, args.model, args.pretrained, args.mode,
                                      default_device(args.device), args.seed, args.force_quick_gelu)
        for split in splits:
            out = os.path.join(args.root, args.out.format(split=split.name))
            done = extract_image_features(out, split, encoder, args.batch_size, args.num_workers, args.precision,
                                          not args.no_progress, args.flush_every, args.max_batches, args.overwrite)
            state = "done" if done else "stopped (rerun the same command to continue)"
            print(f"{split.name}: {split.num_images} images -> {out} [{state}]", flush=True)

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
