"""Reading and resizing images with errors that name the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from splatkit.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".JPG", ".JPEG", ".PNG", ".tif", ".tiff", ".exr", ".bmp")


def read_image_raw(path: str | Path) -> np.ndarray:
    """The image as stored (uint8/uint16/float), or a :class:`DataError` naming the file."""
    import imageio.v3 as iio

    path = Path(path)
    if not path.is_file():
        raise DataError("image file is missing", path)
    try:
        arr = np.asarray(iio.imread(path))
    except Exception as exc:  # imageio raises many types for corrupt files
        raise DataError(f"cannot decode image ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})", path)
    if arr.ndim not in (2, 3) or arr.size == 0:
        raise DataError(f"not a 2D image (shape {arr.shape})", path)
    return arr


def to_float01(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if arr.dtype == np.uint16:
        return arr.astype(np.float32) / 65535.0
    return arr.astype(np.float32)


def read_mask(path: str | Path) -> np.ndarray:
    """float32 [H, W] in [0, 1]; colour masks use their first channel, RGBA their alpha."""
    img = to_float01(read_image_raw(path))
    if img.ndim == 3:
        img = img[..., 3] if img.shape[-1] == 4 else img[..., 0]
    return np.ascontiguousarray(img, dtype=np.float32)


def downscale_image(img: np.ndarray, factor: int) -> np.ndarray:
    """Shrink by an integer ``factor`` averaging ``factor x factor`` blocks (exact with our pixel
    convention). Sizes that do not divide are cropped at the right/bottom edge, as the
    DTU/RegNeRF protocol does; use :func:`resize_image` for arbitrary sizes."""
    if factor == 1:
        return img
    h, w = img.shape[:2]
    h2, w2 = h // factor, w // factor
    if h2 == 0 or w2 == 0:
        raise DataError(f"cannot downscale a {w}x{h} image by {factor}")
    crop = img[: h2 * factor, : w2 * factor]
    shape = (h2, factor, w2, factor) + img.shape[2:]
    return crop.reshape(shape).mean(axis=(1, 3)).astype(img.dtype)


def resize_image(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """Area-style resize to an exact size (Pillow's box filter on float32 channels)."""
    from PIL import Image

    if img.shape[1] == width and img.shape[0] == height:
        return img
    chans = [img] if img.ndim == 2 else [img[..., c] for c in range(img.shape[2])]
    out = [np.asarray(Image.fromarray(c.astype(np.float32), mode="F").resize((width, height), Image.BOX))
           for c in chans]
    return (out[0] if img.ndim == 2 else np.stack(out, axis=-1)).astype(np.float32)


def write_image(path: str | Path, img: np.ndarray) -> None:
    """Write float [0,1] (or uint8) RGB/gray as 8-bit PNG/JPG, creating folders."""
    import imageio.v3 as iio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if img.dtype != np.uint8:
        img = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
    iio.imwrite(path, img)
