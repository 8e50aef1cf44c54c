"""Loss and gradients of one training step on a fixed batch of dataset_example, saved by rank 0.

Run alone (1 process sees the whole batch) or under torchrun (each rank takes its consecutive slice of the
same batch, in rank order). With loss.gather_features true and PDM off the two must agree.

    python tests/scripts/ddp_grad_check.py OUT.pt GLOBAL_BATCH [--opts ...]
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/ for conftest
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import torch  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from icsd.config import load_config  # noqa: E402
from icsd.data.build import build_train_pairs, load_data_split, load_teacher_features  # noqa: E402
from icsd.distributed import init_distributed, shutdown  # noqa: E402
from icsd.losses import Criterion  # noqa: E402
from icsd.models import build_model  # noqa: E402

from conftest import EXAMPLE_CONFIG, tiny_overrides  # noqa: E402


def main(out_path: str, global_batch: int, opts: list[str]) -> None:
    cfg = load_config(EXAMPLE_CONFIG, tiny_overrides(*opts))
    env = init_distributed("cpu")
    torch.manual_seed(0)  # the same initial weights on every rank
    model, backbone = build_model(cfg)
    split = load_data_split(cfg.data, "train")
    pairs = build_train_pairs(cfg, split, load_teacher_features(cfg.data, split),
                              backbone.transform, backbone.tokenizer)
    # A fixed batch with repeated images: the first `global_batch` captions (5 per image).
    batch = next(iter(DataLoader(pairs, batch_size=global_batch, shuffle=False)))
    local = global_batch // env.world_size
    batch = {k: v[env.rank * local:(env.rank + 1) * local] for k, v in batch.items()}
    wrapped = DistributedDataParallel(model) if env.distributed else model
    out = wrapped(batch["image"], batch["tokens"])
    terms = Criterion(cfg.loss)(out, batch, model)
    terms["loss"].backward()
    if env.is_main:
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        torch.save({"terms": {k: v.detach() for k, v in terms.items()}, "grads": grads}, out_path)
    shutdown()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[4:] if len(sys.argv) > 3 and sys.argv[3] == "--opts" else [])
