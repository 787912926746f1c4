"""Medical image files: DICOM (pydicom) and NIfTI (nibabel), read as the image task reads
any image.

A DICOM file's stored values become modality values (Hounsfield units for CT) through its
rescale slope and intercept, then a window (centre, width) maps them onto [0, 1] by the
standard's linear VOI function (PS3.3 C.11.2.1.2): the file's own window, a named preset
(``lung``, ``bone``, ``brain``, ...), ``C,W`` numbers, or ``minmax`` (the image's own range).
MONOCHROME1 (white = low) is inverted so that bright always means a high value. The result
stays float (a PIL ``F`` image, values 0-255) through resizing and cropping, so a 12- or
16-bit image is not cut to 8 bits before the network's input.

Multi-frame DICOM files and 3-D NIfTI volumes are read as slices: one item per frame,
written ``path#frame=K`` (K from 0), so a folder or CSV naming the file trains on every
slice. Compressed transfer syntaxes decode through pydicom's plugins (RLE and, through
Pillow, JPEG baseline and JPEG 2000); one whose decoder is missing raises a DataError naming
the package to install.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

DICOM_EXTENSIONS = (".dcm", ".dicom")
NIFTI_EXTENSIONS = (".nii", ".nii.gz")
MEDICAL_EXTENSIONS = DICOM_EXTENSIONS + NIFTI_EXTENSIONS

# Window presets (centre, width) in Hounsfield units, as radiology viewers name them.
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0),
    "soft_tissue": (50.0, 400.0),
    "abdomen": (40.0, 400.0),
    "liver": (30.0, 150.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
    "subdural": (75.0, 215.0),
    "stroke": (40.0, 40.0),
}
WINDOWS = ("file", "minmax", *WINDOW_PRESETS)

# The packages that decode each compressed transfer syntax pydicom cannot decode alone.
_DECODERS = {
    "JPEG Lossless": "pylibjpeg + pylibjpeg-libjpeg (or python-gdcm)",
    "JPEG-LS": "pylibjpeg + pylibjpeg-libjpeg (or python-gdcm)",
    "JPEG Extended": "pylibjpeg + pylibjpeg-libjpeg (or python-gdcm)",
    "JPEG 2000": "pylibjpeg + pylibjpeg-openjpeg (or python-gdcm)",
    "High-Throughput JPEG 2000": "pylibjpeg + pylibjpeg-openjpeg",
    "JPEG XL": "pylibjpeg + pylibjpeg-libjxl",
    "Deflate": "(a zlib-enabled Python)",
}
_FRAME = re.compile(r"^(.*)#frame=(\d+)$")


class MedicalError(ValueError):
    """A medical file that cannot be read; the message names the file and the fix."""


@dataclass(frozen=True)
class Window:
    """How modality values become [0, 1]: ``file`` (the file's own VOI window, else the
    image's range), ``minmax``, a preset name, or explicit ``centre``/``width``."""

    name: str = "file"
    centre: float | None = None
    width: float | None = None
    stack: bool = False  # 2.5-D: a volume's slice with its neighbours as three channels

    @classmethod
    def parse(cls, spec: str | None) -> Window:
        text = str(spec or "").strip().lower()
        if text.endswith("+stack"):  # FitConfig.pixel_window's mark of --slices stack
            return replace(cls.parse(text.removesuffix("+stack")), stack=True)
        if text in ("", "file"):
            return cls("file")
        if text == "minmax":
            return cls("minmax")
        if text in WINDOW_PRESETS:
            return cls(text, *WINDOW_PRESETS[text])
        parts = text.split(",")
        try:
            centre, width = (float(p) for p in parts)
        except ValueError:
            raise MedicalError(
                f"window={spec!r}: write a preset ({', '.join(WINDOWS)}) or 'centre,width' "
                "in the image's units (e.g. -600,1500)"
            ) from None
        if width < 1:
            raise MedicalError(f"window={spec!r}: the width must be at least 1")
        return cls(text, centre, width)


def is_medical(item) -> bool:
    """Whether ``item`` (a path, maybe ``path#frame=K``) names a DICOM or NIfTI file."""
    if not isinstance(item, (str, Path)):
        return False
    name = str(split_item(item)[0]).lower()
    return name.endswith(MEDICAL_EXTENSIONS)


def split_item(item) -> tuple[str, int | None]:
    """``path#frame=K`` -> (path, K); a plain path -> (path, None)."""
    m = _FRAME.match(str(item))
    return (m.group(1), int(m.group(2))) if m else (str(item), None)


def item_path(item) -> str:
    """The file an item reads (its slice suffix dropped)."""
    return split_item(item)[0]


def _is_nifti(path: str) -> bool:
    return path.lower().endswith(NIFTI_EXTENSIONS)


def _pydicom():
    try:
        import pydicom
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise MedicalError("reading DICOM needs pydicom: pip install 'headstart[medical]'") from exc
    return pydicom


def _nibabel():
    try:
        import nibabel
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise MedicalError("reading NIfTI needs nibabel: pip install 'headstart[medical]'") from exc
    return nibabel


def n_slices(path: str) -> int:
    """Frames of a DICOM file (1 unless multi-frame), slices of a NIfTI volume (its third
    axis; 1 for a 2-D image); from the header only."""
    if _is_nifti(path):
        shape = _nibabel().load(path).shape
        return int(shape[2]) if len(shape) >= 3 else 1
    ds = _read_header(path)
    return int(ds.get("NumberOfFrames", 1) or 1)


def expand_slices(paths: list[str]) -> tuple[list[str], list[int]]:
    """Each multi-frame DICOM / 3-D NIfTI path as one ``path#frame=K`` item per slice;
    (items, index of the path each item came from)."""
    items, origin = [], []
    for i, p in enumerate(paths):
        n = n_slices(p) if is_medical(p) and split_item(p)[1] is None else 1
        if n == 1:
            items.append(p)
            origin.append(i)
        else:
            items += [f"{p}#frame={k}" for k in range(n)]
            origin += [i] * n
    return items, origin


def _read_header(path: str):
    pydicom = _pydicom()
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except (pydicom.errors.InvalidDicomError, OSError, ValueError, EOFError) as exc:
        raise MedicalError(f"{path}: not a readable DICOM file ({exc})") from exc


def _decode_error(path: str, ds, exc: Exception) -> MedicalError:
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    name = getattr(syntax, "name", str(syntax))
    need = next((pkg for key, pkg in _DECODERS.items() if key.lower() in name.lower()), None)
    hint = (
        f"install {need} to decode it"
        if need
        else "install pylibjpeg with its plugins, or python-gdcm"
    )
    lines = str(exc).strip().splitlines()
    why = lines[-1].strip() if lines else type(exc).__name__
    return MedicalError(
        f"{path}: cannot decode its pixel data, compressed as {name} ({why}); "
        f"{hint}, or convert the file to an uncompressed transfer syntax"
    )


def read_dicom(path, frame: int | None = None) -> tuple[np.ndarray, dict]:
    """Modality values of one DICOM image (float32 H x W, or H x W x 3 for colour) and what
    windowing needs: ``window`` (centre, width) from the file or None, ``monochrome1``,
    ``colour``. ``frame``: the frame of a multi-frame file (default: the first). ``path``
    may be a file object (an upload)."""
    pydicom = _pydicom()
    if not isinstance(path, (str, Path)):
        src, path = path, "the upload"
    else:
        src = path
    try:
        ds = pydicom.dcmread(src)
    except (pydicom.errors.InvalidDicomError, OSError, ValueError, EOFError) as exc:
        raise MedicalError(f"{path}: not a readable DICOM file ({exc})") from exc
    if "PixelData" not in ds and "FloatPixelData" not in ds:
        raise MedicalError(
            f"{path}: a DICOM file without an image (SOP class "
            f"{getattr(ds.get('SOPClassUID'), 'name', '?')}); leave it out of the image data"
        )
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    k = 0 if frame is None else frame
    if not 0 <= k < frames:
        raise MedicalError(f"{path}: frame {k} asked, the file has {frames}")
    try:
        from pydicom.pixels import pixel_array

        arr = pixel_array(ds, index=k if frames > 1 else None)
    except Exception as exc:  # noqa: BLE001 - pydicom's decoders raise many kinds
        raise _decode_error(path, ds, exc) from exc
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    colour = arr.ndim == 3
    if colour:
        if photometric.startswith("YBR"):
            from pydicom.pixels import convert_color_space

            arr = convert_color_space(arr, photometric, "RGB")
        bits = int(ds.get("BitsStored", 8) or 8)
        return arr.astype(np.float32) / float(2**bits - 1), {"colour": True}
    values = arr.astype(np.float64)
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    values = values * slope + intercept
    window = None
    centre, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if centre is not None and width is not None:
        c = centre[0] if isinstance(centre, pydicom.multival.MultiValue) else centre
        w = width[0] if isinstance(width, pydicom.multival.MultiValue) else width
        window = (float(c), float(w))
    return values.astype(np.float32), {
        "window": window,
        "monochrome1": photometric == "MONOCHROME1",
        "colour": False,
    }


def read_nifti(path: str, frame: int | None = None) -> tuple[np.ndarray, dict]:
    """One axial slice (third axis) of a NIfTI volume, float32 H x W (scaled by the file's
    ``scl_slope``/``scl_inter``, as nibabel applies them)."""
    try:
        img = _nibabel().load(path)
        data = img.dataobj
        shape = img.shape
    except Exception as exc:  # noqa: BLE001 - nibabel raises many kinds on a bad file
        raise MedicalError(f"{path}: not a readable NIfTI file ({exc})") from exc
    if len(shape) == 2:
        arr = np.asarray(data, dtype=np.float32)
    else:
        k = 0 if frame is None else frame
        if not 0 <= k < shape[2]:
            raise MedicalError(f"{path}: slice {k} asked, the volume has {shape[2]}")
        arr = np.asarray(data[:, :, k, ...], dtype=np.float32)
        while arr.ndim > 2:  # a 4-D series: its first volume
            arr = arr[..., 0]
    # NIfTI stores x (left-right) first: transpose so rows are the image's rows
    return np.ascontiguousarray(arr.T[::-1]), {
        "window": None,
        "monochrome1": False,
        "colour": False,
    }


def apply_window(values: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """DICOM's linear VOI function (PS3.3 C.11.2.1.2) onto [0, 1]: below ``c - 0.5 -
    (w - 1) / 2`` is 0, above ``c - 0.5 + (w - 1) / 2`` is 1, linear between."""
    c, w = window
    if w <= 1:  # a width-1 window is a threshold at c - 0.5
        return (values > c - 0.5).astype(np.float32)
    out = ((values.astype(np.float64) - (c - 0.5)) / (w - 1.0)) + 0.5
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _minmax(values: np.ndarray) -> np.ndarray:
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return np.zeros_like(values, dtype=np.float32)
    return ((values - lo) / (hi - lo)).astype(np.float32)


def is_dicom_bytes(data: bytes) -> bool:
    """Whether ``data`` starts like a DICOM Part 10 file (``DICM`` after the preamble)."""
    return len(data) >= 132 and data[128:132] == b"DICM"


def read_unit(item, window: Window | str | None = None) -> np.ndarray:
    """A DICOM / NIfTI item (or DICOM bytes) as float32 in [0, 1] (H x W grey, or H x W x 3
    colour), windowed as ``window`` says, MONOCHROME1 inverted."""
    import io

    win = window if isinstance(window, Window) else Window.parse(window)
    if isinstance(item, (bytes, bytearray, memoryview)):
        values, info = read_dicom(io.BytesIO(bytes(item)))
    else:
        path, frame = split_item(item)
        if win.stack and frame is not None:  # 2.5-D: slices K-1, K, K+1 as channels
            last = n_slices(path) - 1
            near = (max(frame - 1, 0), frame, min(frame + 1, last))
            single = replace(win, stack=False)
            return np.stack([read_unit(f"{path}#frame={k}", single) for k in near], axis=-1)
        values, info = read_nifti(path, frame) if _is_nifti(path) else read_dicom(path, frame)
    if info["colour"]:
        return np.clip(values, 0.0, 1.0)
    if win.centre is not None and win.width is not None:
        unit = apply_window(values, (win.centre, win.width))
    elif win.name == "file" and info.get("window"):
        unit = apply_window(values, info["window"])
    else:
        unit = _minmax(values)
    if info.get("monochrome1"):
        unit = 1.0 - unit
    if win.stack:  # a 2-D image among stacked slices: its one slice on all three channels
        return np.repeat(unit[..., None], 3, axis=-1)
    return unit


def load_medical(item, window: Window | str | None = None, high_depth: bool = True):
    """A DICOM / NIfTI item as a PIL image: grey as mode ``F`` (float32, 0-255, not rounded)
    when ``high_depth``, else 8-bit RGB."""
    from PIL import Image

    unit = read_unit(item, window)
    if unit.ndim == 3 or not high_depth:
        u8 = (unit * 255.0 + 0.5).astype(np.uint8)
        return Image.fromarray(u8).convert("RGB")
    return Image.fromarray((unit * 255.0).astype(np.float32), mode="F")


def check_medical(item) -> str | None:
    """None if the item decodes (header and pixels), else the reason."""
    try:
        read_unit(item)
    except MedicalError as exc:
        return str(exc)
    return None


def medical_size(item) -> tuple[int, int]:
    """(width, height) of a DICOM / NIfTI item from its header."""
    path, _ = split_item(item)
    if _is_nifti(path):
        shape = _nibabel().load(path).shape
        return int(shape[0]), int(shape[1])  # transposed on reading: rows = second axis
    ds = _read_header(path)
    return int(ds.Columns), int(ds.Rows)


def write_dicom(
    path: str | Path,
    pixels: np.ndarray,
    *,
    patient_id: str = "anonymous",
    study_uid: str | None = None,
    slope: float = 1.0,
    intercept: float = 0.0,
    window: tuple[float, float] | None = None,
    photometric: str = "MONOCHROME2",
    modality: str = "OT",
) -> Path:
    """Write a grey ``uint16`` / ``int16`` H x W array as a DICOM Part 10 file (Secondary
    Capture, explicit VR little endian, 16 bits stored), atomically: test sets, and images
    converted for a model that reads DICOM. ``slope``/``intercept``: the rescale to
    modality values; ``window``: (centre, width) stored as the file's VOI window."""
    import os
    import tempfile

    pydicom = _pydicom()
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    arr = np.asarray(pixels)
    if arr.ndim != 2 or arr.dtype not in (np.uint16, np.int16):
        raise MedicalError(f"write_dicom: a 2-D uint16 or int16 array, got {arr.dtype} {arr.shape}")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = str(patient_id)
    ds.PatientName = str(patient_id)
    ds.Modality = modality
    ds.RescaleSlope = f"{slope:g}"
    ds.RescaleIntercept = f"{intercept:g}"
    if window is not None:
        ds.WindowCenter = f"{window[0]:g}"
        ds.WindowWidth = f"{window[1]:g}"
    ds.set_pixel_data(arr, photometric_interpretation=photometric, bits_stored=16)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        ds.save_as(tmp, enforce_file_format=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
