"""The batched extraction loop shared by the image and the text teacher: progress bar, checkpoints,
resumption and a clean stop on interruption."""
from __future__ import annotations

import itertools
from typing import Callable, Iterable, Optional

import numpy as np
from tqdm.auto import tqdm

from icsd.data.feature_file import FeatureWriter

# make_batches(start_row) -> the feature blocks [b, D] of rows start_row, start_row + b, ... in order
BatchSource = Callable[[int], Iterable[np.ndarray]]


def run_extraction(writer: FeatureWriter, make_batches: BatchSource, desc: str = "features",
                   show_progress: bool = True, max_batches: Optional[int] = None) -> bool:
    """Write every remaining row of ``writer`` from ``make_batches(writer.rows_done)``.

    Returns True when the file is complete. ``max_batches`` stops (resumably) after that many batches
    and returns False. On any exception (Ctrl-C included) the rows already written are checkpointed
    before it propagates, so the next run continues from there.
    """
    total, start = writer.rows, writer.rows_done
    try:
        with tqdm(total=total, initial=start, desc=desc, unit="row", disable=not show_progress,
                  dynamic_ncols=True) as bar:
            if start < total:
                for block in itertools.islice(make_batches(start), max_batches):
                    writer.write(block)
                    bar.update(len(block))
    except BaseException:
        writer.close()
        raise
    if writer.rows_done < total:
        writer.close()
        return False
    writer.finish()
    return True
