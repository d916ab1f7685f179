"""A suite at scale: its grid as cells with dependencies, run in parallel processes or on SLURM.

``plan`` turns a suite into cells (prepare -> pretrain -> features -> probe/finetune -> evaluate ->
compare); ``cells`` runs one cell under a lock and records who ran it and how it ended; ``schedule``
starts cells whose inputs are done through the ``local`` or ``slurm`` backend (``scale`` picks one
for ``cxrbench run``); ``states`` reads the run directory back for ``--dry-run`` and ``cxrbench status``.
"""
