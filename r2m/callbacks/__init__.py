"""Callbacks that run the merge pipeline at the end of training.

- :class:`~r2m.callbacks.merge.MergeCallback` (Lightning): one process trains several specialists
  (``train.py tasks=[...]``) and the callback merges after the last one.
- :class:`~r2m.callbacks.hydra.MergeOnMultirunEnd` (Hydra): a ``train.py -m`` sweep over families
  ends with the merge of the specialists the sweep wrote.
- :class:`~r2m.callbacks.hydra.SweepSummary` (Hydra): a ``merge.py -m`` sweep ends with one
  combined comparison table and the point chosen on validation AUC.

Imports are lazy so that importing this package does not import Lightning or Hydra.
"""

__all__ = ["MergeCallback", "MergeOnMultirunEnd", "SweepSummary"]


def __getattr__(name: str):
    if name == "MergeCallback":
        from r2m.callbacks.merge import MergeCallback

        return MergeCallback
    if name in ("MergeOnMultirunEnd", "SweepSummary"):
        from r2m.callbacks import hydra as _hydra

        return getattr(_hydra, name)
    raise AttributeError(name)
