"""Sweeps that scale: run a sweep's jobs on several workers (one machine's GPUs, a SLURM job array,
a Ray cluster) that share one results folder.

* ``claims``: a job is claimed before it runs (exclusive create of ``<rate>.claim`` beside its
  record, with host, pid and start time), so no two workers or sweeps run it; stale claims (a dead
  process on the same host, or older than the job's time limit) are taken over.
* ``worker``: the claim loop a worker runs (claim -> ``runner.run_job`` -> release).
* ``isolation``: a worker runs in a child process; a native death (segfault, OOM kill, CUDA fault)
  becomes a failed record naming the signal, with the tail of the job's log, and the sweep goes on.
* ``local`` / ``slurm`` / ``ray_executor``: the executors; ``status``: ``evalkit status RESULTS``;
  ``shared``: shared training stages stored beside the records; ``resources``: per-job limits
  from the method spec.
"""
