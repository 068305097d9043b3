"""attention_decode: paged-KV decode against the fp32 reference (flash-attention's 2x rule).

CPU: the reference and Triton (under the interpreter) on tiny shapes; bad inputs; the custom
op (opcheck, torch.compile); the C++ argument checks through the cuda wrapper with CPU views.
GPU (marked): cuda and triton against the reference on serving-sized shapes.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from millkernels.dispatch import BackendUnavailable
from millkernels.ops.attention import TABLE, attention_decode, custom_ops, decode_plan
from millkernels.ops.attention.capabilities import AttentionCall
from millkernels.ops.attention.reference import attention_decode_reference
from millkernels.testing import assert_flash_close, empty_poisoned

F16, BF16 = torch.float16, torch.bfloat16


def make_case(
    batch: int,
    heads_q: int,
    heads_kv: int,
    head_dim: int,
    block_size: int,
    lens: list[int],
    dtype: torch.dtype,
    device: str = "cpu",
    spare_blocks: int = 1,
    spare_pages: int = 3,
) -> tuple[torch.Tensor, ...]:
    """Random q and pages; each sequence's pages are a random subset of the pool, in random
    order; table entries past a sequence's last page are -1 (they must never be read)."""
    assert len(lens) == batch
    max_blocks = max(-(-n // block_size) for n in lens) + spare_blocks
    needed = sum(-(-n // block_size) for n in lens)
    num_blocks = needed + spare_pages
    q = torch.randn(batch, heads_q, head_dim).to(dtype)
    k = torch.randn(num_blocks, block_size, heads_kv, head_dim).to(dtype)
    v = torch.randn(num_blocks, block_size, heads_kv, head_dim).to(dtype)
    pages = torch.randperm(num_blocks)
    table = torch.full((batch, max_blocks), -1, dtype=torch.int32)
    used = 0
    for b, n in enumerate(lens):
        nb = -(-n // block_size)
        table[b, :nb] = pages[used : used + nb].int()
        used += nb
    seqlens = torch.tensor(lens, dtype=torch.int32)
    return tuple(t.to(device) for t in (q, k, v, table, seqlens))


@pytest.fixture
def poisoned(monkeypatch):
    """Kernel outputs and workspaces start as NaN, so an element no kernel writes shows."""
    monkeypatch.setattr(
        decode_plan, "empty", lambda shape, dtype, device: empty_poisoned(shape, dtype, device)
    )


def check_against_reference(args, out, lse, scale=None, softcap=0.0):
    ref32, lse32 = attention_decode_reference(*args, scale, softcap, out_dtype=torch.float32)
    ref_lp, _ = attention_decode_reference(*args, scale, softcap, upcast=False)
    assert out.shape == args[0].shape and out.dtype == args[0].dtype
    assert lse.shape == args[0].shape[:2] and lse.dtype == torch.float32
    assert_flash_close(out.cpu(), ref_lp.cpu(), ref32.cpu())
    torch.testing.assert_close(lse.cpu(), lse32.cpu(), atol=2e-3, rtol=1e-3)
    empty = args[4].cpu() == 0
    assert torch.equal(out.cpu()[empty], torch.zeros_like(out.cpu()[empty]))
    assert torch.isneginf(lse.cpu()[empty]).all()


# (batch, heads_q, heads_kv, head_dim, block_size, lens, dtype, softcap): a reduced
# cross-product covering block sizes 1/16/64, lengths ending mid-block, 0 and 1, MHA/GQA/MQA,
# head dims 64/80/128/256, fp16/bf16, softcap.
CASES = [
    (3, 4, 4, 64, 1, [1, 17, 0], F16, 0.0),
    (2, 8, 2, 80, 16, [37, 16], BF16, 0.0),
    (2, 4, 1, 128, 64, [113, 1], F16, 0.0),
    (1, 6, 2, 256, 16, [47], BF16, 0.0),
    (2, 4, 2, 128, 16, [0, 65], BF16, 2.0),
    (2, 2, 1, 64, 64, [129, 64], F16, 1.5),
]
CASE_IDS = [f"d{c[3]}-bs{c[4]}-h{c[1]}x{c[2]}-{str(c[6])[6:]}-cap{c[7]}" for c in CASES]


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_decode_matches_reference(case, backend, triton_device, poisoned):
    *shape, lens, dtype, softcap = case
    device = "cpu" if backend == "reference" else triton_device
    args = make_case(*shape, lens, dtype, device)
    scale = 0.3 if softcap else None
    out, lse = attention_decode(
        *args, softmax_scale=scale, softcap=softcap, return_lse=True, backend=backend
    )
    check_against_reference(args, out, lse, scale, softcap)


@pytest.mark.parametrize("splits", [1, 3, 7])
def test_triton_split_counts(splits, triton_device, poisoned):
    """The combine merges any number of splits, including splits with no token."""
    from millkernels.ops.attention import triton_decode

    args = make_case(3, 4, 2, 64, 16, [50, 3, 0], F16, triton_device)
    out, lse = triton_decode.attention_decode(*args, 0.125, 0.0, splits=splits)
    check_against_reference(args, out, lse, 0.125)


PLAN_SHAPES = [
    # batch, heads_q, heads_kv, capacity, sms
    (1, 32, 8, 4096, 132),
    (64, 32, 8, 4096, 132),
    (3, 4, 4, 17, 108),
    (2, 64, 2, 100_000, 132),
    (1, 6, 2, 1_000_000, 132),
    (512, 8, 1, 256, 8),
]


@pytest.mark.parametrize("batch, heads_q, heads_kv, capacity, sms", PLAN_SHAPES)
def test_split_plan_is_shared_and_within_limits(batch, heads_q, heads_kv, capacity, sms):
    """Triton and CUDA decode take their split counts from one plan: the same count where a
    program and a CTA cover the same query heads, always within [1, MAX_SPLITS] and with at
    least MIN_TOKENS_PER_SPLIT tokens of capacity per split."""
    from millkernels.ops.attention import cuda_decode

    group = heads_q // heads_kv
    cuda = cuda_decode.num_splits(batch, heads_q, heads_kv, capacity, sms)
    per_cta = decode_plan.heads_per_cta(group)
    assert cuda == decode_plan.num_splits(batch, heads_q, heads_kv, capacity, sms, per_cta)
    triton = decode_plan.num_splits(batch, heads_q, heads_kv, capacity, sms, group)
    if per_cta == group:  # a group of 1, 2, 4 or 8 heads: one CTA, like one Triton program
        assert cuda == triton
    for splits in (cuda, triton):
        assert 1 <= splits <= decode_plan.MAX_SPLITS
        assert splits <= -(-capacity // decode_plan.SPLIT_TOKENS)
    cpu = decode_plan.num_splits(batch, heads_q, heads_kv, capacity, None, group)
    assert 1 <= cpu <= decode_plan.CPU_SPLITS


@pytest.mark.parametrize("batch, heads_q, heads_kv, capacity, sms", PLAN_SHAPES)
def test_legacy_split_plan(monkeypatch, batch, heads_q, heads_kv, capacity, sms):
    """MILLKERNELS_DECODE_LEGACY=splits: the previous grid (capacity // MIN_TOKENS_PER_SPLIT
    floor) with every split live (split_tokens 0)."""
    monkeypatch.setenv("MILLKERNELS_DECODE_LEGACY", "splits")
    splits = decode_plan.num_splits(batch, heads_q, heads_kv, capacity, sms, 1)
    assert splits == 1 or capacity // splits >= decode_plan.MIN_TOKENS_PER_SPLIT
    assert decode_plan.split_tokens(torch.device("cpu")) == 0
    assert decode_plan.live_splits(0, 0, splits) == splits


@pytest.mark.parametrize(
    "seqlen, tokens, splits, live",
    [(0, 16, 8, 1), (1, 16, 8, 1), (16, 16, 8, 1), (17, 16, 8, 2), (2048, 256, 64, 8),
     (32768, 256, 64, 64), (100, 16, 3, 3), (5, 0, 7, 7)],
)  # fmt: skip
def test_live_splits(seqlen, tokens, splits, live):
    """Live splits: ceil(seqlen / split_tokens) within [1, splits]; 2K live tokens in a
    32K table use 8 of the grid's 64 splits."""
    assert decode_plan.live_splits(seqlen, tokens, splits) == live


def test_decode_legacy_setting(monkeypatch):
    from millkernels.ops.attention.capabilities import DECODE_LEGACY_PARTS, decode_legacy

    monkeypatch.delenv("MILLKERNELS_DECODE_LEGACY", raising=False)
    assert decode_legacy() == frozenset()
    monkeypatch.setenv("MILLKERNELS_DECODE_LEGACY", "all")
    assert decode_legacy() == frozenset(DECODE_LEGACY_PARTS)
    monkeypatch.setenv("MILLKERNELS_DECODE_LEGACY", " stages, cuda_gqa ")
    assert decode_legacy() == {"stages", "cuda_gqa"}
    monkeypatch.setenv("MILLKERNELS_DECODE_LEGACY", "splits,fast")
    with pytest.raises(ValueError, match="MILLKERNELS_DECODE_LEGACY.*'fast'"):
        decode_legacy()


def _recorded_buffers(monkeypatch):
    """Record every buffer decode_plan allocates (NaN-poisoned)."""
    made: list[torch.Tensor] = []

    def record(shape, dtype, device):
        t = empty_poisoned(shape, dtype, device)
        made.append(t)
        return t

    monkeypatch.setattr(decode_plan, "empty", record)
    return made


# (batch, heads_q, heads_kv, lens): GQA groups 1, 4 and 8; lengths 0, 1, one split's worth,
# several splits; a table with far more capacity than any live sequence.
LIVE_CASES = [
    (3, 4, 4, [0, 1, 16]),
    (3, 8, 2, [100, 17, 5]),
    (2, 8, 1, [63, 0]),
]


@pytest.mark.parametrize("batch, heads_q, heads_kv, lens", LIVE_CASES)
@pytest.mark.parametrize("legacy", ["", "all"])
def test_triton_live_splits_in_a_large_table(
    monkeypatch, triton_device, batch, heads_q, heads_kv, lens, legacy
):
    """A table of 40+ pages (640+ tokens) holding at most 100: the grid has CPU_SPLITS
    splits, each sequence uses ceil(n / 16) of them (legacy: all), and every output element
    is written (outputs and workspaces start as NaN). The legacy rules pass too."""
    from millkernels.ops.attention import triton_decode

    monkeypatch.setenv("MILLKERNELS_DECODE_LEGACY", legacy)
    made = _recorded_buffers(monkeypatch)
    args = make_case(batch, heads_q, heads_kv, 64, 16, lens, BF16, triton_device, spare_blocks=40)
    out, lse = triton_decode.attention_decode(*args, 0.125, 0.0)
    check_against_reference(args, out, lse, 0.125)
    if not legacy:  # the partials of splits past a sequence's live ones are never written
        assert len(made) == 4 and made[2].shape[2] == decode_plan.CPU_SPLITS
        po = made[2].cpu()
        for b, n in enumerate(lens):
            live = decode_plan.live_splits(n, decode_plan.CPU_SPLIT_TOKENS, po.shape[2])
            assert torch.isnan(po[b, :, live:]).all()
            if live == 1:  # written directly: no partial at all
                assert torch.isnan(po[b]).all()


def test_triton_legacy_matches_new(monkeypatch, triton_device):
    """The previous rules and the current ones agree (different split points: not bitwise)."""
    from millkernels.ops.attention import triton_decode

    args = make_case(2, 8, 2, 128, 16, [90, 33], F16, triton_device, spare_blocks=6)
    new, lse_new = triton_decode.attention_decode(*args, 0.1, 0.0)
    monkeypatch.setenv("MILLKERNELS_DECODE_LEGACY", "all")
    old, lse_old = triton_decode.attention_decode(*args, 0.1, 0.0)
    torch.testing.assert_close(new.float(), old.float(), atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(lse_new, lse_old, atol=1e-4, rtol=1e-4)


def test_triton_launcher_uses_the_plan(monkeypatch, poisoned):
    """The Triton launcher launches the plan's split count (seen in the workspace shape)."""
    from millkernels.ops.attention import triton_decode

    if not __import__("millkernels").runtime.triton_interpret():
        pytest.skip("needs the Triton interpreter")
    monkeypatch.setattr(decode_plan, "num_splits", lambda *a: 3)
    shapes = []
    real = decode_plan.empty

    def record(shape, dtype, device):
        shapes.append(tuple(shape))
        return real(shape, dtype, device)

    monkeypatch.setattr(decode_plan, "empty", record)
    args = make_case(2, 4, 2, 64, 16, [20, 7], F16)
    out, lse = triton_decode.attention_decode(*args, 0.125, 0.0)
    assert (2, 4, 3, 64) in shapes  # the partial outputs of 3 splits
    check_against_reference(args, out, lse, 0.125)


def test_reference_matches_naive_loop():
    """The reference against a per-token loop written from the issue's semantics (float64)."""
    args = make_case(2, 4, 2, 16, 3, [7, 4], torch.float64, spare_blocks=2)
    q, k, v, table, lens = args
    out, lse = attention_decode_reference(*args, 0.7, 2.5)
    for b in range(2):
        n = int(lens[b])
        keys = torch.stack([k[table[b, t // 3], t % 3] for t in range(n)])  # (n, hkv, d)
        vals = torch.stack([v[table[b, t // 3], t % 3] for t in range(n)])
        for h in range(4):
            s = keys[:, h // 2] @ q[b, h] * 0.7
            s = 2.5 * torch.tanh(s / 2.5)
            p = torch.softmax(s, 0)
            torch.testing.assert_close(out[b, h], p @ vals[:, h // 2])
            torch.testing.assert_close(
                lse[b, h].double(), torch.logsumexp(s, 0), rtol=1e-6, atol=1e-6
            )  # lse is float32


def test_default_scale_and_return_types():
    args = make_case(1, 2, 1, 64, 16, [20], BF16)
    out = attention_decode(*args, backend="reference")
    assert isinstance(out, torch.Tensor)
    ref, _ = attention_decode_reference(*args, 1 / math.sqrt(64))
    torch.testing.assert_close(out, ref)


# ---------------------------------------------------------------------------- bad inputs


def _bad(mutate):
    args = list(make_case(2, 4, 2, 64, 16, [20, 5], F16))
    kwargs: dict = {"backend": "reference"}
    mutate(args, kwargs)
    return args, kwargs


def _set(i, value):
    def f(a, kw):
        a[i] = value(a) if callable(value) else value

    return f


BAD = [
    ("q rank", _set(0, lambda a: a[0][0]), ValueError, "q: expected 3 dimensions"),
    ("k rank", _set(1, lambda a: a[1][0]), ValueError, "k_cache: expected 4 dimensions"),
    ("bt rank", _set(3, lambda a: a[3][0]), ValueError, "block_table: expected 2 dimensions"),
    ("q dtype", _set(0, lambda a: a[0].float()), TypeError, "q: expected dtype float16"),
    ("mixed", _set(2, lambda a: a[2].bfloat16()), TypeError, "v_cache: expected q's dtype"),
    ("bt dtype", _set(3, lambda a: a[3].long()), TypeError, "block_table: expected dtype int32"),
    ("lens dt", _set(4, lambda a: a[4].long()), TypeError, "cache_seqlens: expected dtype int32"),
    ("not tensor", _set(0, [1.0]), TypeError, "q: expected a torch.Tensor"),
    ("v shape", _set(2, lambda a: a[2][:, :8]), ValueError, "v_cache: expected k_cache's shape"),
    (
        "head_dim",
        lambda a, kw: a.__setitem__(slice(1, 3), [a[1][..., :32], a[2][..., :32]]),
        ValueError,
        "k_cache: expected q's head_dim",
    ),
    (
        "heads",
        _set(0, lambda a: torch.randn(2, 3, 64).half()),
        ValueError,
        "q: expected heads_q a multiple of",
    ),
    ("batch", _set(3, lambda a: a[3][:1]), ValueError, "block_table: expected q's batch 2"),
    ("lens len", _set(4, lambda a: a[4][:1]), ValueError, "cache_seqlens: expected q's batch"),
    (
        "stride",
        _set(0, lambda a: torch.randn(2, 4, 128).half()[..., ::2]),
        ValueError,
        "q: expected a unit stride in the last dimension",
    ),
    (
        "dim 264",
        lambda a, kw: a.__setitem__(slice(0, 3), make_case(2, 4, 2, 264, 16, [1, 1], F16)[:3]),
        ValueError,
        "head_dim a multiple of 8 in",
    ),
    (
        "dim 60",
        lambda a, kw: a.__setitem__(slice(0, 3), make_case(2, 4, 2, 60, 16, [1, 1], F16)[:3]),
        ValueError,
        "head_dim a multiple of 8 in",
    ),
    (
        "bt range",
        lambda a, kw: a[3].__setitem__((1, 0), 99),
        ValueError,
        r"block_table: expected page indices in \[0, num_blocks=.*block_table\[1, 0\] = 99",
    ),
    (
        "bt negative",
        lambda a, kw: a[3].__setitem__((0, 1), -1),
        ValueError,
        r"block_table\[0, 1\] = -1",
    ),
    (
        "lens capacity",
        lambda a, kw: a[4].__setitem__(0, 1000),
        ValueError,
        r"cache_seqlens: expected 0 <= .* got cache_seqlens\[0\] = 1000",
    ),
    ("lens < 0", lambda a, kw: a[4].__setitem__(1, -2), ValueError, r"cache_seqlens\[1\] = -2"),
    ("softcap", lambda a, kw: kw.update(softcap=-1.0), ValueError, "softcap: expected a finite"),
    ("scale", lambda a, kw: kw.update(softmax_scale=math.nan), ValueError, "softmax_scale"),
    ("backend", lambda a, kw: kw.update(backend="fast"), ValueError, "backend: expected 'auto'"),
]


@pytest.mark.parametrize(("mutate", "exc", "match"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_inputs(mutate, exc, match):
    args, kwargs = _bad(mutate)
    with pytest.raises(exc, match=match):
        attention_decode(*args, **kwargs)


SCALE_SOFTCAP_BAD = [
    ({"softmax_scale": v}, ValueError) for v in (-1.0, 0.0, -0.0, math.nan, math.inf, -math.inf)
] + [
    ({"softmax_scale": "0.1"}, TypeError),
    ({"softmax_scale": True}, TypeError),
    ({"softcap": -1.0}, ValueError),
    ({"softcap": math.nan}, ValueError),
    ({"softcap": math.inf}, ValueError),
    ({"softcap": None}, TypeError),
]


@pytest.mark.parametrize(("bad", "exc"), SCALE_SOFTCAP_BAD, ids=lambda b: repr(b))
def test_decode_and_attention_refuse_the_same_scale_and_softcap(bad, exc):
    """One rule for both: the same exception and message from attention and attention_decode."""
    from millkernels.ops.attention import attention

    args = make_case(2, 4, 2, 64, 16, [20, 5], F16)
    with pytest.raises(exc) as decode_err:
        attention_decode(*args, backend="reference", **bad)
    q = torch.randn(2, 3, 4, 64).half()
    k = torch.randn(2, 5, 2, 64).half()
    with pytest.raises(exc) as attention_err:
        attention(q, k, k, backend="reference", **bad)
    assert str(decode_err.value) == str(attention_err.value)
    assert str(decode_err.value).startswith(next(iter(bad)) + ": ")


def test_bad_device():
    if not torch.cuda.is_available():
        pytest.skip("needs a second device type (a CUDA GPU)")
    args = list(make_case(2, 4, 2, 64, 16, [20, 5], F16))
    args[1] = args[1].cuda()
    with pytest.raises(ValueError, match="k_cache: expected q's device"):
        attention_decode(*args)


def test_padding_entries_are_not_read():
    """-1 entries past a sequence's last page are accepted (never read)."""
    args = make_case(2, 2, 1, 64, 16, [16, 3], F16, spare_blocks=2)
    assert (args[3] == -1).any()
    attention_decode(*args, backend="reference")


def _used_rows(args) -> torch.Tensor:
    """bool (num_blocks, block_size): the cache rows some sequence reads."""
    _, k, _, table, lens = args
    used = torch.zeros(k.shape[:2], dtype=torch.bool)
    for b, n in enumerate(lens.tolist()):
        for t in range(n):
            used[table[b, t // k.shape[1]], t % k.shape[1]] = True
    return used


KERNELS = ["triton", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.native])]


def _decode_both(args, kernel, triton_device):
    """(reference's (out, lse), the kernel's (out, lse) on the CPU)."""
    ref = attention_decode(*args, return_lse=True, backend="reference")
    device = triton_device if kernel == "triton" else "cuda"
    got = attention_decode(*(t.to(device) for t in args), return_lse=True, backend=kernel)
    return ref, tuple(t.cpu() for t in got)


@pytest.mark.parametrize("kernel", KERNELS)
def test_unused_cache_rows_never_reach_the_output(kernel, triton_device):
    """NaN in every row no sequence reads (past a sequence's end in its last page, pages no
    table entry uses, page 0 that padding entries are mapped to): the reference's output is
    what it is without them, finite, and agrees with the kernel's (which never loads them)."""
    args = make_case(3, 4, 2, 64, 16, [37, 5, 0], BF16, spare_blocks=2, spare_pages=2)
    unused = ~_used_rows(args)
    assert unused.all(1).any() and (unused.any(1) & ~unused.all(1)).any()  # whole, part pages
    clean = attention_decode(*args, return_lse=True, backend="reference")
    for cache in args[1:3]:
        cache[unused] = float("nan")
    (out, lse), (t_out, t_lse) = _decode_both(args, kernel, triton_device)
    assert torch.isfinite(out).all() and torch.isfinite(t_out).all()
    assert torch.equal(out, clean[0]) and torch.equal(lse, clean[1])
    check_against_reference([a.cpu() for a in args], t_out, t_lse)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("which", [1, 2], ids=["k_cache", "v_cache"])
def test_nan_in_a_used_row_propagates(which, kernel, triton_device):
    """A NaN in a row a sequence reads makes that sequence's output NaN (for the query heads
    of that key/value head), in the reference as in the kernel; other sequences stay finite."""
    args = make_case(2, 4, 2, 64, 16, [37, 5], F16)
    _, _, _, table, _ = args
    args[which][table[0, 1], 3, 1, 7] = float("nan")  # sequence 0, token 19, kv head 1
    (out, _), (t_out, _) = _decode_both(args, kernel, triton_device)
    for o in (out, t_out):
        assert o[0, 2:].isnan().any(dim=-1).all(), "query heads 2, 3 of sequence 0"
        assert torch.isfinite(o[0, :2]).all() and torch.isfinite(o[1]).all()


# ---------------------------------------------------------------------------- dispatch


def test_decode_rules_live_in_the_table(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # judge GPU facts as on a GPU machine
    facts = AttentionCall(
        op="attention_decode", device="cuda", dtype="bfloat16", capability=(9, 0), head_dim=128
    )

    def why(backend, **changes):
        return TABLE.spec(backend).serves(replace(facts, **changes))

    assert why("reference") is None
    assert "head_dim" in why("cuda", head_dim=80)
    assert "CUDA tensors" in why("cuda", device="cpu")
    assert "sm_80" in why("cuda", capability=(7, 5))
    assert "16-byte" in why("cuda", aligned16=False)
    assert why("cuda", group=2) is None or "native extension" in why("cuda", group=2)
    assert "go to the triton backend" in why("cuda", group=4)
    assert "this call has 8" in why("cuda", group=8)
    monkeypatch.setenv("MILLKERNELS_DECODE_LEGACY", "cuda_gqa")
    assert "triton backend" not in (why("cuda", group=8) or "")
    assert "bf16 needs sm_80" in why("triton", capability=(7, 5), device="cuda")
    assert "unknown attention op" in why("triton", op="nope")


def test_misaligned_cache_is_not_offered_to_cuda():
    """A k_cache view starting 2 bytes past a 16-byte boundary: aligned16 is False in the
    facts the public function resolves the backend with."""
    from millkernels.ops.attention.capabilities import call_facts

    q, k, v, _, _ = make_case(1, 2, 1, 64, 16, [5], F16)
    flat = torch.empty(k.numel() + 1, dtype=F16)
    k_odd = flat[1:].view(k.shape)
    assert call_facts("attention_decode", q, k, v).aligned16
    assert call_facts("attention_decode", q, k, v, group=2).group == 2
    assert not call_facts("attention_decode", q, k_odd, v).aligned16


def test_named_backend_that_cannot_serve_raises():
    args = make_case(1, 2, 1, 64, 16, [5], F16)
    with pytest.raises(BackendUnavailable, match="backend .cuda. cannot serve"):
        attention_decode(*args, backend="cuda")


def test_env_override_forces_backend(monkeypatch):
    args = make_case(1, 2, 1, 64, 16, [5], F16)
    monkeypatch.setenv("MILLKERNELS_BACKEND", "attention=cuda")
    with pytest.raises(BackendUnavailable, match="forced by MILLKERNELS_BACKEND"):
        attention_decode(*args)
    monkeypatch.setenv("MILLKERNELS_BACKEND", "attention=reference")
    ref, _ = attention_decode_reference(*args)
    torch.testing.assert_close(attention_decode(*args), ref)


# ---------------------------------------------------------------------------- custom op


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_opcheck(backend, triton_device):
    device = "cpu" if backend == "reference" else triton_device
    args = make_case(2, 4, 2, 64, 16, [20, 0], BF16, device)
    torch.library.opcheck(custom_ops.attention_decode.op, (*args, 0.125, 0.0, backend))


def test_torch_compile_fullgraph():
    args = make_case(2, 4, 2, 64, 16, [20, 7], F16)

    def step(q, k, v, table, lens):
        out, lse = attention_decode(q * 2, k, v, table, lens, return_lse=True, backend="reference")
        return out.float().sum(-1) + lse

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(*args), step(*args))


# ---------------------------------------------------------------------------- native checks


def _cuda_call(**changes):
    from millkernels.ops.attention import cuda_decode

    q, k, v, table, lens = make_case(2, 4, 2, 64, 16, [20, 5], F16)
    bufs = {
        "q": q, "k_cache": k, "v_cache": v, "block_table": table, "cache_seqlens": lens,
        "out": torch.empty_like(q), "lse": torch.empty(2, 4), "o_partial": torch.empty(2, 4, 3, 64),
        "lse_partial": torch.empty(2, 4, 3), "splits": 3, "softmax_scale": 0.1, "softcap": 0.0,
    }  # fmt: skip
    bufs.update(changes)
    cuda_decode.launch(**bufs)


def _misaligned():
    t = torch.empty(2 * 4 * 64 + 1, dtype=F16)[1:].view(2, 4, 64)
    assert t.data_ptr() % 16 == 2
    return t


NATIVE_BAD = [
    ({"q": torch.empty(2, 4, 80, dtype=F16)}, "head_dim: the CUDA decode kernel supports 64"),
    ({"q": torch.empty(2, 4, 64)}, "q: expected dtype 'f16' or 'bf16', got 'f32'"),
    ({"v_cache": torch.empty(5, 16, 2, 64, dtype=BF16)}, "v_cache: expected dtype 'f16'"),
    ({"block_table": torch.zeros(2, 3, dtype=torch.int64)}, "block_table: expected dtype 'i32'"),
    ({"q": torch.empty(2, 3, 64, dtype=F16)}, "q: expected heads_q a multiple of heads_kv"),
    ({"cache_seqlens": torch.zeros(3, dtype=torch.int32)}, "cache_seqlens: expected shape"),
    ({"lse": torch.empty(2, 5)}, r"lse: expected shape \(2, 4\)"),
    ({"o_partial": torch.empty(2, 4, 2, 64)}, r"o_partial: expected shape \(2, 4, 3, 64\)"),
    ({"splits": 0}, "num_splits: expected 1 <= num_splits <= 256"),
    ({"split_tokens": -1}, "split_tokens: expected 0 <= split_tokens"),
    ({"q": _misaligned()}, "q: expected a 16-byte aligned data pointer"),
    ({"q": torch.empty(2, 4, 128, dtype=F16)[..., ::2]}, "q: expected a unit stride"),
    ({"softcap": -1.0}, "softcap: expected a finite value >= 0"),
    ({}, "q: expected an array in CUDA device memory, got device 'cpu'"),
]


@pytest.mark.native
@pytest.mark.parametrize(("changes", "match"), NATIVE_BAD, ids=[m[:24] for _, m in NATIVE_BAD])
def test_native_validation(changes, match):
    with pytest.raises(ValueError, match=match):
        _cuda_call(**changes)


@pytest.mark.native
def test_native_k_cache_rows_must_be_16_byte():
    q = torch.empty(2, 4, 64, dtype=F16)
    k = torch.empty(5, 16, 2, 72, dtype=F16)[..., :64]  # row stride 72: fine (multiple of 8)
    _cuda_call_expect_device(q, k)
    k_bad = torch.empty(5, 16, 2, 68, dtype=F16)[..., :64]  # 136-byte rows
    with pytest.raises(ValueError, match="k_cache: expected strides that are multiples of 8"):
        _cuda_call(q=q, k_cache=k_bad, v_cache=k_bad.clone())


def _cuda_call_expect_device(q, k):
    with pytest.raises(ValueError, match="CUDA device memory"):
        _cuda_call(q=q, k_cache=k, v_cache=k)


# ---------------------------------------------------------------------------- GPU


GPU_CASES = [
    (4, 32, 8, 128, 16, [4096, 1, 1000, 0], BF16, 0.0),
    (2, 16, 16, 64, 64, [777, 2049], F16, 0.0),
    (3, 8, 1, 256, 16, [300, 17, 4000], BF16, 30.0),
    (2, 12, 4, 128, 1, [129, 5], F16, 0.0),
    (2, 40, 5, 128, 32, [2000, 63], BF16, 0.0),  # group 8
    (2, 64, 2, 64, 16, [999, 1], F16, 0.0),  # group 32: four CTAs per kv head
]


@pytest.mark.gpu
@pytest.mark.parametrize("case", GPU_CASES)
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_decode_matches_reference(case, backend, poisoned, monkeypatch):
    if backend == "cuda":
        from millkernels import runtime

        if not runtime.native().built:
            pytest.skip("millkernels._C is not built")
        monkeypatch.setenv("MILLKERNELS_DECODE_LEGACY", "cuda_gqa")  # the kernel, all groups
    *shape, lens, dtype, softcap = case
    args = make_case(*shape, lens, dtype, "cuda")
    out, lse = attention_decode(*args, softcap=softcap, return_lse=True, backend=backend)
    check_against_reference(args, out, lse, None, softcap)


@pytest.mark.gpu
@pytest.mark.parametrize("splits", [1, 2, 5, 64])
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_split_counts(splits, backend, poisoned):
    from millkernels.ops.attention import cuda_decode, triton_decode

    mod = cuda_decode if backend == "cuda" else triton_decode
    if backend == "cuda":
        from millkernels import runtime

        if not runtime.native().built:
            pytest.skip("millkernels._C is not built")
    args = make_case(3, 8, 2, 128, 16, [1500, 7, 0], BF16, "cuda")
    out, lse = mod.attention_decode(*args, 0.09, 0.0, splits=splits)
    check_against_reference(args, out, lse, 0.09)


@pytest.mark.gpu
@pytest.mark.parametrize("legacy", ["", "all"])
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_live_splits_in_a_large_table(legacy, backend, poisoned, monkeypatch):
    """2K, 1 and 300 live tokens in a 32K-token table (64 grid splits, 8 / 1 / 2 live), GQA 2."""
    from millkernels.ops.attention import cuda_decode, triton_decode

    if backend == "cuda" and not __import__("millkernels").runtime.native().built:
        pytest.skip("millkernels._C is not built")
    monkeypatch.setenv("MILLKERNELS_DECODE_LEGACY", legacy)
    mod = cuda_decode if backend == "cuda" else triton_decode
    args = make_case(3, 8, 4, 128, 16, [2048, 1, 300], BF16, "cuda", spare_blocks=2048 - 128)
    out, lse = mod.attention_decode(*args, 0.09, 0.0, splits=64)
    check_against_reference(args, out, lse, 0.09)


@pytest.mark.gpu
def test_gpu_cuda_graph_capture():
    """Inside a CUDA graph the value checks are skipped and replays recompute."""
    args = make_case(2, 8, 2, 128, 16, [300, 40], BF16, "cuda")
    attention_decode(*args)  # warm up (compiles / loads kernels)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = attention_decode(*args)
    args[0].copy_(torch.randn_like(args[0]))
    graph.replay()
    torch.cuda.synchronize()
    ref, _ = attention_decode_reference(*args, None, 0.0, out_dtype=torch.float32)
    ref_lp, _ = attention_decode_reference(*args, None, 0.0, upcast=False)
    assert_flash_close(out, ref_lp, ref)


# ---------------------------------------------------------------------------- benchmark


def test_bench_suite_on_cpu(monkeypatch):
    """The attention_decode suite end to end on a tiny CPU shape: checked rows, GB/s."""
    from millkernels.bench import ceilings
    from millkernels.bench.context import BenchContext
    from millkernels.bench.runner import run_suites
    from millkernels.bench.suites import decode as bench_decode

    ceilings.clear_cache()
    monkeypatch.setattr(ceilings, "copy_nbytes", lambda device, quick: 256 << 10)
    monkeypatch.setattr(ceilings, "CPU_MATMUL_SHAPES_QUICK", ((64, 64, 64),))
    ctx = BenchContext(
        device="cpu",
        quick=True,
        rep_ms=5.0,
        warmup_ms=1.0,
        options={"attention_decode.shapes": [(2, 40, 16)]},
        log=lambda m: None,
    )
    try:
        report = run_suites(["attention_decode"], ctx)
    finally:
        ceilings.clear_cache()
    assert report.exit_code() == 0, report.failures or report.errors
    rows = {r.backend: r for r in report.rows}
    assert {"sdpa", "reference", "triton"} <= set(rows)
    work = bench_decode.decode_bytes(2, 40, 4, 2)
    for r in report.rows:
        assert r.op == "attention_decode" and r.bytes == work and r.gbps > 0
        assert r.ceiling == "copy"
    assert rows["triton"].baseline == "sdpa" and rows["triton"].config["splits"] >= 1
