"""Paged KV caches: the native engine's (cpu_backend/kv_cache.py) and the reference engine's
(kernels/paged_cache.py) give the logits of a contiguous cache, hold only the blocks their tokens need, free them,
and refuse to run out of blocks with a clear error."""
from __future__ import annotations

import mmap

import pytest
import torch

from edgeawq.cpu_backend import native_build
from edgeawq.cpu_backend.kv_cache import HUGE_PAGE, _pool, reserve_huge_pages
from edgeawq.errors import UserError
from edgeawq.runtime.backends import BACKENDS, EngineOptions
from edgeawq.runtime.generate import left_pad
from edgeawq.runtime.model_loader import load_model

from ..conftest import TINY, rtn_tiny

LENGTHS = [150, 97, 20, 3]


@pytest.fixture(scope="module")
def quantized(checkpoints, tmp_path_factory) -> dict:
    # mistral: a sliding window (8) shorter than a block
    return rtn_tiny(checkpoints, tmp_path_factory.mktemp("paged"), ("llama3", "mistral"))


def make(kind: str, path, **options):
    if kind == "native" and native_build.unavailable_reason() is not None:
        pytest.skip(f"native kernels cannot build here: {native_build.unavailable_reason()}")
    loaded = load_model(str(path), "fp32", "fp32")
    return BACKENDS["cpu"].make_engine(loaded, EngineOptions(engine="native" if kind == "native" else "torch",
                                                             flash_attention=kind == "flash", **options))


def prompts(lengths=LENGTHS) -> list[list[int]]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(3, TINY["vocab_size"], (n,), generator=g).tolist() for n in lengths]


def run(engine, rows: list[list[int]], steps: int, context: int) -> list[torch.Tensor]:
    """Prefill the left-padded rows (full logits), then `steps` greedy decode steps: the logits of every call."""
    ids, mask, positions = left_pad(rows, 2)
    engine.start(len(rows), context)
    out = [engine.forward(ids, positions, mask, last_only=False)]
    token, pos = out[0][:, -1].argmax(-1, keepdim=True), positions[:, -1:] + 1
    for _ in range(steps):
        mask = torch.cat([mask, torch.ones_like(token)], 1)
        out.append(engine.forward(token, pos, mask))
        token, pos = out[-1][:, -1].argmax(-1, keepdim=True), pos + 1
    return out


@pytest.mark.parametrize("family", ["llama3", "mistral"])
@pytest.mark.parametrize("kind", ["native", "flash"])
def test_paged_equals_contiguous(quantized, family, kind):
    """Blocks of 16, 32 and 64 tokens: every logit of a prefill and 20 decode steps equal to the contiguous cache
    (bit for bit: the same sums in the same order)."""
    want = run(make(kind, quantized[family], kv_block_size=0), prompts(), 20, 200)
    for block in (16, 32, 64):
        got = run(make(kind, quantized[family], kv_block_size=block), prompts(), 20, 200)
        for a, b in zip(got, want):
            assert torch.equal(a, b), (kind, block, (a - b).abs().max())


@pytest.mark.parametrize("kind", ["native", "flash"])
def test_blocks_follow_the_tokens_held_not_padding_or_context(quantized, kind):
    engine = make(kind, quantized["llama3"], kv_block_size=16)
    run(engine, prompts(), 4, 256)
    held = sum(-(-(n + 4) // 16) for n in LENGTHS)           # each row: its own tokens, rounded up to a block
    cache = engine.kv if kind == "native" else engine.cache
    assert cache.blocks_in_use == held                         # 10 + 7 + 2 + 1 = 20 of the 4 x 16 a row could hold
    engine.release_row(0)
    assert cache.blocks_in_use == held - -(-154 // 16)


def test_native_paged_pool_is_reserved_not_written(quantized):
    """The native pool is reserved (kv_cache.reserve_huge_pages), not written: memory becomes resident as blocks fill
    (the contiguous cache is zeroed)."""
    engine = make("native", quantized["llama3"], kv_block_size=32)
    run(engine, prompts([40]), 2, 256)
    assert engine.kv.resident_bytes == 2 * engine.kv.block_bytes
    contiguous = make("native", quantized["llama3"], kv_block_size=0)
    run(contiguous, prompts([40]), 2, 256)
    assert contiguous.kv.resident_bytes == 256 * engine.kv.block_bytes // 32


def vma_flags(address: int) -> list[str]:
    """The VmFlags of the mapping of this process that holds `address` (/proc/self/smaps)."""
    inside = False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                lo, hi = (int(x, 16) for x in head.split("-"))
                inside = lo <= address < hi
            elif inside and head == "VmFlags:":
                return line.split()[1:]
    raise AssertionError(f"no mapping holds {address:#x}")


@pytest.mark.skipif(not hasattr(mmap, "MADV_HUGEPAGE"), reason="no transparent huge pages on this OS")
def test_the_paged_pool_is_advised_for_huge_pages(monkeypatch):
    """Pool tensors of 2 MiB or more start on a 2 MiB boundary of a mapping advised MADV_HUGEPAGE ("hg"), hold what
    is written, and stay alive without the Python mapping object; smaller ones are plain tensors, no mapping made
    (their heap's flags are the allocator's business: another huge tensor freed there can leave "hg" on it)."""
    keys, values, key_scales, _ = _pool(2, 64, 8, 64, 128, False, "int8")           # keys, values: 4 MiB a layer
    assert keys[0].shape == (64, 8, 4, 128, 16) and values[1].shape == (64, 8, 64, 128)
    assert keys[0].dtype == values[0].dtype == torch.int8 and key_scales[0].dtype == torch.float32
    for t in keys + values:
        assert t.data_ptr() % HUGE_PAGE == 0 and "hg" in vma_flags(t.data_ptr())
    values[1].fill_(-3)
    assert values[1].sum().item() == -3 * values[1].numel()
    mappings = []
    real_mmap = mmap.mmap
    monkeypatch.setattr(mmap, "mmap", lambda *a, **k: mappings.append(a) or real_mmap(*a, **k))
    small = reserve_huge_pages(4, 4, dtype=torch.float16)
    assert small.shape == (4, 4) and small.dtype == torch.float16 and mappings == []
    assert reserve_huge_pages(2 ** 20, dtype=torch.float16).shape == (2 ** 20,) and len(mappings) == 1
    zeroed = _pool(1, 64, 8, 64, 128, True, "fp16")[0][0]                         # the contiguous cache: zeros
    assert not zeroed.any()


def test_a_released_row_takes_a_new_sequence_in_freed_blocks(quantized):
    """A pool of 4 blocks holds two rows of 30 tokens; once row 0 is released, a new 30-token sequence in row 0
    gets its blocks and the logits of a fresh engine, while row 1 keeps its own."""
    engine = make("native", quantized["llama3"], kv_block_size=16, kv_max_blocks=4)
    first, second = prompts([30, 30]), prompts([31])[0][1:]
    ids, mask, positions = left_pad(first, 2)
    engine.start(2, 64)
    engine.forward(ids, positions, mask)
    assert engine.kv.blocks_in_use == 4
    engine.release_row(0)
    assert engine.kv.blocks_in_use == 2
    new = torch.tensor([second, [2] * 30])
    only_row0 = torch.cat([mask, torch.tensor([[1] * 30, [0] * 30])], 1)
    got = engine.forward(new, torch.arange(30).expand(2, 30), only_row0, last_only=False)[0]
    fresh = make("native", quantized["llama3"], kv_block_size=16)
    fresh.start(1, 64)
    want = fresh.forward(new[:1], torch.arange(30)[None], torch.ones(1, 30, dtype=torch.long), last_only=False)[0]
    assert torch.equal(got, want) and engine.kv.blocks_in_use == 4


@pytest.mark.parametrize("kind", ["native", "flash"])
def test_out_of_blocks_is_a_user_error(quantized, kind):
    engine = make(kind, quantized["llama3"], kv_block_size=16, kv_max_blocks=5)
    with pytest.raises(UserError, match="out of blocks") as err:
        run(engine, prompts([40, 40]), 1, 64)                 # 3 + 3 blocks
    assert "--kv_max_blocks" in err.value.fix


def test_out_of_blocks_exits_2(cli, quantized):
    if native_build.unavailable_reason() is not None:
        pytest.skip("native kernels cannot build here")
    code, _, err = cli(["decode", "--model", str(quantized["llama3"]), "--engine", "native", "--kv_block_size", "16",
                        "--kv_max_blocks", "2", "--max_new_tokens", "40", "--ignore_eos", "--prompt",
                        "The hacker ethic"])
    assert code == 2 and "out of blocks" in err and "--kv_max_blocks" in err and "Traceback" not in err


@pytest.mark.parametrize("args", [["--engine", "onnx", "--kv_block_size", "32"],
                                  ["--engine", "torch", "--kv_block_size", "32"],
                                  ["--target", "tt", "--kv_max_blocks", "8"],
                                  ["--engine", "native", "--kv_block_size", "24"],
                                  ["--engine", "native", "--kv_block_size", "0", "--kv_max_blocks", "8"]])
def test_paging_flags_where_they_do_not_apply_exit_2(cli, quantized, args):
    code, _, err = cli(["decode", "--model", str(quantized["llama3"]), *args, "--prompt", "Hi"])
    assert code == 2 and "--kv_" in err and "Traceback" not in err
