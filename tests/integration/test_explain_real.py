"""explain on the embedded smollm2-135m (short): the probes agree with what is known about it (REFERENCES.md)."""

import pytest

from sinklab.data import read_texts, token_sequences
from sinklab.measure.probes import explain

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("smollm2")]


def test_smollm2_noop_and_emergence(smollm2):
    """The sink's values are several times shorter than the others' in sink-heavy layers (REFERENCES.md: 3-6x);
    Gu et al. Table 1 pattern: a sink on natural and random tokens, none on one repeated token."""
    model, tok = smollm2
    seqs = token_sequences(tok, read_texts(None), 72, 1)
    d = explain(model, tok, seqs, probes="noop,emergence", progress=False).to_dict()
    noop = d["probes"]["noop"]["measured"]
    assert noop["sink_heavy_layers"] and noop["sink_value_shorter_by_in_sink_heavy_layers"] > 2.5
    assert noop["median_value_ratio_sink_heads"] < noop["median_value_ratio_other_heads"]
    zero = d["probes"]["noop"]["interventions"]
    assert zero["zero_sink"]["loss_delta"] > abs(zero["zero_middle"]["loss_delta"])
    kinds = d["probes"]["emergence"]["measured"]["kinds"]
    assert kinds["natural"]["sink_rate"] > 0.5 and kinds["random"]["sink_rate"] > 0.5
    assert kinds["repeated"]["sink_rate"] < 0.1
