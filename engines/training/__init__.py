"""Training the task heads that read the recognizer's trunk (``facestream train``).

- :mod:`engines.training.data`: the labelled sets (UTKFace, CelebA, FER2013 layouts) as
  one table of tasks with per-sample masks;
- :mod:`engines.training.features`: the trunk run once over a set into a feature cache;
- :mod:`engines.training.model`: the heads and the founding papers' methods (dynamic task
  weighting, cross-task fusion, gated attributes with a correlation layer, gradient
  reversal for an age-invariant identity, the common component of intra-representation);
- :mod:`engines.training.train`: the seeded training loop, evaluation and export.

Only this package and ``engines.convert`` need PyTorch; running the exported heads does not.
"""
