"""Reading one image file as it is: every PIL mode with its true range, turned as its EXIF says.

``PIL.Image.convert("RGB")``, what most loaders call, reads 8-bit modes correctly but clips the
others: a 16-bit PNG's mid-grey (32768) becomes white, a float TIFF's 0.5 black. Here:

- 8-bit modes (``"RGB"``, ``"L"``, ``"P"``, ``"1"``, ``"CMYK"``, ``"YCbCr"``, ...) are converted
  by PIL as before (CMYK naively, ``R = 255 - C`` less black, without a colour profile);
- 16-bit modes (``"I;16"``, ``"I;16B"``, ``"I;16L"``, ``"I;16N"``) are divided by 65535;
- ``"I"`` (32-bit integers, how PIL opens some 16-bit files) is taken as 16-bit data: values in
  0..65535 are divided by 65535, others are refused (their range is unknown);
- ``"F"`` (32-bit floats, TIFF) must hold values in [0, 1], kept as they are; others (and NaN)
  are refused rather than rescaled, since a per-image rescaling would change the contrast;
- transparency (an alpha channel: ``"RGBA"``, ``"LA"``, ``"PA"``, ``"RGBa"``, or a transparent
  palette entry or colour) is composited over :data:`BACKGROUND`, white, as the image is shown
  on a page, rather than dropped (which would show whatever colour the transparent pixels hide);
- the EXIF orientation is applied (``PIL.ImageOps.exif_transpose``), so the image is read the
  way up a viewer shows it; ``exif=False`` reads the rows as stored, as torchvision's loader does.

A mode that cannot be read this way raises ``ValueError`` naming the mode; the caller names the
file.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

__all__ = ["BACKGROUND", "read_image"]

#: The colour transparent pixels are composited over (RGB, 0-255): white.
BACKGROUND = (255, 255, 255)

_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
_ALPHA = ("RGBA", "LA", "PA", "RGBa", "La")


def read_image(path, *, exif: bool = True) -> Image.Image:
    """The image of a file: an 8-bit ``"RGB"`` image, or a ``"F"`` grey image in [0, 1].

    Parameters
    ----------
    path : path
    exif : bool
        Apply the EXIF orientation (default) or read the rows as stored.

    Returns
    -------
    PIL.Image.Image
        ``"RGB"`` for 8-bit data; ``"F"`` (one channel, float values in [0, 1]) for 16-bit,
        32-bit integer and float data, so that no precision is lost before resizing.

    Raises
    ------
    Exception
        Whatever PIL raises for a damaged file; ``ValueError`` naming the mode for values
        outside its range or a mode that cannot be converted.
    """
    with Image.open(path) as img:
        img.load()
        if exif:
            img = ImageOps.exif_transpose(img)
        return _as_rgb(img)


def _as_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode in _SIXTEEN_BIT or mode in ("I", "I;16S", "F"):
        return _grey_float(img)
    try:
        if mode in _ALPHA or "transparency" in img.info:
            rgba = img.convert("RGBA")
            background = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
            return Image.alpha_composite(background, rgba).convert("RGB")
        return img.convert("RGB")
    except ValueError as err:  # PIL: "conversion from X to Y not supported"
        raise ValueError(f"mode {mode!r} cannot be converted to RGB ({err})") from err


def _grey_float(img: Image.Image) -> Image.Image:
    """A high-depth grey image as ``"F"`` in [0, 1], or ``ValueError`` naming its range."""
    mode = img.mode
    values = np.asarray(img).astype(np.float64)
    if values.size and not np.isfinite(values).all():
        raise ValueError(f"mode {mode!r} holds NaN or inf values")
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if mode == "F":
        if low < 0 or high > 1:
            raise ValueError(f"mode 'F' holds values {low:g}..{high:g}, outside [0, 1]; float "
                             "images are read as they are and must lie in [0, 1] (rescale the "
                             "file, e.g. to 16-bit)")
        return Image.fromarray(values.astype(np.float32))
    if low < 0 or high > 65535:
        raise ValueError(f"mode {mode!r} holds values {low:g}..{high:g}, outside 0..65535; "
                         "integer images are read as 16-bit data (store the file as 8- or "
                         "16-bit)")
    return Image.fromarray((values / 65535).astype(np.float32))
