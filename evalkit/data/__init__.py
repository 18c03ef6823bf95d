"""Datasets: loaders for D-NeRF, HyperNeRF and Neu3D into one :class:`Scene` model, and a
synthetic scene generator writing all three formats (``evalkit.data.synth``)."""
from evalkit.data.detect import FORMATS, detect_format, load_scene
from evalkit.data.scene import Camera, DatasetError, Frame, PointCloud, Scene

__all__ = ["FORMATS", "Camera", "DatasetError", "Frame", "PointCloud", "Scene", "detect_format",
           "load_scene"]
