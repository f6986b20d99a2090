"""Training machinery: the loop (``train``), optimiser groups and schedulers (``optim``),
checkpoints and resuming from them (``checkpoint``, ``restart``), error metrics
(``metrics``) and the final error tables (``reporting``).

It takes plain values and small dataclasses; the command line (``mace.cli``) builds them.
"""
