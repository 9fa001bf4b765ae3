"""FID: the Fréchet distance, the FID Inception (vs a torch build of it), the whole path."""

import io
import json
import os
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
    """pytorch-fid's path: (B, 3, H, W) in [0, 1] -> pool (B, 2048), logits (B, 1008)."""
    x = 2 * F.interpolate(images01, size=(299, 299), mode="bilinear", align_corners=False) - 1
    x = F.max_pool2d(self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x))), 3, 2)
    x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), 3, 2)
    for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
      x = getattr(self, f"Mixed_{name}")(x)
    pool = x.mean((2, 3))
    return pool, self.fc(pool)


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
  pool, logits = fid.inception_outputs(variables, images, batch_size=4)
  with torch.no_grad():
    ref_pool, ref_logits = torch_net(torch.from_numpy(images).permute(0, 3, 1, 2) / 255.0)
  assert pool.shape == (4, 2048) and logits.shape == (4, 1008)
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


def test_fid_command_and_fid_from_samples(variables, tmp_path):
  samples, other = _images(4, 4), _images(5, 4) // 2  # darker: a different distribution
  weights = str(tmp_path / "inception.npz")
  inception.save_variables(weights, variables)
  np.savez(tmp_path / "samples.npz", arr_0=samples)
  np.savez(tmp_path / "other.npz", arr_0=other)

  def command(*args):
    out = io.StringIO()
    with redirect_stdout(out):
      assert fid.main(list(args) + [f"--inception={weights}", "--batch_size=4"]) == 0
    return json.loads(out.getvalue())

  stats = str(tmp_path / "stats.npz")
  same = command(f"--samples={tmp_path / 'samples.npz'}", f"--reference={tmp_path / 'samples.npz'}",
                 f"--save_stats={stats}")
  differ = command(f"--samples={tmp_path / 'other.npz'}", f"--reference={tmp_path / 'samples.npz'}")
  from_stats = command(f"--samples={tmp_path / 'other.npz'}", f"--reference={stats}")
  assert same["num_samples"] == 4 and same["inception_score"] >= 1.0
  assert abs(same["fid"]) < 1e-3 * differ["fid"]
  assert from_stats["fid"] == pytest.approx(differ["fid"], rel=1e-6)
  # The function the trainer calls: arrays in, the same numbers out.
  with np.load(stats) as data:
    result = fid.fid_from_samples(other, variables, (data["mu"], data["sigma"]), batch_size=4)
  assert result["fid"] == pytest.approx(differ["fid"], rel=1e-6)
  # A folder of PNGs is a valid reference too.
  folder = tmp_path / "pngs"
  os.makedirs(folder)
  for i, image in enumerate(samples):
    Image.fromarray(image).save(folder / f"{i:03d}.png")
  from_folder = command(f"--samples={tmp_path / 'other.npz'}", f"--reference={folder}")
  assert from_folder["fid"] == pytest.approx(differ["fid"], rel=1e-6)
