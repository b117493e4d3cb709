"""r2m's Hydra launcher plugins (discovered by Hydra in the ``hydra_plugins`` namespace package).

* ``hydra/launcher=r2m_grouped`` (:mod:`.grouped`, the default of ``configs/merge.yaml``): the basic
  launcher, except that merge jobs differing only in ``merge.*`` hyperparameters run as one group
  through :func:`r2m.merging.merge_many` (one residual pass for the α/η points) — each job keeps its
  own job folder, outputs and return value.
* ``hydra/launcher=r2m_submitit_slurm`` / ``r2m_submitit_local`` (:mod:`.submitit`, used by
  ``configs/hydra/launcher/slurm.yaml``): hydra-submitit-launcher's launchers that record the job
  ids of a sweep and, with ``wait: false``, return once the array is submitted, so that
  :mod:`r2m.cluster` runs the post-sweep merge as its own job (``afterok`` dependency).
"""
