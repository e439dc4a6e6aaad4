"""SPZ version 4 (the NGSP container with zstd frames) as we write it: our reader decodes it exactly
as our version 3, and gsply, an independent reader, sees the same values."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from splatkit.errors import SplatkitError
from splatkit.export.spz import decode_spz, encode_spz, write_spz


def random_splats(n: int = 200, degree: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    k = (degree + 1) ** 2
    return {"means": torch.randn(n, 3, generator=g), "scales": torch.randn(n, 3, generator=g) - 3.0,
            "quats": torch.randn(n, 4, generator=g), "opacities": torch.randn(n, generator=g),
            "sh0": torch.randn(n, 1, 3, generator=g) * 0.3, "shN": torch.randn(n, k - 1, 3, generator=g) * 0.1}


@pytest.mark.parametrize("degree", [0, 2])
def test_spz_v4_decodes_as_v3(degree):
    s = random_splats(degree=degree)
    v3, _ = decode_spz(encode_spz(s, degree)[0])
    data = encode_spz(s, degree, version=4)[0]
    assert data[:4] == b"NGSP"
    v4, deg = decode_spz(data)
    assert deg == degree
    for k in v3:
        torch.testing.assert_close(v4[k], v3[k], rtol=0, atol=0, msg=k)
    with pytest.raises(SplatkitError, match="2, 3 or 4"):
        encode_spz(s, degree, version=5)


GSPLY = textwrap.dedent("""
    import sys, numpy as np, gsply
    g = gsply.read_spz(sys.argv[1])
    np.savez(sys.argv[2], means=g.means, scales=g.scales, quats=g.quats, opacities=g.opacities, sh0=g.sh0, shN=g.shN)
""")


def test_gsply_reads_our_spz_v4(tmp_path):
    pytest.importorskip("gsply", reason="gsply is not installed (pip install gsply)")
    s = random_splats()
    write_spz(tmp_path / "a.spz", s, 2, version=4)
    env = {**os.environ, "NUMBA_DISABLE_JIT": "1"}  # compiling takes longer than decoding 200 Gaussians
    proc = subprocess.run([sys.executable, "-c", GSPLY, str(tmp_path / "a.spz"), str(tmp_path / "g.npz")], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    g = dict(np.load(tmp_path / "g.npz"))
    ours, _ = decode_spz((tmp_path / "a.spz").read_bytes(), coordinates="rub")  # gsply keeps the file's axes
    o = {k: v.numpy() for k, v in ours.items()}
    np.testing.assert_allclose(o["means"], g["means"], atol=1e-6)
    np.testing.assert_allclose(o["scales"], g["scales"], atol=1e-6)
    np.testing.assert_allclose(o["sh0"][:, 0], g["sh0"], atol=1e-5)
    np.testing.assert_allclose(o["shN"], g["shN"], atol=1e-6)
    q = g["quats"] / np.linalg.norm(g["quats"], axis=1, keepdims=True)
    assert np.abs(np.abs((q * o["quats"]).sum(1)) - 1).max() < 1e-5
