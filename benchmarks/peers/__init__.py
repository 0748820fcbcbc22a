"""Peer engines for benchmarks/cpu_vs_peers.py: llama.cpp (Q4_0 GGUF) and onnxruntime-genai (builder int4)."""
