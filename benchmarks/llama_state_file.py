"""A llama.cpp sequence state file holding D cached tokens, for llama-server's `POST /slots/0?action=restore`: how
benchmarks/long_context.py gives llama.cpp a depth of 32k on the Llama-2-7B layout without its hours-long prefill.

The file is what `llama_state_seq_save_file` writes for one sequence of a plain (non-SWA) `llama_kv_cache` in the
llama.cpp of scripts/build_llama_cpp.sh (llama-cpp-python 0.3.36 sources; LLAMA_STATE_SEQ_VERSION 3). All
integers little endian:

    u32 magic 0x67677371 ('ggsq')   u32 version 3   u32 n_tokens   i32 tokens[n_tokens]   (llama-server's plain
                                                                                           token list)
    u32 n_stream = 1   u32 cell_count = D
    D x { i32 pos = 0..D-1   u32 n_seq_id = 1   i32 seq_id = 0 }
    u32 v_trans (1 when flash attention is off: V is stored transposed)   u32 n_layer
    n_layer x { i32 k_type = 1 (GGML_TYPE_F16)   u64 k_row_bytes = 2 * width   D * k_row_bytes bytes }
    v_trans = 0: n_layer x { i32 v_type = 1   u64 v_row_bytes = 2 * width   D * v_row_bytes bytes }
    v_trans = 1: n_layer x { i32 v_type = 1   u32 v_element_bytes = 2   u32 width   width * D * 2 bytes }

with width = key-value heads x head_dim. The keys and values are zeros, written as holes (a sparse file: a 17 GB
cache takes no disk space). Time per token does not depend on the values (dense f16 products, softmax over every
cached position), as for ours, whose depth is random values (benchmarks/decode_at_depth.py). llama.cpp checks
every header field against its own cache on restore (type, row size, transposition, layer count, free cells) and
refuses the file on any mismatch."""
from __future__ import annotations

import struct
from pathlib import Path

MAGIC, VERSION, F16 = 0x67677371, 3, 1


def write_depth_state(path: Path, tokens: list[int], n_layer: int, width: int, v_trans: bool) -> int:
    """Write the state of one sequence of len(tokens) cached tokens (positions 0..D-1, zero f16 keys and values,
    `n_layer` layers of `width` = kv heads x head_dim) to `path`; -> the file's size in bytes."""
    depth = len(tokens)
    cells = b"".join(struct.pack("<iIi", pos, 1, 0) for pos in range(depth))
    with open(path, "wb") as f:
        f.write(struct.pack(f"<III{depth}i", MAGIC, VERSION, depth, *tokens))
        f.write(struct.pack("<II", 1, depth) + cells)
        f.write(struct.pack("<II", int(v_trans), n_layer))
        for _ in range(n_layer):                                      # keys: D rows of width f16 per layer
            f.write(struct.pack("<iQ", F16, 2 * width))
            f.seek(depth * 2 * width, 1)
        for _ in range(n_layer):                                      # values: rows, or width columns of D
            f.write(struct.pack("<iII", F16, 2, width) if v_trans else struct.pack("<iQ", F16, 2 * width))
            f.seek(depth * 2 * width, 1)
        f.truncate()                                                  # the last layer's hole, up to the end
        return f.tell()
