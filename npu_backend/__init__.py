"""Deployment through ONNX Runtime (MatMulNBits graphs, execution-provider selection, runner).

Status: not written yet (issue 5); the `npu` target is not in the backend registry until it exists.
"""
