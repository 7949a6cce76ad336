"""Camera frames to model input: raw sensor_msgs/Image frames to RGB; the robot's bytes vs the learner's floats."""

import numpy as np
import pytest

from sop_ros.model.preprocess import (
    camera_frame,
    decode_jpeg_rgb,
    encode_jpeg_rgb,
    image_to_input,
    raw_rgb,
    resize_chw,
    to_unit_range,
)

TIER = "unit"  # what the tests need: conftest.TIERS


def test_raw_frames_become_rgb_whatever_their_row_padding_and_channel_order():
    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    padded = np.zeros((2, 12), dtype=np.uint8)  # step 12 > 3 pixels x 3 bytes: rows carry padding
    padded[:, :9] = rgb.reshape(2, 9)
    np.testing.assert_array_equal(raw_rgb(padded.tobytes(), 3, 2, 12, "rgb8"), rgb)
    bgr = rgb[..., ::-1].copy()
    np.testing.assert_array_equal(raw_rgb(bgr.tobytes(), 3, 2, 9, "bgr8"), rgb)
    assert image_to_input(raw_rgb(rgb.tobytes(), 3, 2, 9, "rgb8"), 4).shape == (3, 4, 4)


def test_raw_frames_that_do_not_fit_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="encoding 'mono8': only rgb8 and bgr8"):
        raw_rgb(bytes(6), 3, 2, 3, "mono8")
    with pytest.raises(ValueError, match=r"image 3x2, step 9: 17 bytes do not fit"):
        raw_rgb(bytes(17), 3, 2, 9, "rgb8")


def test_the_robot_sees_the_pixels_the_learner_trained_on():
    # The ingest node sends resized bytes and the policy node scales them; the learner scales in one go.
    rgb = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    pixels = resize_chw(rgb, 96)
    assert pixels.dtype == np.uint8 and pixels.shape == (3, 96, 96)
    np.testing.assert_array_equal(to_unit_range(pixels), image_to_input(rgb, 96))
    assert to_unit_range(np.array([0, 255], dtype=np.uint8)).tolist() == [0.0, 1.0]
    with pytest.raises(ValueError, match="expected uint8 pixels, got float32"):
        to_unit_range(np.zeros(3, dtype=np.float32))


def test_a_camera_message_becomes_the_policys_frame_or_is_refused_saying_why():
    rgb = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    jpeg = encode_jpeg_rgb(rgb, 95)
    assert np.array_equal(camera_frame(32, jpeg), resize_chw(decode_jpeg_rgb(jpeg), 32))
    bgr = rgb[..., ::-1].tobytes()
    assert np.array_equal(camera_frame(32, bgr, ("bgr8", 64, 48, 64 * 3)), resize_chw(rgb, 32))
    with pytest.raises(ValueError, match="image 0x48: no pixels"):
        camera_frame(32, bgr, ("bgr8", 0, 48, 0))
    with pytest.raises(ValueError, match="not a JPEG or damaged"):
        camera_frame(32, jpeg[:40])
