"""Published numbers (../shared/REFERENCES.md) as bench rows marked ``published``, for models that cannot run here.
Keys follow the bench's metric names; the protocol of the source applies, not this one (``source`` says which)."""

from __future__ import annotations

PUBLISHED: tuple[dict, ...] = (
    *(
        {"model": m, "method": "none", "sink_rate@64": v / 100, "source": "Gu et al. 2024, Table 1 (natural text)"}
        for m, v in (("gpt2-xl", 77.00), ("mistral-7b", 97.49), ("llama2-7b", 92.47), ("llama3-8b", 99.02))
    ),
    {"model": "llama-2-13b", "method": "none", "ppl_window@65536": 5158.07, "ppl_sinks@65536": 5.40,
     "source": "StreamingLLM (Xiao et al. 2023), Table 1: cache 1024, 4 sinks + 1020 recent"},
    {"model": "gated-attention-15b-moe", "method": "none", "first_token_mass": 0.467, "max_abs": 1053, "ppl": 6.026,
     "source": "Qiu et al. 2025 (gated attention): baseline"},
    {"model": "gated-attention-15b-moe", "method": "gated", "first_token_mass": 0.048, "max_abs": 94, "ppl": 5.761,
     "source": "Qiu et al. 2025 (gated attention): with the gate"},
    {"model": "opt-125m", "method": "none", "ppl_w8a8": 21.18, "kurtosis": 1778,
     "source": "Bondarenko et al. 2023: vanilla"},
    {"model": "opt-125m", "method": "gated", "ppl_w8a8": 16.02, "kurtosis": 18.9,
     "source": "Bondarenko et al. 2023: gated attention"},
)  # fmt: skip


def published_rows() -> list[dict]:
    return [{**row, "role": "published", "published": True} for row in PUBLISHED]
