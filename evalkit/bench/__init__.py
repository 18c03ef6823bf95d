"""Stand-alone micro-benchmarks and cross-checks, each runnable as ``python -m evalkit.bench.<name>``.

* ``render``: rasterisation throughput (ms/frame, frames/s, Gaussians/s) on random scenes.
* ``render_agreement``: gsplat vs torch-reference image/gradient differences (needs CUDA).
* ``fourdgs``: the phases of a 4DGS fine-stage step (and of a decoded model's render).
* ``fourdgs_step``: real 4DGS fine steps at a late Gaussian count, per kernel backend; profiles.
* ``fourdgs_cc``: 4DGS-CC's rate terms and steps.
* ``kernel_compile``: the one-time compilation of 4DGS's Triton kernels, per configuration.
* ``vs_reference``: measured records against the reference code's run and the paper, with the targets.
* ``seed_spread``: run-to-run spread of the same jobs over several results folders (one per seed).
* ``entropy``: entropy-coder throughput and efficiency on data drawn from the models.
"""
