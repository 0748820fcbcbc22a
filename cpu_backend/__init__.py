"""The cpu target (`--target cpu`): the native engine (the project's own C++ decoder, its packed weight state and
cache, its build) and the choice among native, ONNX Runtime and PyTorch engines (backend.py, registered in
runtime/backends.py). docs/native_engine.md."""
