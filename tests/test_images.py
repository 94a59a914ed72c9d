from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pneumo_exp.data.images import UnreadableImageError, decode_image


def _save(path: Path, img: Image.Image, **kw: object) -> Path:
    img.save(path, **kw)
    return path


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "1", "I;16", "CMYK"])
def test_any_mode_becomes_uint8_of_the_configured_shape(tmp_path: Path, mode: str,
                                                        channels: int) -> None:
    gray = np.tile(np.linspace(0, 255, 60, dtype=np.uint8), (45, 1))
    img = Image.fromarray(gray, "L")
    if mode == "I;16":
        img = Image.fromarray(gray.astype(np.uint16) * 257, "I;16")
    elif mode != "L":
        img = img.convert(mode)
    ext = "jpeg" if mode == "CMYK" else "png"
    arr = decode_image(_save(tmp_path / f"x.{ext}", img), 32, channels)
    assert arr.shape == (32, 32, channels) and arr.dtype == np.uint8
    if mode not in ("1", "CMYK"):
        # the left-to-right ramp survives: dark left edge, bright right edge
        assert arr[:, :4].mean() < 40 and arr[:, -4:].mean() > 200


def test_sixteen_bit_is_scaled_not_clipped(tmp_path: Path) -> None:
    img = Image.fromarray(np.full((20, 20), 32768, np.uint16), "I;16")
    arr = decode_image(_save(tmp_path / "x.png", img), 16, 1)
    assert abs(int(arr.mean()) - 127) <= 1


def test_alpha_is_dropped_not_blended(tmp_path: Path) -> None:
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[..., :3], rgba[..., 3] = 200, 0  # fully transparent, bright
    arr = decode_image(_save(tmp_path / "x.png", Image.fromarray(rgba, "RGBA")), 8, 1)
    assert arr.min() >= 195


def test_large_image_is_resized(tmp_path: Path) -> None:
    img = Image.new("L", (4000, 3000), 90)
    arr = decode_image(_save(tmp_path / "big.jpeg", img, quality=50), 64, 1)
    assert arr.shape == (64, 64, 1) and abs(int(arr.mean()) - 90) <= 2


@pytest.mark.parametrize("content", [b"", b"hello, not an image", b"\x00\x00\x00\x01Bud1"])
def test_non_images_raise(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "x.jpeg"
    path.write_bytes(content)
    with pytest.raises(UnreadableImageError, match="not an image"):
        decode_image(path, 32, 1)


def test_truncated_jpeg_raises(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = _save(tmp_path / "x.jpeg", Image.fromarray(rng.integers(0, 255, (200, 200), np.uint8)))
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(UnreadableImageError, match="truncated"):
        decode_image(path, 32, 1)


def test_very_large_image(tmp_path: Path) -> None:
    img = Image.new("L", (8000, 8000), 60)
    img.paste(200, (4000, 0, 8000, 8000))  # right half bright
    for ext in ("jpeg", "png"):
        arr = decode_image(_save(tmp_path / f"huge.{ext}", img), 64, 1)
        assert arr.shape == (64, 64, 1)
        assert abs(int(arr[:, :30].mean()) - 60) <= 3 and abs(int(arr[:, 34:].mean()) - 200) <= 3
