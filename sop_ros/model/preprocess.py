"""Camera frames to model inputs: the one preprocessing the learner and the robot's ingest node both run.

Plain numpy and OpenCV (no torch), so a robot needs nothing more to feed the policy. Training and inference
must see identical pixels: any change here changes what every deployed policy sees, so change it only
together with a retrained policy.
"""

from __future__ import annotations

import cv2
import numpy as np


def encode_jpeg_rgb(rgb: np.ndarray, quality: int) -> bytes:
    """An (H, W, 3) uint8 RGB image as JPEG bytes (BGR inside, as sensor_msgs/CompressedImage carries them)."""
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("OpenCV failed to JPEG-encode a camera frame")
    return jpeg.tobytes()


def decode_jpeg_rgb(data: bytes) -> np.ndarray:
    """A compressed frame (JPEG, as in a sensor_msgs/CompressedImage) as an (H, W, 3) uint8 RGB image.

    Raises ValueError when the bytes are not an image OpenCV can decode.
    """
    buffer = np.frombuffer(data, dtype=np.uint8)
    if buffer.size == 0:
        raise ValueError("cannot decode an image from 0 bytes")
    try:
        # IMREAD_COLOR gives 3 channels even for a grayscale JPEG. Decoding to BGR and converting (rather than
        # IMREAD_COLOR_RGB) works on the OpenCV 4.6 that Ubuntu 24.04 robots get from apt, too.
        bgr = cv2.imdecode(buffer, cv2.IMREAD_COLOR)
    except cv2.error as err:
        raise ValueError(f"cannot decode an image from {buffer.size} bytes: {err}") from None
    if bgr is None:
        head = bytes(buffer[:4]).hex()
        raise ValueError(f"cannot decode an image from {buffer.size} bytes (starting {head}): not a JPEG or damaged")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def raw_rgb(data: bytes, width: int, height: int, step: int, encoding: str) -> np.ndarray:
    """An uncompressed frame (as in a sensor_msgs/Image, rgb8 or bgr8) as an (H, W, 3) uint8 RGB image.

    Raises ValueError for another encoding or a buffer that does not hold the image.
    """
    if encoding not in ("rgb8", "bgr8"):
        raise ValueError(f"image encoding {encoding!r}: only rgb8 and bgr8 are taken")
    if width < 1 or height < 1:
        raise ValueError(f"image {width}x{height}: no pixels")
    if step < width * 3 or len(data) < step * height:
        raise ValueError(f"image {width}x{height}, step {step}: {len(data)} bytes do not fit")
    rows = np.frombuffer(data, np.uint8)[: step * height].reshape(height, step)
    image = rows[:, : width * 3].reshape(height, width, 3)
    return image[..., ::-1] if encoding == "bgr8" else image


def resize_chw(rgb: np.ndarray, size: int) -> np.ndarray:
    """An (H, W, 3) uint8 RGB image as a uint8 (3, size, size) array: the model's geometry, still in bytes.

    Resized to a square with INTER_AREA (averaging: no aliasing when shrinking); a non-square image is
    stretched, not cropped, so nothing in view is cut off. Bytes are what the robot's Observation carries
    (a quarter of float32's size); `to_unit_range` makes them model input.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got shape {rgb.shape} of {rgb.dtype}")
    if size < 1:
        raise ValueError(f"size {size!r} must be >= 1 pixel")
    if rgb.shape[:2] != (size, size):
        rgb = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(rgb.transpose(2, 0, 1))


def to_unit_range(pixels: np.ndarray) -> np.ndarray:
    """uint8 pixels as the model's float32 input with values in [0, 1] (same shape)."""
    if pixels.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got {pixels.dtype}")
    unit = pixels.astype(np.float32)
    unit /= 255.0
    return unit


def image_to_input(rgb: np.ndarray, size: int) -> np.ndarray:
    """An (H, W, 3) uint8 RGB image as the model's float32 (3, size, size) input with values in [0, 1]."""
    return to_unit_range(resize_chw(rgb, size))


def camera_frame(size: int, data: bytes, raw: tuple[str, int, int, int] | None = None) -> np.ndarray:
    """A camera message as the policy's (3, size, size) uint8 frame: a CompressedImage's JPEG bytes, or with
    `raw` (encoding, width, height, step) an Image's pixels. ValueError saying why a frame cannot be one."""
    if raw is None:
        rgb = decode_jpeg_rgb(data)
    else:
        encoding, width, height, step = raw
        rgb = raw_rgb(data, width, height, step, encoding)
    return resize_chw(rgb, size)
