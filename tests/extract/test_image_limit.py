"""Images above the pixel limit are refused before they are decoded (a small file can hold a huge image);
--max-image-pixels raises the limit, on extract and predict."""

import pytest
from PIL import Image
from support.tiny_run import cli, tiny_run, write_folder_dataset

from cmm_cache.extract.encode import DEFAULT_MAX_IMAGE_PIXELS, ImageTooLarge, load_image


def _big_png(path, w, h):
    Image.new("RGB", (w, h), (200, 10, 10)).save(path)  # one colour: a few KB on disk
    return path


def test_the_default_limit_is_documented_and_applied(tmp_path):
    assert DEFAULT_MAX_IMAGE_PIXELS == 8192 * 8192
    f = _big_png(tmp_path / "big.png", 3000, 2000)
    assert load_image(str(f)).size == (3000, 2000)  # 6 Mpx: fine by default
    with pytest.raises(ImageTooLarge, match=r"3000 × 2000 = 6\.0 Mpx, above the limit of 1\.0 Mpx"):
        load_image(str(f), max_pixels=1_000_000)
    assert f.stat().st_size < 100_000


def test_above_pils_own_refusal_the_message_is_ours(tmp_path):
    f = _big_png(tmp_path / "huge.png", 9000, 9000)  # 81 Mpx > 67 Mpx
    with pytest.raises(ImageTooLarge, match="--max-image-pixels"):
        load_image(str(f))


def test_extract_reports_a_too_large_image_and_the_flag_raises_the_limit(tmp_path):
    data = write_folder_dataset(tmp_path / "photos", per_class=6)
    _big_png(data / "red" / "zz-big.png", 1200, 1000)
    cd = tmp_path / "cache"
    r = cli(["extract", "--dataset", data, "--backbone", "tiny", "--cache-dir", cd, "--max-image-pixels", "1000000",
             "--shots", "1"], ok=False)  # fmt: skip
    text = " ".join(r.output.split())
    assert r.exit_code == 2 and "zz-big.png" in "".join(r.output.split()) and "above the limit" in text
    assert "Traceback" not in r.output
    cli(["extract", "--dataset", data, "--backbone", "tiny", "--cache-dir", cd, "--max-image-pixels", "2000000",
         "--shots", "1"])  # fmt: skip


def test_predict_reports_a_too_large_image_and_the_flag_raises_the_limit(tmp_path_factory, tmp_path):
    t = tiny_run(tmp_path_factory)
    big = _big_png(tmp_path / "big.png", 1200, 1000)
    r = cli(["predict", "--run", t.run, big, "--max-image-pixels", "1000000"], ok=False)
    assert r.exit_code == 2 and "above the limit" in " ".join(r.output.split())
    cli(["predict", "--run", t.run, big, "--max-image-pixels", "2000000"])
