"""Ground floor: what every other layer may use and which uses nothing of ours.

User errors (``errors``), atomic file writes and output-folder checks (``files``), the lock
on a run's outputs (``run_lock``), element tables (``atomic_numbers``), and dtype, device
and seed setup (``torch_setup``).
"""
