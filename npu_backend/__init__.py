"""Deployment through ONNX Runtime: the project's own decoder graph with `com.microsoft.MatMulNBits` for every
quantized Linear, exported as an onnxruntime-genai model folder, run on the best available execution provider.

* matmulnbits.py: codes/scales/zeros -> MatMulNBits B / scales / zero_points (docs/onnx_runtime.md).
* onnx_writer.py: nodes + initializers streamed to one external-data file (no 2 GB protobuf limit).
* graph_builder.py: the Llama-family decoder graph (grouped QKV and gate/up, RoPE, attention with KV cache).
* export_folder.py: the model folder (model.onnx, model.onnx.data, genai_config.json, tokenizer, export record)
  and its cache; stale and foreign folders are refused.
* providers.py: execution-provider preference list, availability, strict mode.
* engine.py: the runtime engine over an ONNX Runtime session (same interface as runtime/engines.py).
"""
