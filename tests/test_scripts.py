"""The sampling scripts end to end on tiny models saved as the trainer saves them: each call runs
in-process through ``main(argv)``; one subprocess checks ``--help`` through the shebang."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.test_inference import write_run

import ldm.inference as I

REPO = Path(__file__).resolve().parents[1]
FAST = ["--steps", "3", "--no-progress", "--device", "cpu"]


def script(name: str):
    spec = importlib.util.spec_from_file_location(f"script_{name}", REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("logs")
    return {kind: write_run(root, kind)[0] for kind in
            ("uncond", "class", "text", "layout", "inpainting", "superres", "semantic")}


def pngs(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.png"))


def read(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def write_png(path: Path, arr: np.ndarray) -> Path:
    Image.fromarray(arr).save(path)
    return path


def test_sample_diffusion_unconditional_bulk(runs, tmp_path):
    main = script("sample_diffusion").main
    args = ["-r", str(runs["uncond"]), "-n", "5", "--batch_size", "2", "-c", "3", "-e", "1.0", "--seed", "1",
            "--device", "cpu", "--no-progress"]
    main(args + ["-l", str(tmp_path / "a")])
    main(args + ["-l", str(tmp_path / "b")])
    imgs = sorted((tmp_path / "a" / "img").glob("*.png"))
    assert [p.name for p in imgs] == [f"{i:05d}.png" for i in range(5)]
    assert all(read(p).shape == (16, 16, 3) for p in imgs)
    assert (tmp_path / "a" / "grid-0000.png").is_file()
    npz = np.load(tmp_path / "a" / "samples_5x16x16x3.npz")
    assert npz["arr_0"].dtype == np.uint8 and npz["arr_0"].shape == (5, 16, 16, 3) and "labels" not in npz
    assert np.array_equal(npz["arr_0"][3], read(imgs[3]))
    again = np.load(tmp_path / "b" / "samples_5x16x16x3.npz")["arr_0"]
    assert np.array_equal(npz["arr_0"], again)  # same seed, same samples
    main(args[:-5] + ["--seed", "2", "--device", "cpu", "--no-progress", "-l", str(tmp_path / "c")])
    assert not np.array_equal(np.load(tmp_path / "c" / "samples_5x16x16x3.npz")["arr_0"], again)


def test_sample_diffusion_default_outdir_is_inside_the_run(runs):
    written = script("sample_diffusion").main(["-r", str(runs["uncond"]), "-n", "1", "-c", "2", "--device", "cpu",
                                               "--no-progress", "--sampler", "dpm"])
    assert all(runs["uncond"] / "samples" in p.parents for p in written)


def test_sample_diffusion_classes_with_guidance_from_safetensors(runs, tmp_path):
    config = sorted((runs["class"] / "configs").glob("*-project.yaml"))[0]
    script("sample_diffusion").main(
        ["--config", str(config), "--ckpt", str(runs["class"].parent / "class.safetensors"), "-n", "4",
         "--batch_size", "4", "--classes", "1", "3", "--scale", "2.5", "--sampler", "plms", "-c", "3",
         "--device", "cpu", "--no-progress", "-l", str(tmp_path)])
    npz = np.load(tmp_path / "samples_4x16x16x3.npz")
    assert npz["labels"].tolist() == [1, 3, 1, 3] and npz["arr_0"].shape == (4, 16, 16, 3)
    with pytest.raises(ValueError, match=r"class ids must lie in \[0, 5\)"):
        script("sample_diffusion").main(["-r", str(runs["class"]), "-n", "1", "--classes", "7", "-c", "2",
                                         "--device", "cpu", "--no-progress", "-l", str(tmp_path / "x")])


def test_txt2img_outputs_seed_and_fixed_code(runs, tmp_path):
    main = script("txt2img").main
    args = ["-r", str(runs["text"]), "--prompt", "a red circle on a blue background", "--n_samples", "2",
            "--n_iter", "2", "--fixed_code", *FAST]
    main(args + ["--outdir", str(tmp_path / "a")])
    main(args + ["--outdir", str(tmp_path / "b")])
    folder = tmp_path / "a" / "samples" / "a_red_circle_on_a_blue_background"
    samples = sorted(folder.glob("*.png"))
    assert len(samples) == 4 and all(read(p).shape == (16, 16, 3) for p in samples)
    grid = tmp_path / "a" / "grid-a_red_circle_on_a_blue_background-0000.png"
    assert grid.is_file() and read(grid).shape == (2 + 2 * 18, 2 + 2 * 18, 3)  # 2x2 with 2 px padding
    assert np.array_equal(read(samples[0]), read(samples[2]))  # --fixed_code, deterministic DDIM
    assert all(np.array_equal(read(p), read(tmp_path / "b" / p.relative_to(tmp_path / "a"))) for p in samples)


def test_txt2img_guidance_scale_one_equals_conditional_sampling(runs, tmp_path):
    prompt = "a green star on a white background"
    script("txt2img").main(["-r", str(runs["text"]), "--prompt", prompt, "--n_samples", "2", "--scale", "1",
                            "--seed", "5", "--outdir", str(tmp_path), *FAST])
    got = np.stack([read(p) for p in pngs(tmp_path / "samples")])
    model = I.load_run(runs["text"], device="cpu")
    cond, _ = I.prompt_conditioning(model, [prompt] * 2)
    expected = I.generate(model, 2, I.SamplingOptions(steps=3, progress=False), cond=cond,
                          generator=I.seed_everything(5))
    assert np.array_equal(got, I.to_uint8(expected))
    script("txt2img").main(["-r", str(runs["text"]), "--prompt", prompt, "--n_samples", "2", "--scale", "4",
                            "--seed", "5", "--outdir", str(tmp_path / "guided"), *FAST])
    assert not np.array_equal(got, np.stack([read(p) for p in pngs(tmp_path / "guided" / "samples")]))


@pytest.mark.filterwarnings("ignore:word .* is not in the vocabulary")
def test_txt2img_prompts_cannot_escape_outdir(runs, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("../../etc/passwd\n/tmp/absolute\n..\n\nred\n", encoding="utf-8")
    outdir = tmp_path / "deep" / "out"
    before = set(tmp_path.rglob("*"))
    written = script("txt2img").main(["-r", str(runs["text"]), "--from-file", str(prompts), "--n_samples", "1",
                                      "--outdir", str(outdir), "--sampler", "unipc", "--scale", "1", *FAST])
    new = set(tmp_path.rglob("*")) - before
    assert written and all(outdir.resolve() in p.resolve().parents for p in new if p.is_file())
    assert sorted(p.name for p in (outdir / "samples").iterdir()) == ["etc-passwd", "red", "sample", "tmp-absolute"]


def test_txt2img_larger_than_training_size_and_errors(runs, tmp_path):
    script("txt2img").main(["-r", str(runs["text"]), "--prompt", "a blue square on a red background",
                            "--n_samples", "1", "--H", "24", "--W", "40", "--skip_grid", "--outdir", str(tmp_path),
                            *FAST])
    (sample,) = pngs(tmp_path)
    assert read(sample).shape == (24, 40, 3)
    with pytest.raises(ValueError, match="multiple of the first stage's downsampling factor"):
        script("txt2img").main(["-r", str(runs["text"]), "--prompt", "red", "--H", "17", *FAST])
    with pytest.raises(SystemExit, match="needs a text-conditioned model"):
        script("txt2img").main(["-r", str(runs["uncond"]), "--prompt", "red", *FAST])


def test_missing_checkpoint_is_a_clear_error(runs, tmp_path):
    config = sorted((runs["text"] / "configs").glob("*-project.yaml"))[0]
    with pytest.raises(FileNotFoundError, match="checkpoint not found: .*missing.ckpt"):
        script("txt2img").main(["--config", str(config), "--ckpt", str(tmp_path / "missing.ckpt"),
                                "--prompt", "red", *FAST])
    with pytest.raises(FileNotFoundError, match="no such run directory"):
        script("sample_diffusion").main(["-r", str(tmp_path / "no_run"), "--device", "cpu"])


def test_img2img(runs, tmp_path):
    init = write_png(tmp_path / "init.png", (np.random.default_rng(0).random((16, 16, 3)) * 255).astype(np.uint8))
    main = script("img2img").main
    args = ["-r", str(runs["text"]), "--init-img", str(init), "--prompt", "a red circle", "--strength", "0.5",
            "--n_samples", "2", "--eta", "0.5", *FAST[:-2], "--device", "cpu"]
    main(args + ["--outdir", str(tmp_path / "a")])
    main(args + ["--outdir", str(tmp_path / "b")])
    a, b = pngs(tmp_path / "a" / "samples"), pngs(tmp_path / "b" / "samples")
    assert len(a) == 2 and all(np.array_equal(read(x), read(y)) for x, y in zip(a, b))
    assert (tmp_path / "a" / "grid-0000.png").is_file()
    with pytest.raises(ValueError, match="strength must lie in"):
        main(["-r", str(runs["text"]), "--init-img", str(init), "--prompt", "red", "--strength", "0", *FAST])
    script("img2img").main(["-r", str(runs["uncond"]), "--init-img", str(init), "--H", "32", "--W", "32",
                            "--outdir", str(tmp_path / "c"), *FAST])
    assert read(pngs(tmp_path / "c" / "samples")[0]).shape == (32, 32, 3)


def _pair(folder: Path, name: str, size=(16, 16), seed=0) -> tuple[Path, Path]:
    rng = np.random.default_rng(seed)
    image = write_png(folder / f"{name}.png", (rng.random((*size, 3)) * 255).astype(np.uint8))
    mask = np.zeros(size, dtype=np.uint8)
    mask[4:10, 3:12] = 255
    return image, write_png(folder / f"{name}_mask.png", mask)


@pytest.mark.parametrize("kind", ["inpainting", "uncond"])
def test_inpaint_folder_keeps_known_pixels(runs, tmp_path, kind):
    indir = tmp_path / "in"
    indir.mkdir()
    pairs = [_pair(indir, "first", seed=1), _pair(indir, "second", seed=2)]
    outdir = tmp_path / "out"
    script("inpaint").main(["-r", str(runs[kind]), "--indir", str(indir), "--outdir", str(outdir), *FAST])
    for image_path, mask_path in pairs:
        result, image = read(outdir / image_path.name), read(image_path)
        keep = read(mask_path) < 128
        assert np.array_equal(result[keep], image[keep])
        assert np.abs(result[~keep].astype(int) - image[~keep].astype(int)).mean() > 5
    assert read(outdir / "grid-0000.png").shape == (2 + 2 * 18, 2 + 3 * 18, 3)


def test_inpaint_size_mismatch_is_a_clear_error(runs, tmp_path):
    image, _ = _pair(tmp_path, "photo")
    bad_mask = write_png(tmp_path / "small_mask.png", np.zeros((8, 8), dtype=np.uint8))
    with pytest.raises(ValueError, match="small_mask.png: --mask is 8x8 but --image is 16x16"):
        script("inpaint").main(["-r", str(runs["inpainting"]), "--image", str(image), "--mask", str(bad_mask),
                                "--outdir", str(tmp_path / "o"), *FAST])


def test_superres_small_and_large_inputs(runs, tmp_path):
    small = write_png(tmp_path / "small.png", (np.random.default_rng(0).random((8, 8, 3)) * 255).astype(np.uint8))
    large = write_png(tmp_path / "large.png", (np.random.default_rng(1).random((40, 24, 3)) * 255).astype(np.uint8))
    script("superres").main(["-r", str(runs["superres"]), "--input", str(small), str(large),
                             "--outdir", str(tmp_path / "out"), *FAST])
    assert read(tmp_path / "out" / "small_x2.png").shape == (16, 16, 3)  # f = 2 for the tiny model
    assert read(tmp_path / "out" / "large_x2.png").shape == (80, 48, 3)  # sampled convolutionally, tiled decode
    assert read(tmp_path / "out" / "grid-large-0000.png").shape == (2 + 82, 2 + 2 * 50, 3)


def test_semantic2img(runs, tmp_path):
    labels = np.zeros((16, 32), dtype=np.uint8)
    labels[:, 8:20] = 2
    labels[10:, :] = 4
    seg = write_png(tmp_path / "map.png", labels)
    script("semantic2img").main(["-r", str(runs["semantic"]), "--input", str(seg), "--n_samples", "2",
                                 "--outdir", str(tmp_path / "out"), *FAST])
    samples = pngs(tmp_path / "out" / "map")
    assert len(samples) == 2 and read(samples[0]).shape == (16, 32, 3)
    assert (tmp_path / "out" / "grid-map-0000.png").is_file()
    labels[0, 0] = 9
    write_png(tmp_path / "bad.png", labels)
    with pytest.raises(ValueError, match=r"bad.png: label map values must lie in \[0, 5\)"):
        script("semantic2img").main(["-r", str(runs["semantic"]), "--input", str(tmp_path / "bad.png"), *FAST])


def test_layout2img(runs, tmp_path):
    layout = tmp_path / "boxes.json"
    layout.write_text(json.dumps([
        {"objects": [{"class": 3, "bbox": [0.1, 0.1, 0.6, 0.7]}, [5, 0.5, 0.5, 1.0, 1.0]]},
        {"objects": [[1, 0.0, 0.0, 0.4, 0.4]]},
    ]))
    script("layout2img").main(["-r", str(runs["layout"]), "--layout", str(layout), "--grid-size", "8",
                               "--n_samples", "2", "--scale", "2", "--outdir", str(tmp_path / "out"), *FAST])
    assert len(pngs(tmp_path / "out" / "boxes-0")) == 2 and len(pngs(tmp_path / "out" / "boxes-1")) == 2
    assert read(tmp_path / "out" / "grid-boxes-1-0000.png").shape == (2 + 18, 2 + 3 * 18, 3)
    model = I.load_run(runs["layout"], device="cpu")
    tokens = I.layout_tokens(I.layout_tokenizer(model, grid=8), I.read_layouts(layout)[1])
    assert tokens.tolist()[:6] == [1, 0, 3 + 8 * 3, 127, 127, 127] and len(tokens) == 14
    layout.write_text(json.dumps({"objects": [[1, 0.5, 0.5, 0.2, 0.9]]}))
    with pytest.raises(ValueError, match="0 <= x0 < x1 <= 1"):
        script("layout2img").main(["-r", str(runs["layout"]), "--layout", str(layout), *FAST])


def test_help_through_the_shebang():
    path = REPO / "scripts" / "txt2img.py"
    assert path.read_text().startswith("#!/usr/bin/env python3\n") and os.access(path, os.X_OK)
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    out = subprocess.run([str(path), "--help"], cwd="/", env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "--prompt" in out.stdout and "--precision {fp32,fp16,bf16}" in out.stdout
    for name in ("sample_diffusion", "img2img", "inpaint", "superres", "semantic2img", "layout2img"):
        with pytest.raises(SystemExit) as exit_info:
            script(name).main(["--help"])
        assert exit_info.value.code == 0
