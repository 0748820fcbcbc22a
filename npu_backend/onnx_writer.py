"""Build an ONNX graph whose weights stream into one external-data file as they are added.

Large initializers are appended to `<folder>/<data_name>` at 64 KiB-aligned offsets (so ONNX Runtime can
memory-map them, on Linux and Windows) and referenced from the ModelProto by (location, offset, length); the
protobuf itself stays small whatever the model size. Small constants stay inline.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper

ALIGN = 1 << 16
INLINE_LIMIT = 1 << 12     # bytes; smaller tensors stay inside model.onnx
OPSETS = (("", 23), ("com.microsoft", 1))

_TORCH_TO_ONNX = {torch.float32: TensorProto.FLOAT, torch.float16: TensorProto.FLOAT16,
                  torch.bfloat16: TensorProto.BFLOAT16, torch.int64: TensorProto.INT64,
                  torch.int32: TensorProto.INT32, torch.uint8: TensorProto.UINT8, torch.int8: TensorProto.INT8,
                  torch.bool: TensorProto.BOOL}
_NUMPY_TO_ONNX = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.int64): TensorProto.INT64,
                  np.dtype(np.int32): TensorProto.INT32, np.dtype(np.uint8): TensorProto.UINT8,
                  np.dtype(np.bool_): TensorProto.BOOL}


class GraphWriter:
    def __init__(self, folder: Path, data_name: str = "model.onnx.data") -> None:
        self.folder, self.data_name = Path(folder), data_name
        self._data = open(self.folder / data_name, "wb")
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._names: dict[str, int] = {}
        self.op_counts: dict[str, int] = {}

    def fresh(self, stem: str) -> str:
        n = self._names.get(stem, 0)
        self._names[stem] = n + 1
        return stem if n == 0 else f"{stem}_{n}"

    def weight(self, name: str, value: torch.Tensor | np.ndarray) -> str:
        """Add an initializer (torch tensors of any dtype incl. bf16, or numpy arrays); returns its name."""
        if isinstance(value, torch.Tensor):
            t = value.detach().contiguous()
            dtype, dims = _TORCH_TO_ONNX[t.dtype], list(t.shape)
            raw = t.view(torch.uint8).numpy().tobytes() if t.numel() else b""
        else:
            a = np.ascontiguousarray(value)
            dtype, dims, raw = _NUMPY_TO_ONNX[a.dtype], list(a.shape), a.tobytes()
        tensor = TensorProto(name=name, data_type=dtype, dims=dims)
        if len(raw) < INLINE_LIMIT:
            tensor.raw_data = raw
        else:
            offset = -self._data.tell() % ALIGN + self._data.tell()
            self._data.seek(offset)
            self._data.write(raw)
            tensor.data_location = TensorProto.EXTERNAL
            for key, val in (("location", self.data_name), ("offset", str(offset)), ("length", str(len(raw)))):
                tensor.external_data.add(key=key, value=val)
        self.initializers.append(tensor)
        return name

    def const(self, value, dtype=np.int64) -> str:
        return self.weight(self.fresh("const"), np.asarray(value, dtype=dtype))

    def node(self, op: str, inputs: list[str], n_out: int = 1, domain: str = "", name: str | None = None,
             **attrs) -> str | list[str]:
        stem = name or op
        outs = [self.fresh(f"{stem}/out{i}" if n_out > 1 else f"{stem}/out") for i in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=self.fresh(stem), domain=domain or None, **attrs))
        self.op_counts[op] = self.op_counts.get(op, 0) + 1
        return outs[0] if n_out == 1 else outs

    def rename_output(self, produced: str, name: str) -> str:
        """Give the value `produced` (the last node's output) the graph-level name `name`."""
        for node in reversed(self.nodes):
            for i, o in enumerate(node.output):
                if o == produced:
                    node.output[i] = name
                    return name
        raise KeyError(produced)

    def input(self, name: str, elem_type: int, shape: list) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, elem_type, shape))
        return name

    def output(self, name: str, elem_type: int, shape: list) -> None:
        self.outputs.append(helper.make_tensor_value_info(name, elem_type, shape))

    def save(self, model_name: str = "model.onnx", graph_name: str = "decoder",
             fixed_inputs: dict[str, np.ndarray] | None = None) -> Path:
        """Write the ModelProto (weights are already in the data file). `fixed_inputs`: graph inputs replaced by
        constant initializers in this copy (several model files can share one data file)."""
        if not self._data.closed:
            self._data.close()
        fixed = fixed_inputs or {}
        inputs = [i for i in self.inputs if i.name not in fixed]
        consts = [helper.make_tensor(n, _NUMPY_TO_ONNX[v.dtype], v.shape, v.flatten().tolist()) for n, v in
                  fixed.items()]
        graph = helper.make_graph(self.nodes, graph_name, inputs, self.outputs, self.initializers + consts)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in OPSETS],
                                  ir_version=10, producer_name="edgeawq")
        path = self.folder / model_name
        path.write_bytes(model.SerializeToString())
        return path
