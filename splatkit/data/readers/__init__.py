"""Dataset readers, one module per format (dispatched by :mod:`splatkit.data.loader`).

Each module exposes ``NAME``, ``detect(root) -> bool`` (file names only) and
``read(root, downscale) -> Scene``. Every reader returns cameras in OpenCV axes with splatkit's
corner-origin pixel convention, in a normalised world frame; the shared machinery (pixels,
resizing, masks, depth, normalisation) lives in :mod:`splatkit.data.readers._common`.

* ``colmap``: COLMAP sparse model + ``images/``
* ``transforms``: instant-ngp / nerfstudio ``transforms.json``, Blender ``transforms_{split}.json``
* ``dtu_idr``: IDR / NeuS ``cameras_sphere.npz`` + ``image/`` + ``mask/``
* ``dtu_rectified``: DTU ``Rectified/`` + ``Calibration/cal18`` (RegNeRF / SpaRe layout)
* ``llff``: ``poses_bounds.npy`` + ``images/``

Shared optional extras: ``mask/`` or ``masks/`` (same stem as the image, or DTU's ``000.png``)
become ``Scene.masks``; ``depth/<stem>.npy`` (z-depth in the dataset's world units, 0 = unknown)
becomes ``Scene.depths``, scaled into the normalised frame.
"""
