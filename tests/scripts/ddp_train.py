"""Train through icsd.train.trainer.run_training and save every rank's final parameters to OUT_DIR/rank{r}.pt.

    torchrun --nproc_per_node=2 tests/scripts/ddp_train.py OUT_DIR --opts key=value ...
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import torch  # noqa: E402

from icsd.config import load_config  # noqa: E402
from icsd.distributed import init_distributed, shutdown  # noqa: E402
from icsd.train.trainer import run_training  # noqa: E402

from conftest import EXAMPLE_CONFIG, tiny_overrides  # noqa: E402


def main(out_dir: str, opts: list[str], resume) -> None:
    cfg = load_config(EXAMPLE_CONFIG, tiny_overrides(*opts))
    env = init_distributed("cpu")
    model = run_training(cfg, env, resume)
    torch.save(model.state_dict(), os.path.join(out_dir, f"rank{env.rank}.pt"))
    shutdown()


if __name__ == "__main__":
    args = sys.argv[1:]
    resume = None
    if "--resume" in args:
        i = args.index("--resume")
        resume, args = args[i + 1], args[:i] + args[i + 2:]
    main(args[0], args[2:] if len(args) > 1 and args[1] == "--opts" else [], resume)
