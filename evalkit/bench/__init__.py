"""Stand-alone micro-benchmarks and cross-checks, each runnable as ``python -m evalkit.bench.<name>``.

* ``render``: rasterisation throughput (ms/frame, frames/s, Gaussians/s) on random scenes.
* ``render_agreement``: gsplat vs torch-reference image/gradient differences (needs CUDA).
"""
