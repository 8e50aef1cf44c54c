"""The losses: the math as pure functions (``icsd.losses.functions``), wired into loss terms, one per YAML
section of ``loss:`` (``contrastive``, ``soft_label`` with ISF, ``uni_modal`` from CUSA, and any plug-in named
in ``loss.plugins``), summed by the ``Criterion``. CONTRIBUTING.md walks through adding a term."""
from icsd.losses.criterion import Criterion, needs_teacher_features
from icsd.losses.functions import (
    contrastive_loss,
    cosine_similarity_matrix,
    cross_entropy,
    fuse_similarities,
    multi_positive_targets,
    soft_label_loss,
)
from icsd.losses.term import LossTerm, Parameters, Reads, load_term, term_classes

__all__ = ["Criterion", "LossTerm", "Parameters", "Reads", "contrastive_loss", "cosine_similarity_matrix",
           "cross_entropy", "fuse_similarities", "load_term", "multi_positive_targets", "needs_teacher_features",
           "soft_label_loss", "term_classes"]
