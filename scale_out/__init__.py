"""Scale-out: one quantized checkpoint run across several processes (and machines) on torch.distributed.

A run on mesh `BxM` with `--pp N` has B*M*N ranks: B data-parallel groups (each takes a contiguous share of the
batch rows), each a pipeline of N stages (consecutive layer ranges), each stage M tensor-parallel ranks (Megatron
layout, head padding and KV replication: partition.py). Global rank r = (dp * N + stage) * M + tp.

Global rank 0 drives: it runs the task (decode, perplexity, accuracy, benchmark) with a `DistributedEngine`
(driver.py) that broadcasts every engine call to the other ranks, which only serve (driver.serve). Each rank
holds only its slice of the weights, read straight from the checkpoint (shard_loader.py), and runs it with the
PyTorch reference (torch_shard.py), the native C++ kernels (native_shard.py), ONNX Runtime sessions of segment
graphs (ort_shard.py: --target npu, --engine onnx) or the tt emulation of one chip (tt_shard.py: --target tt).
launcher.py starts the ranks (or joins a torchrun world) and turns a dead or stuck rank into one error message.
"""
