"""The built-in ops' references against independent computations, and op loading."""

from __future__ import annotations

import hashlib
import textwrap

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpufeed.errors import ConfigError, OpLoadError, UnknownOp
from gpufeed.ops import (
    Dense,
    Echo,
    OpTable,
    Sha256,
    VectorAdd,
    load_op,
)


def rows(datas: list[bytes], width: int) -> tuple[np.ndarray, np.ndarray]:
    payloads = np.zeros((len(datas), width), dtype=np.uint8)
    for i, d in enumerate(datas):
        payloads[i, : len(d)] = np.frombuffer(d, np.uint8)
    return payloads, np.array([len(d) for d in datas], dtype=np.int64)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.binary(min_size=0, max_size=300), min_size=1, max_size=30))
def test_sha256_reference_equals_hashlib(datas: list[bytes]) -> None:
    payloads, lens = rows(datas, 304)
    for digests, _ in (Sha256().reference(payloads, lens), Sha256().cpu(payloads, lens)):
        assert [bytes(d) for d in digests] == [hashlib.sha256(d).digest() for d in datas]


def test_sha256_padding_boundaries() -> None:
    # 55/56 and 63/64 bytes are where the length field spills into another block
    datas = [b"a" * n for n in (0, 1, 55, 56, 63, 64, 119, 120, 240)]
    digests, lens = Sha256().reference(*rows(datas, 240))
    assert [bytes(d) for d in digests] == [hashlib.sha256(d).digest() for d in datas]
    assert set(lens.tolist()) == {32}


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 64), st.integers(1, 16), st.integers(1, 40), st.integers(0, 2**32 - 1))
def test_dense_reference_matches_float64(in_dim, out_dim, n, seed) -> None:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((out_dim, in_dim)).astype(np.float32)
    b = rng.standard_normal(out_dim).astype(np.float32)
    x = rng.standard_normal((n, in_dim)).astype(np.float32)
    payloads, lens = rows([r.tobytes() for r in x], 4 * in_dim + 12)
    out, out_lens = Dense(w, b).reference(payloads, lens)
    want = np.maximum(x.astype(np.float64) @ w.astype(np.float64).T + b, 0)
    got = np.ascontiguousarray(out[:, : 4 * out_dim]).view(np.float32)
    assert np.allclose(got, want, rtol=1e-4, atol=1e-4 * np.sqrt(in_dim))
    assert (out_lens == 4 * out_dim).all()


def test_vector_add_handles_different_lengths_in_one_batch() -> None:
    vecs = [np.arange(k * 2, dtype="<f4") for k in (0, 1, 3, 6)]
    out, out_lens = VectorAdd().reference(*rows([v.tobytes() for v in vecs], 48))
    for v, o, n in zip(vecs, out, out_lens, strict=True):
        k = len(v) // 2
        assert n == 4 * k
        assert np.array_equal(o[:n].view("<f4"), v[:k] + v[k:])


def test_echo_returns_each_payload() -> None:
    out, lens = Echo().reference(*rows([b"", b"xyz"], 48))
    assert bytes(out[1, : lens[1]]) == b"xyz" and lens[0] == 0


def test_dense_model_round_trips_through_npz(tmp_path) -> None:
    w, b = np.eye(3, dtype=np.float32) * 2, np.array([0, -10, 1], np.float32)
    np.savez(tmp_path / "m.npz", W=w, b=b)
    op = load_op("dense", dense_model=str(tmp_path / "m.npz"))
    out, _ = op.reference(*rows([np.array([1, 2, 3], "<f4").tobytes()], 12))
    assert out[0, :12].view("<f4").tolist() == [2.0, 0.0, 7.0]


def test_a_bad_dense_model_is_a_config_error(tmp_path) -> None:
    np.savez(tmp_path / "bad.npz", W=np.ones((2, 3)), b=np.ones(5))
    with pytest.raises(ConfigError, match=r"W must be \(out_dim, in_dim\)"):
        Dense.from_npz(tmp_path / "bad.npz")
    with pytest.raises(ConfigError, match="cannot load dense model"):
        Dense.from_npz(tmp_path / "missing.npz")


def test_default_dense_model_is_deterministic() -> None:
    a, b = Dense(), Dense()
    assert np.array_equal(a.w, b.w) and np.array_equal(a.b, b.b)


USER_OP = textwrap.dedent(
    """
    import numpy as np
    from gpufeed.ops import Echo

    class Reverse(Echo):
        name = "reverse"

        def reference(self, payloads, lens):
            out = np.zeros_like(payloads)
            for i, n in enumerate(lens):
                out[i, :n] = payloads[i, :n][::-1]
            return out, lens.copy()

    reverse = Reverse()
    not_an_op = 42
    """
)


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_ops.py").write_text(USER_OP)
    dist = tmp_path / "my_ops-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-ops\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[gpufeed.ops]\nreverse = my_ops:Reverse\nbroken = my_ops:not_an_op\n"
        "missing = my_ops_gone:x\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_user_op_by_import_path_and_by_entry_point(user_module) -> None:
    for spec in ("my_ops:reverse", "my_ops:Reverse", "reverse"):
        op = load_op(spec)
        out, lens = op.reference(*rows([b"abc"], 48))
        assert bytes(out[0, : lens[0]]) == b"cba", spec


@pytest.mark.parametrize(
    ("spec", "error", "message"),
    [
        ("no_such_module:op", OpLoadError, "cannot import 'no_such_module'"),
        ("my_ops:nothing", OpLoadError, "has no 'nothing'"),
        ("my_ops:not_an_op", OpLoadError, "is a int, not a gpufeed.ops.Op"),
        ("my_ops:", OpLoadError, "must look like package.module:attribute"),
        ("broken", OpLoadError, "entry point 'broken'"),
        ("missing", OpLoadError, "failed to load"),
        ("nonsense", UnknownOp, "known ops: dense, echo, sha256, vector_add"),
    ],
)
def test_bad_op_names_say_what_is_wrong(user_module, spec, error, message) -> None:
    with pytest.raises(error, match=message):
        load_op(spec)


def test_the_worker_op_must_fit_the_slot() -> None:
    with pytest.raises(ConfigError, match="more than the 16-byte payload area"):
        OpTable.for_worker("sha256", 16)
