"""Prefix slots and test-time registers on the embedded smollm2-135m (short): the slots initialised from the model's
own first token are exactly that token in front of the text and take the content's first-token outlier away; the
register neurons sit in one MLP and write most of the first token's largest dim."""

import pytest
import torch

from sinklab.data import read_texts
from sinklab.exploit.prefix import PrefixKV
from sinklab.exploit.prefix.evaluate import split_corpus
from sinklab.exploit.prefix.registers import find_register_neurons
from sinklab.exploit.prefix.tune import Taps
from sinklab.testing import assert_close

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("smollm2")]


def _max_abs_first_token(model, ids) -> float:
    with Taps(model, "resid_post") as taps:  # block outputs through the sites
        model(input_ids=ids, use_cache=False)
    return max(float(h[:, 0].abs().max()) for h in taps.seen)


@torch.no_grad()
def test_smollm2_prefix_is_the_token_in_front_and_takes_the_outlier(smollm2):
    model, tok = smollm2
    _, held, split = split_corpus(tok, read_texts(None), 32, 2, 48, 1)
    assert split["disjoint"]
    front = tok.convert_tokens_to_ids(["<|im_end|>"])
    prefix = PrefixKV.from_tokens(model, front)
    with prefix(model):
        got = model(input_ids=held, use_cache=False).logits
        with_prefix = _max_abs_first_token(model, held)
    want = model(input_ids=torch.cat([torch.tensor([front]), held], 1), use_cache=False).logits[:, 1:]
    assert_close(got, want, torch.float32)
    plain = _max_abs_first_token(model, held)
    assert with_prefix < 0.5 * plain  # the content's first token is no longer where the outlier goes


@torch.no_grad()
def test_smollm2_register_neurons(smollm2):
    model, tok = smollm2
    tune_ids, _, _ = split_corpus(tok, read_texts(None), 32, 3, 32, 1)
    found = find_register_neurons(model, tune_ids)
    assert found["layer_agreement"] == 1.0 and 1 <= len(found["neurons"]) <= 5
    assert sum(found["share"]) > 0.5  # a few neurons write most of the MLP's output to the outlier dim
