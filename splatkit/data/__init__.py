"""Cameras, scenes and dataset readers: the data model every other part of splatkit shares."""

from splatkit.data.cameras import Cameras, opencv_to_opengl, opengl_to_opencv
from splatkit.data.loader import detect_format, load_scene, READERS
from splatkit.data.scene import Normalization, Scene

__all__ = [
    "Cameras", "Scene", "Normalization", "load_scene", "detect_format", "READERS",
    "opencv_to_opengl", "opengl_to_opencv",
]
