"""Property-based tests: random and malformed configs, command lines and image files.

Whatever the input, the only exceptions are our clear ones (ConfigError; SystemExit with a message
from argparse; BadImageError from the image reader), and nothing is written outside the run
directory a test hands out. Examples are derandomized (fixed per test) so CI is deterministic.
"""
from __future__ import annotations

import io
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf
from PIL import Image

from ldm.config import ConfigError, check_config_tree, get_obj_from_str
from ldm.config.allowed_targets import ALLOWED_TARGETS
from ldm.config.loading import apply_overrides, load_experiment, load_yaml
from ldm.data.image_io import BadImageError, load_rgb
from ldm.trainer.cli import parse_args
from ldm.util import instantiate_from_config

PROPERTY = settings(derandomize=True, database=None, deadline=None, max_examples=60,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module", autouse=True)
def _imported():
    """Import every allow-listed module first: what imports write (e.g. torch's compiler cache
    folder) does not depend on the inputs under test."""
    for name in ALLOWED_TARGETS:
        get_obj_from_str(name)


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """A private working directory and temp directory; after the test both hold exactly what they
    held before, except the ``run`` directory the test may write into."""
    cwd, tmp = tmp_path / "cwd", tmp_path / "tmp"
    cwd.mkdir()
    tmp.mkdir()
    run = tmp / "run"
    run.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    monkeypatch.setenv("TMPDIR", str(tmp))

    def listing() -> set[str]:
        return {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if run not in p.parents}

    before = listing()
    yield run
    assert listing() == before, "something was written outside the run directory"


# -- configs ----------------------------------------------------------------------------------------------
_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10, 10), st.floats(allow_nan=False, width=32),
                     st.text(max_size=12))
_names = st.one_of(st.sampled_from(sorted(ALLOWED_TARGETS) + ["main.DataModuleFromConfig", "taming.x.Y"]),
                   st.sampled_from(["torch.load", "os.system", "builtins.eval", "ldm.util.instantiate_from_config",
                                    "ldm", "ldm.", ".", "a..b", "", "main.main"]),
                   st.text(max_size=30), st.integers(), st.none(), st.lists(st.text(max_size=3), max_size=2))
_tree = st.recursive(
    _scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(st.text(max_size=8), children, max_size=3),
        st.fixed_dictionaries({"target": _names}, optional={"params": st.one_of(children, st.dictionaries(
            st.text(max_size=8), children, max_size=3))}),
    ),
    max_leaves=12,
)


@PROPERTY
@given(tree=_tree)
@example(tree={"target": "pytorch_lightning.callbacks.DeviceStatsMonitor", "params": True})  # was AttributeError
def test_validator_raises_only_config_errors(sandbox, tree):
    try:
        check_config_tree({"model": tree})
    except ConfigError as exc:
        assert exc.path and str(exc)


# Targets that are safe to build with random parameters (nothing heavy, nothing that reads files).
_CHEAP = ["torch.nn.Identity", "ldm.lr_scheduler.LambdaLinearScheduler", "ldm.modules.losses.DummyLoss",
          "ldm.modules.encoders.modules.SpatialRescaler"]


@PROPERTY
@given(target=st.one_of(st.sampled_from(_CHEAP),
                        _names.filter(lambda n: not (isinstance(n, str) and n in ALLOWED_TARGETS))),
       params=st.one_of(_scalars, st.dictionaries(st.sampled_from(["n_stages", "method", "multiplier", "bias",
                                                                    "warm_up_steps", "x", "f_start", "f_min"]),
                                                  _scalars, max_size=3)))
def test_instantiate_from_config_raises_only_config_errors(sandbox, target, params):
    try:
        instantiate_from_config({"target": target, "params": params}, path="model")
    except ConfigError as exc:
        assert str(exc).startswith("model")


@PROPERTY
@given(text=st.one_of(st.text(max_size=200), st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
                      st.sampled_from(["model: !!python/object/apply:os.system ['touch pwned']\n", "- 1\n- 2\n",
                                       "model: {target: x.y}\nextra: 1\n", "model: ${oops}\n", "a: [\n",
                                       "model:\n  params: ${model}\n", "\ufeffmodel: {}\n"])),
       raw=st.binary(max_size=64))
@example(text="", raw=b"\x80")  # was UnicodeDecodeError
def test_yaml_loader_raises_only_config_errors(sandbox, text, raw):
    for i, content in enumerate((text.encode("utf-8", "surrogatepass"), raw)):
        cfg = sandbox / f"c{i}.yaml"
        cfg.write_bytes(content)
        try:
            load_yaml(cfg)
            load_experiment([cfg])
        except ConfigError as exc:
            assert str(cfg) in str(exc) or exc.path
    assert not (Path.cwd() / "pwned").exists()


_override_text = st.text(alphabet=st.sampled_from(list("model.paramsxy=[]{},:$'\"\\ 01-_#!&*|>%@`\n\t")), max_size=30)


@PROPERTY
@given(dotlist=st.lists(st.one_of(_override_text, st.text(max_size=20),
                                  st.builds(lambda k, v: f"model.{k}={v}", st.text(max_size=8), _override_text)),
                        max_size=4))
@example(dotlist=["model=@"])  # was yaml.scanner.ScannerError
@example(dotlist=["model.x=!!value"])  # was yaml.constructor.ConstructorError
def test_dotlist_overrides_raise_only_config_errors(sandbox, dotlist):
    try:
        apply_overrides(OmegaConf.create({"model": {"target": "x.y", "params": {"a": 1}}}), dotlist)
    except ConfigError as exc:
        assert str(exc)


_flags = ["-t", "--train", "-r", "--resume", "-b", "--base", "-n", "--name", "--no-test", "-d", "-s", "--seed",
          "-l", "--logdir", "--gpus", "--devices", "--max_steps", "--logger", "--dry-run", "--scale_lr",
          "--trust-config-targets", "-p", "--precision", "--num_nodes", "true", "false", "0", "x.yaml",
          "model.a=1", "model.params.b=[1,2]", "=", "a=", "--", "-", "--unknown"]


@PROPERTY
@given(argv=st.lists(st.one_of(st.sampled_from(_flags), st.text(max_size=10)), max_size=8))
def test_cli_parsing_raises_only_argparse_exits_or_config_errors(sandbox, argv, capsys):
    try:
        opt, overrides = parse_args(argv)
    except SystemExit as exc:
        assert exc.code in (0, 2)
        out = capsys.readouterr()
        assert out.err.strip() or out.out.strip()  # argparse always says why (or prints help)
        return
    assert opt.base or opt.resume
    try:
        apply_overrides(OmegaConf.create({"model": {}}), overrides)
    except ConfigError as exc:
        assert str(exc)


# -- image files ------------------------------------------------------------------------------------------
def _encoded(fmt: str, mode: str, w: int, h: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    bands = {"L": 1, "RGB": 3, "RGBA": 4, "P": 1, "1": 1, "I;16": 1, "CMYK": 4, "LA": 2}[mode]
    arr = rng.integers(0, 256, (h, w, bands), dtype=np.uint8)
    img = Image.fromarray(arr[..., 0] if bands == 1 else arr, mode=None if bands > 1 else "L")
    if mode in ("P", "1", "I;16", "CMYK", "LA") or img.mode != mode:
        img = img.convert(mode) if mode != "I;16" else Image.fromarray(arr[..., 0].astype(np.uint16) * 257)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


_FORMAT_MODES = {"PNG": ["L", "RGB", "RGBA", "P", "1", "I;16", "LA"], "JPEG": ["L", "RGB", "CMYK"],
                 "GIF": ["P", "L"], "BMP": ["RGB", "L", "1"], "TIFF": ["RGB", "L", "CMYK", "RGBA"],
                 "WEBP": ["RGB", "RGBA"], "PPM": ["RGB", "L"]}
_valid_images = st.sampled_from(sorted((f, m) for f, ms in _FORMAT_MODES.items() for m in ms)).flatmap(
    lambda fm: st.builds(_encoded, st.just(fm[0]), st.just(fm[1]), st.integers(1, 24), st.integers(1, 24),
                         st.integers(0, 3)))


def _png_header(w: int, h: int, bit_depth: int = 8, color_type: int = 2) -> bytes:
    """A PNG signature and IHDR chunk claiming ``w`` x ``h``, followed by a tiny IDAT and IEND."""
    ihdr = struct.pack(">IIBBBBB", w, h, bit_depth, color_type, 0, 0, 0)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def _jpeg_with_size(w: int, h: int) -> bytes:
    """A small JPEG whose SOF0 marker is rewritten to claim ``w`` x ``h``."""
    data = bytearray(_encoded("JPEG", "RGB", 8, 8, 0))
    i = data.index(b"\xff\xc0")
    data[i + 5:i + 9] = struct.pack(">HH", h, w)
    return bytes(data)


@st.composite
def _damaged(draw, images=_valid_images):
    data = bytearray(draw(images))
    how = draw(st.sampled_from(["truncate", "flip", "splice", "zero"]))
    if how == "truncate":
        return bytes(data[:draw(st.integers(0, max(0, len(data) - 1)))])
    if how == "zero":
        return b""
    if how == "splice":
        at = draw(st.integers(0, len(data)))
        return bytes(data[:at]) + draw(st.binary(max_size=32)) + bytes(data[at:])
    for _ in range(draw(st.integers(1, 8))):
        i = draw(st.integers(0, len(data) - 1))
        data[i] = draw(st.integers(0, 255))
    return bytes(data)


# Header sizes: small ones, and huge ones far beyond Pillow's decompression-bomb limit (sizes just
# under the limit are legal and would only make the test allocate hundreds of MB).
_sizes = st.one_of(st.tuples(st.integers(0, 48), st.integers(0, 48)),
                   st.sampled_from([(1, 2 ** 31 - 1), (2 ** 31 - 1, 1), (2 ** 31 - 1, 2 ** 31 - 1), (100000, 100000),
                                    (0, 2 ** 31 - 1), (65535, 65535), (40000, 0), (30000, 30000)]))
_image_inputs = st.one_of(
    st.binary(max_size=300),
    _damaged(),
    st.builds(lambda wh, depth, color: _png_header(*wh, depth, color), _sizes,
              st.sampled_from([1, 2, 4, 8, 16]), st.sampled_from([0, 2, 3, 4, 6, 7])),
    st.builds(lambda wh: _jpeg_with_size(min(wh[0], 65535), min(wh[1], 65535)), _sizes),
)


def _check_decoded(arr: np.ndarray, min_size: int) -> None:
    assert arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3 and min(arr.shape[:2]) >= min_size


@PROPERTY
@given(data=_image_inputs, min_size=st.sampled_from([0, 1, 8]))
@example(data=_jpeg_with_size(8, 8), min_size=8)  # JPEG draft decoding returned 4x4 < min_size
def test_image_reader_raises_only_bad_image_errors(sandbox, data, min_size):
    for source in (data, io.BytesIO(data)):
        try:
            _check_decoded(load_rgb(source, min_size=min_size, name="sample.png"), min_size)
        except BadImageError as exc:
            assert exc.path == "sample.png" and exc.reason
    path = sandbox / "file.jpg"
    path.write_bytes(data)
    try:
        _check_decoded(load_rgb(path, min_size=min_size, draft_size=4), min_size)
    except BadImageError as exc:
        assert exc.path == str(path) and exc.reason


@PROPERTY
@given(image=_valid_images)
def test_image_reader_decodes_every_valid_image(sandbox, image):
    _check_decoded(load_rgb(image, min_size=1), 1)


def test_unknown_targets_resolve_only_from_the_allow_list():
    # A sanity anchor for the generators above: the strategies do produce refused names.
    with pytest.raises(ConfigError, match="--trust-config-targets"):
        get_obj_from_str("os.system")
