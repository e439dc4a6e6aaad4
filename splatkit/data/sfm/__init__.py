"""Camera poses by structure from motion (pycolmap, run in a child process).

* :func:`recover_poses` (``splatkit data poses``): a folder of photos -> a COLMAP scene folder.
* :func:`triangulate_known_poses`: 3D points from a scene whose cameras are known.
"""

from splatkit.data.sfm.photos import is_photo_folder, photo_files
from splatkit.data.sfm.pipeline import FEW_VIEWS, PoseOptions, PoseResult, pose_cache_dir, recover_poses
from splatkit.data.sfm.triangulate import TriangulatedPoints, triangulate_known_poses

__all__ = ["FEW_VIEWS", "PoseOptions", "PoseResult", "TriangulatedPoints", "is_photo_folder", "photo_files",
           "pose_cache_dir", "recover_poses", "triangulate_known_poses"]
