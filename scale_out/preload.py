"""Imported once by the launcher's fork server, so that every spawned rank starts with these modules loaded (torch,
transformers with the model classes of every family, the loaders) instead of importing them itself: importing
them takes several CPU seconds per process, which dominated the start of a many-rank run on few cores."""
import torch  # noqa: F401
import torch.distributed  # noqa: F401
import transformers

from ..runtime import model_loader  # noqa: F401
from ..runtime.families import FAMILIES
from . import driver, rank_model, shard_loader, torch_shard  # noqa: F401

for _family in FAMILIES.values():
    getattr(transformers, _family.model_class)
    getattr(transformers, _family.model_class.replace("ForCausalLM", "Config"))
