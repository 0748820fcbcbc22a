"""On the trained default models, AWQ beats RTN where it matters (w3 g128) and does not lose at w4 g128."""
from __future__ import annotations

import pytest

from edgeawq.default_models import DEFAULT_MODELS
from edgeawq.runtime.engines import make_engine
from edgeawq.runtime.model_loader import load_model
from edgeawq.evaluation.perplexity import eval_windows, load_eval_text, perplexity

from ..conftest import quantize_tiny


def corpus_ppl(path) -> float:
    loaded = load_model(path, act_dtype="fp32")
    windows = eval_windows(loaded.tokenizer, load_eval_text("corpus-test")[0], 512, None, loaded.max_context)
    return perplexity(make_engine(loaded, True), windows)[0]




@pytest.mark.slow
@pytest.mark.parametrize("alias", sorted(DEFAULT_MODELS))
def test_awq_beats_rtn_at_w3_and_holds_at_w4(alias, tmp_path):
    src = DEFAULT_MODELS[alias]
    results = {}
    for bits in (3, 4):
        for mode in ("none", "run"):
            out = tmp_path / f"{bits}-{mode}"
            quantize_tiny(src, out, w_bit=bits, group_size=128, awq_mode=mode, n_samples=32, seqlen=512)
            results[(bits, mode)] = corpus_ppl(out)
    assert results[(3, "run")] < results[(3, "none")], results
    assert results[(4, "run")] <= results[(4, "none")] * 1.001, results
