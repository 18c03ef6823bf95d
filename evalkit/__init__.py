"""evalkit: benchmark compressed dynamic Gaussian Splatting (train, encode, decode, render, measure, report)."""

__version__ = "0.1.0"
