"""FID: the Fréchet distance, the FID Inception (vs a torch build of it), the whole path."""

import io
import json
import os
import pathlib
from contextlib import redirect_stdout

import numpy as np
import pytest
from flax import traverse_util
from PIL import Image
from scipy import linalg

from pixnerd_jax.evaluation import fid
from pixnerd_jax.evaluation import inception

torch = pytest.importorskip("torch", reason="the converter tests build the torch network")
nn, F = torch.nn, torch.nn.functional

SIZE = 64  # test images; the network always sees 299 x 299 after the resize


# ----------------------------------------------------------------------------- torch network
# Written for this test from the torchvision InceptionV3 layout with pytorch-fid's FID
# changes; module names give the real state_dict keys of pt_inception-2015-12-05.


class Conv(nn.Module):

  def __init__(self, cin, cout, kernel, stride=1, padding=0):
    super().__init__()
    self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
    self.bn = nn.BatchNorm2d(cout, eps=0.001)

  def forward(self, x):
    return F.relu(self.bn(self.conv(x)))


def _avg(x):
  return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class BlockA(nn.Module):

  def __init__(self, cin, pool):
    super().__init__()
    self.branch1x1 = Conv(cin, 64, 1)
    self.branch5x5_1, self.branch5x5_2 = Conv(cin, 48, 1), Conv(48, 64, 5, padding=2)
    self.branch3x3dbl_1 = Conv(cin, 64, 1)
    self.branch3x3dbl_2 = Conv(64, 96, 3, padding=1)
    self.branch3x3dbl_3 = Conv(96, 96, 3, padding=1)
    self.branch_pool = Conv(cin, pool, 1)

  def forward(self, x):
    return torch.cat([
        self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)),
        self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
        self.branch_pool(_avg(x))], 1)


class BlockB(nn.Module):

  def __init__(self, cin):
    super().__init__()
    self.branch3x3 = Conv(cin, 384, 3, stride=2)
    self.branch3x3dbl_1 = Conv(cin, 64, 1)
    self.branch3x3dbl_2 = Conv(64, 96, 3, padding=1)
    self.branch3x3dbl_3 = Conv(96, 96, 3, stride=2)

  def forward(self, x):
    return torch.cat([self.branch3x3(x),
                      self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                      F.max_pool2d(x, 3, stride=2)], 1)


class BlockC(nn.Module):

  def __init__(self, cin, c7):
    super().__init__()
    self.branch1x1 = Conv(cin, 192, 1)
    self.branch7x7_1 = Conv(cin, c7, 1)
    self.branch7x7_2 = Conv(c7, c7, (1, 7), padding=(0, 3))
    self.branch7x7_3 = Conv(c7, 192, (7, 1), padding=(3, 0))
    self.branch7x7dbl_1 = Conv(cin, c7, 1)
    self.branch7x7dbl_2 = Conv(c7, c7, (7, 1), padding=(3, 0))
    self.branch7x7dbl_3 = Conv(c7, c7, (1, 7), padding=(0, 3))
    self.branch7x7dbl_4 = Conv(c7, c7, (7, 1), padding=(3, 0))
    self.branch7x7dbl_5 = Conv(c7, 192, (1, 7), padding=(0, 3))
    self.branch_pool = Conv(cin, 192, 1)

  def forward(self, x):
    b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
    bd = x
    for i in range(1, 6):
      bd = getattr(self, f"branch7x7dbl_{i}")(bd)
    return torch.cat([self.branch1x1(x), b7, bd, self.branch_pool(_avg(x))], 1)


class BlockD(nn.Module):

  def __init__(self, cin):
    super().__init__()
    self.branch3x3_1, self.branch3x3_2 = Conv(cin, 192, 1), Conv(192, 320, 3, stride=2)
    self.branch7x7x3_1 = Conv(cin, 192, 1)
    self.branch7x7x3_2 = Conv(192, 192, (1, 7), padding=(0, 3))
    self.branch7x7x3_3 = Conv(192, 192, (7, 1), padding=(3, 0))
    self.branch7x7x3_4 = Conv(192, 192, 3, stride=2)

  def forward(self, x):
    b7 = x
    for i in range(1, 5):
      b7 = getattr(self, f"branch7x7x3_{i}")(b7)
    return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7,
                      F.max_pool2d(x, 3, stride=2)], 1)


class BlockE(nn.Module):

  def __init__(self, cin, max_pool):
    super().__init__()
    self.max_pool = max_pool
    self.branch1x1 = Conv(cin, 320, 1)
    self.branch3x3_1 = Conv(cin, 384, 1)
    self.branch3x3_2a = Conv(384, 384, (1, 3), padding=(0, 1))
    self.branch3x3_2b = Conv(384, 384, (3, 1), padding=(1, 0))
    self.branch3x3dbl_1 = Conv(cin, 448, 1)
    self.branch3x3dbl_2 = Conv(448, 384, 3, padding=1)
    self.branch3x3dbl_3a = Conv(384, 384, (1, 3), padding=(0, 1))
    self.branch3x3dbl_3b = Conv(384, 384, (3, 1), padding=(1, 0))
    self.branch_pool = Conv(cin, 192, 1)

  def forward(self, x):
    b3 = self.branch3x3_1(x)
    bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
    pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg(x)
    return torch.cat([self.branch1x1(x), self.branch3x3_2a(b3), self.branch3x3_2b(b3),
                      self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd),
                      self.branch_pool(pooled)], 1)


class TorchFIDInception(nn.Module):

  def __init__(self):
    super().__init__()
    self.Conv2d_1a_3x3 = Conv(3, 32, 3, stride=2)
    self.Conv2d_2a_3x3 = Conv(32, 32, 3)
    self.Conv2d_2b_3x3 = Conv(32, 64, 3, padding=1)
    self.Conv2d_3b_1x1 = Conv(64, 80, 1)
    self.Conv2d_4a_3x3 = Conv(80, 192, 3)
    self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = (BlockA(192, 32), BlockA(256, 64),
                                                   BlockA(288, 64))
    self.Mixed_6a = BlockB(288)
    self.Mixed_6b, self.Mixed_6c = BlockC(768, 128), BlockC(768, 160)
    self.Mixed_6d, self.Mixed_6e = BlockC(768, 160), BlockC(768, 192)
    self.Mixed_7a = BlockD(768)
    self.Mixed_7b, self.Mixed_7c = BlockE(1280, False), BlockE(2048, True)
    self.fc = nn.Linear(2048, 1008)

  def forward(self, images01):
    """pytorch-fid's path: (B, 3, H, W) in [0, 1] -> pool (B, 2048), logits (B, 1008),
    and sFID's features (B, 17*17*7): Mixed_6d's 1x1 branch (after BN, ReLU), channels
    0-6, flattened height, width, channel."""
    x = 2 * F.interpolate(images01, size=(299, 299), mode="bilinear", align_corners=False) - 1
    x = F.max_pool2d(self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x))), 3, 2)
    x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), 3, 2)
    for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
      if name == "6d":
        spatial = self.Mixed_6d.branch1x1(x)[:, :7].permute(0, 2, 3, 1).flatten(1)
      x = getattr(self, f"Mixed_{name}")(x)
    pool = x.mean((2, 3))
    return pool, self.fc(pool), spatial


@pytest.fixture(scope="module")
def torch_net():
  torch.manual_seed(0)
  net = TorchFIDInception().eval()
  with torch.no_grad():
    for m in net.modules():
      if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight)
      elif isinstance(m, nn.BatchNorm2d):
        for p, (lo, hi) in ((m.weight, (0.5, 1.5)), (m.running_var, (0.5, 1.5)),
                            (m.bias, (-0.1, 0.1)), (m.running_mean, (-0.1, 0.1))):
          p.uniform_(lo, hi)
  return net


@pytest.fixture(scope="module")
def variables(torch_net):
  return inception.convert_state_dict({k: v.numpy() for k, v in torch_net.state_dict().items()})


def _images(seed, n):
  return np.random.default_rng(seed).integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)


# ----------------------------------------------------------------------------- tests


@pytest.mark.parametrize("samples", [60, 4])  # full rank, and singular (N < F)
def test_frechet_distance_matches_an_independent_scipy_computation(samples):
  rng = np.random.default_rng(0)
  a = rng.normal(size=(samples, 6))
  b = rng.normal(size=(samples + 5, 6)) @ rng.normal(size=(6, 6)) + 0.3
  mu1, s1 = a.mean(0), np.cov(a, rowvar=False)
  mu2, s2 = b.mean(0), np.cov(b, rowvar=False)
  # Tr sqrt(S1 S2) = sum sqrt(eig(S1 S2)): S1 S2 is similar to a PSD matrix.
  eig = linalg.eigvals(s1 @ s2)
  expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.sum(
      np.sqrt(eig.real.clip(min=0)))
  assert fid.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-7)
  assert fid.frechet_distance(mu1, s1, mu2, s2, method="sqrtm") == pytest.approx(
      expected, rel=1e-6)
  # From the features directly (the path for N <= F, and the stats path for N > F).
  assert fid.frechet_distance_from_features(a, mu2, s2) == pytest.approx(expected, rel=1e-7)
  # Diagonal covariances: sum (sqrt a - sqrt b)^2.
  d1, d2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])
  for method in ("eigh", "sqrtm"):
    assert fid.frechet_distance(np.zeros(3), np.diag(d1), np.ones(3), np.diag(d2),
                                method=method) == pytest.approx(3 + 1 + 1)


def test_resize_matches_torch_bilinear():
  rng = np.random.default_rng(1)
  for size_in in (32, 512, 300):
    x = rng.random((1, size_in, size_in - 7, 3), dtype=np.float32)
    ref = F.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size=(299, 299),
                        mode="bilinear", align_corners=False).permute(0, 2, 3, 1).numpy()
    # float32 index arithmetic as torch; its vectorised kernel rounds a few weights
    # differently (<= 4e-6, a thousandth of a grey level).
    np.testing.assert_allclose(inception.resize_bilinear(x), ref, atol=5e-6)


def test_converted_weights_reproduce_the_torch_network(torch_net, variables):
  images = _images(2, 4)
  out = fid.inception_features(variables, images, batch_size=4)
  pool, logits, spatial = out["pool"], out["logits"], out["spatial"]
  with torch.no_grad():
    ref_pool, ref_logits, ref_spatial = torch_net(
        torch.from_numpy(images).permute(0, 3, 1, 2) / 255.0)
  assert pool.shape == (4, 2048) and logits.shape == (4, 1008) and spatial.shape == (4, 2023)
  np.testing.assert_allclose(spatial, ref_spatial.numpy(), rtol=1e-4,
                             atol=1e-4 * np.abs(spatial).max())
  assert (spatial == 0).any() and (spatial > 0).any()  # after the ReLU, not before
  # The suite's IS input drops the classifier bias.
  np.testing.assert_allclose(out["adm_logits"],
                             ref_logits.numpy() - torch_net.fc.bias.detach().numpy(),
                             rtol=1e-4, atol=1e-4 * np.abs(logits).max())
  np.testing.assert_allclose(pool, ref_pool.numpy(), rtol=1e-4, atol=1e-4 * np.abs(pool).max())
  np.testing.assert_allclose(logits, ref_logits.numpy(), rtol=1e-4,
                             atol=1e-4 * np.abs(logits).max())


def test_converter_names_and_shapes(torch_net, variables, tmp_path):
  sd = {k: v.numpy() for k, v in torch_net.state_dict().items()}
  kernel = variables["params"]["Mixed_6b"]["branch7x7_2"]["conv"]["kernel"]
  assert kernel.shape == (1, 7, 128, 128)  # (kh, kw, in, out) from torch (out, in, kh, kw)
  np.testing.assert_array_equal(kernel, sd["Mixed_6b.branch7x7_2.conv.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(variables["batch_stats"]["Mixed_7c"]["branch_pool"]["bn"]["var"],
                                sd["Mixed_7c.branch_pool.bn.running_var"])
  with pytest.raises(inception.InceptionConversionError, match="missing"):
    inception.convert_state_dict({k: v for k, v in sd.items() if "Mixed_5b.branch1x1" not in k})
  with pytest.raises(inception.InceptionConversionError, match="Unexpected key"):
    inception.convert_state_dict(dict(sd, **{"AuxLogits.fc.weight": np.zeros((1008, 768))}))
  bad = dict(sd)
  bad["fc.weight"] = np.zeros((1000, 2048), np.float32)
  with pytest.raises(inception.InceptionConversionError, match="wrong shapes"):
    inception.convert_state_dict(bad)
  # The command: a .pth state_dict as pytorch-fid ships it -> .npz -> the same variables.
  torch.save(torch_net.state_dict(), tmp_path / "w.pth")
  with redirect_stdout(io.StringIO()):
    assert inception.main(["convert", str(tmp_path / "w.pth"), "--out", str(tmp_path / "w.npz")]) == 0
  loaded = inception.load_variables(str(tmp_path / "w.npz"))
  np.testing.assert_array_equal(loaded["params"]["fc"]["kernel"], variables["params"]["fc"]["kernel"])


def test_features_are_deterministic_and_independent_of_the_batch(variables):
  images = _images(3, 6)  # two batches of 4, the second padded
  pool, logits = fid.inception_outputs(variables, images, batch_size=4)
  again, _ = fid.inception_outputs(variables, images[::-1].copy(), batch_size=4)
  assert pool.shape == (6, 2048) and logits.shape == (6, 1008) and np.isfinite(pool).all()
  np.testing.assert_allclose(again[::-1], pool, rtol=1e-5, atol=1e-6)
  assert np.abs(pool[0] - pool[1]).max() > 1e-3 * np.abs(pool).max()


def test_random_variables_have_the_converted_structure():
  flat = lambda tree: {k: v.shape for k, v in traverse_util.flatten_dict(tree, sep="/").items()}
  assert flat(inception.random_variables(0)) == inception.variable_shapes()


def test_inception_score_on_known_distributions():
  assert fid.inception_score(np.zeros((20, 1008)), splits=2)[0] == pytest.approx(1.0)
  confident = np.full((48, 1008), -50.0)
  confident[np.arange(48), np.arange(48) % 8] = 50.0  # 8 classes, 3 times each per split
  mean, std = fid.inception_score(confident, splits=2)
  assert mean == pytest.approx(8.0, rel=1e-6) and std == pytest.approx(0.0, abs=1e-6)


def test_five_metrics_end_to_end_from_images(variables, tmp_path):
  """The command and the trainer's function: images in, FID, sFID, IS, precision, recall."""
  samples, other = _images(4, 4), _images(5, 4) // 2  # darker: a different distribution
  weights = str(tmp_path / "inception.npz")
  inception.save_variables(weights, variables)
  np.savez(tmp_path / "samples.npz", arr_0=samples)
  np.savez(tmp_path / "other.npz", arr_0=other)

  def command(samples_name, reference, *args):
    out = io.StringIO()
    json_path = tmp_path / f"{samples_name}.json"
    with redirect_stdout(out):
      assert fid.main([f"--samples={tmp_path / samples_name}", f"--reference={reference}",
                       f"--inception={weights}", "--batch_size=4", f"--json={json_path}",
                       *args]) == 0
    line = out.getvalue().strip()
    assert line.startswith("FID ") and " sFID " in line and " IS " in line, line
    return json.loads(json_path.read_text()), line

  stats = str(tmp_path / "stats.npz")
  same, _ = command("samples.npz", tmp_path / "samples.npz", f"--save_stats={stats}")
  differ, line = command("other.npz", tmp_path / "samples.npz")
  assert set(differ) == {"fid", "sfid", "inception_score", "precision", "recall",
                         "num_samples"}
  assert "Precision 0." in line and "Recall " in line and "(4 samples)" in line
  # Samples against themselves: zero distances, every point inside the other set's balls.
  assert abs(same["fid"]) < 1e-3 * differ["fid"] and abs(same["sfid"]) < 1e-3 * differ["sfid"]
  assert same["precision"] == same["recall"] == 1.0
  assert same["inception_score"] >= 1.0 and same["num_samples"] == 4
  # Statistics alone (no reference images): FID and sFID as before, no precision/recall.
  from_stats, line = command("other.npz", stats)
  assert from_stats["fid"] == pytest.approx(differ["fid"], rel=1e-6)
  assert from_stats["sfid"] == pytest.approx(differ["sfid"], rel=1e-6)
  assert "precision" not in from_stats and "Precision n/a" in line
  # The function the trainer calls, with a folder of PNGs as the reference.
  folder = tmp_path / "pngs"
  os.makedirs(folder)
  for i, image in enumerate(samples):
    Image.fromarray(image).save(folder / f"{i:03d}.png")
  reference = fid.load_reference(str(folder), variables, batch_size=4)
  result = fid.fid_from_samples(other, variables, reference, batch_size=4)
  for key in ("fid", "sfid", "inception_score", "precision", "recall"):
    assert result[key] == pytest.approx(differ[key], rel=1e-5), key
  # (mu, sigma) alone: FID and IS, as the trainer's configs with statistics only.
  features = fid.inception_features(variables, other, batch_size=4)
  only = fid.metrics_from_features(features["pool"], features["spatial"],
                                   features["adm_logits"],
                                   fid.load_reference((reference.mu, reference.sigma)))
  assert set(only) == {"fid", "inception_score", "num_samples"}
  assert only["fid"] == pytest.approx(differ["fid"], rel=1e-5)
  assert fid._default_json(str(tmp_path / "a.npz")) == str(tmp_path / "a.metrics.json")
  assert fid._default_json(str(folder) + "/") == str(folder) + ".metrics.json"


def test_fid_command_errors_name_the_flag(tmp_path, capsys):
  assert fid.main([f"--samples={tmp_path / 'x.npz'}"]) == 1
  assert "--reference, --inception missing" in capsys.readouterr().err
  (tmp_path / "bad.npz").write_bytes(b"not a zip")
  assert fid.main([f"--verify_metrics={tmp_path / 'bad.npz'}"]) == 1
  err = capsys.readouterr().err
  assert "--verify_metrics=" in err and "adm_metrics_tiny.npz" in err and "\n" not in err.strip()


def test_adm_inception_score_uses_splits_of_fixed_size():
  def one_hot(classes):
    logits = np.full((len(classes), 10), -40.0)
    logits[np.arange(len(classes)), classes] = 40.0
    return logits
  # First split of 8: 4 classes evenly (IS 4); second of 8: 2 classes (IS 2); mean 3.
  logits = one_hot(np.r_[np.arange(8) % 4, np.arange(8) % 2])
  assert fid.adm_inception_score(logits, split_size=8) == pytest.approx(3.0, rel=1e-9)
  # One split of all 16: 4 classes, unevenly (6, 6, 2, 2 of 16): exp(entropy) < 4.
  p = np.array([6, 6, 2, 2]) / 16
  assert fid.adm_inception_score(logits, split_size=5000) == pytest.approx(
      np.exp(-np.sum(p * np.log(p))), rel=1e-9)
  assert fid.adm_inception_score(np.zeros((7, 10))) == pytest.approx(1.0)


FIXTURE = (pathlib.Path(__file__).resolve().parents[2]
           / "shared/reference/fixtures/adm_metrics_tiny.npz")


def test_verify_metrics_against_the_suite_fixture(capsys):
  if not FIXTURE.exists():
    pytest.skip(f"{FIXTURE} is absent (CI provides ../shared)")
  assert fid.main([f"--verify_metrics={FIXTURE}"]) == 0
  out = capsys.readouterr().out
  assert out.strip().splitlines()[-1].startswith("OK") and "EXCEEDED" not in out
  for name in ("fid", "sfid", "inception_score", "precision", "recall"):
    assert f"\n{name} " in out


def test_verify_metrics_fails_beyond_tolerance(tmp_path, capsys):
  rng = np.random.default_rng(0)
  ref, samples = rng.random((12, 6)), rng.random((10, 6)) + 0.1
  data = {"ref_pool": ref, "sample_pool": samples, "ref_spatial": ref[:, :4],
          "sample_spatial": samples[:, :4], "sample_logits": rng.normal(size=(10, 5))}
  rows, ok = fid.verify_metrics(_write(tmp_path / "a.npz", data, fid=0, sfid=0,
                                       inception_score=1, precision=0, recall=0))
  assert not ok
  truth = {r["metric"]: r["ours"] for r in rows}
  rows, ok = fid.verify_metrics(_write(tmp_path / "b.npz", data, **truth))
  assert ok and all(r["ok"] for r in rows)
  # One sample more than the tolerance of 1/N on precision fails; within it passes.
  for shift, expected in ((1.5 / 10, 1), (0.9 / 10, 0)):
    path = _write(tmp_path / "c.npz", data, **dict(truth, precision=truth["precision"] - shift))
    assert fid.main([f"--verify_metrics={path}"]) == expected
    assert ("EXCEEDED" in capsys.readouterr().out) == bool(expected)
  with pytest.raises(ValueError, match="lacks sfid"):
    fid.verify_metrics(_write(tmp_path / "d.npz", data, fid=0))


def _write(path, data, **metrics):
  np.savez(path, **data, **metrics)
  return str(path)
