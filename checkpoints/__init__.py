"""Model formats on disk: Hugging Face folders, Meta-format conversion, tokenizers, atomic writes."""
