"""`run_awq serve` and `run_awq chat`: OpenAI-compatible HTTP serving with continuous batching (docs/serving.md)."""
