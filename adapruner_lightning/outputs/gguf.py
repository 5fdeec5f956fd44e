"""GGUF export: a pruned model as one file that llama.cpp (and everything built on it) runs.

* A uniform plan is written as the family's own llama.cpp architecture: ``llama`` (Llama, Mistral), ``qwen2``,
  ``qwen3``.
* A non-uniform plan is written as llama.cpp's ``deci`` architecture (``src/models/deci.cpp``, written for
  NVIDIA's Nemotron-NAS models), whose loader reads ``head_count``, ``head_count_kv`` and ``feed_forward_length``
  as per-layer arrays and takes optional ``o_proj``/``down_proj`` (and q/k/v) biases. A uniform plan with FLAP
  bias compensation on a family whose own architecture has no ``o_proj`` bias (``qwen2``) goes there too.
* What neither can express is refused by :func:`gguf_layout` before a byte is written: families whose blocks
  ``deci`` lacks (Qwen3's q/k norms, Gemma's extra norms and scaled embeddings, Phi-3's fused projections)
  unless the plan is uniform and their own architecture is written here, rope scalings other than none,
  ``linear`` and ``llama3``, tokenizers other than byte-level BPE, and layers ``deci`` computes differently
  (attention kept but every MLP channel removed: ``deci`` then skips the whole layer; a last layer without MLP;
  the bias of a removed block).
* Whole removed blocks (the allocation stage's ``block_removal``) are ``deci``'s own: a layer with 0 heads (and
  0 KV heads) skips attention and its norm, a layer with ``n_ff`` 0 and no heads is skipped whole; no tensor of
  a removed block is written.

The file is streamed: every tensor's name, shape and type go into the header first, then each tensor is
converted and written on its own, so peak memory is the model plus one tensor. The write is atomic (a
temporary sibling renamed over ``out``). ``outtype``: ``f32``, ``f16``, ``bf16`` (2-D weights; norms and biases
stay f32, as llama.cpp's converter keeps them) or ``q8_0`` (2-D weights whose rows are a multiple of 32; other
tensors fall back to f16, and the count is returned).

llama.cpp applies rotary embeddings to adjacent pairs in its ``llama``/``deci`` graphs (``NORM`` rope) where
Hugging Face rotates halves; q/k rows (and their biases) are permuted per head for those architectures so the
two compute the same function. ``qwen2``/``qwen3`` use the halves layout (``NEOX``) and are written as stored.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from adapruner_lightning.core.architectures import ArchitectureSpec, get_architecture, head_layout, registered_specs
from adapruner_lightning.core.groups import layer_structures
from adapruner_lightning.data.text import atomic_path, uses_bos
from adapruner_lightning import __version__
from adapruner_lightning.errors import ConfigError
from adapruner_lightning.outputs.guard import GGUF_MARKER

#: the ``--outtype`` choices
OUTTYPES = ("f32", "f16", "bf16", "q8_0")


#: llama.cpp's ``tokenizer.ggml.pre`` names, keyed by the tokenizer.json pre-tokenizer they reproduce:
#: the Split regex (or "bytelevel" for GPT-2's built-in one, "digits+bytelevel" for SmolLM's)
PRE_TOKENIZERS: dict[str, str] = {
    "bytelevel": "gpt-2",
    "digits+bytelevel": "smollm",
    # Llama-3 (llama.cpp's LLAMA3 pre-tokenizer; the regex of Meta-Llama-3's tokenizer.json)
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+": "llama-bpe",
    # Qwen2/2.5/3 (llama.cpp's QWEN2; single digits)
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+": "qwen2",
}


@dataclass(frozen=True)
class GGUFLayout:
    """How a pruned model is written: llama.cpp architecture, q/k permutation, why, and the per-layer
    (query heads, kv heads, MLP channels) read off the modules once."""

    arch: str
    permute_qk: bool
    reason: str
    widths: tuple[tuple[int, int, int], ...] = ()


@dataclass
class GGUFResult:
    """What :func:`export_gguf` wrote."""

    path: Path
    layout: GGUFLayout
    outtype: str
    tensors: int
    fallbacks: list[str] = field(default_factory=list)  # q8_0 tensors written as f16 (rows not a multiple of 32)
    bytes: int = 0


def _check_layers(structures: list[Any]) -> None:
    """Refuse layers that ``deci`` would compute differently from the model: it skips the whole rest of a layer
    with ``n_ff`` 0 (attention output, down_proj bias and, in the last layer, the selection of the output rows) and
    a head-less layer's attention (o_proj bias included)."""
    for s in structures:
        refusal = _layer_refusal(s, last=s.index == len(structures) - 1)
        if refusal:
            problem, hint = refusal
            raise ConfigError("GGUF export", f"layer {s.index} {problem}", "a layer llama.cpp's deci computes as "
                              "transformers does", hint=f"{hint}; use load_pruned for this plan")


def _layer_refusal(s: Any, *, last: bool) -> tuple[str, str] | None:
    """(what is wrong, why deci differs) for one layer, or None when deci computes it as the model does."""
    if s.intermediate == 0 and s.num_heads > 0:
        return (f"keeps {s.num_heads} heads and no MLP channel", "deci treats a layer without MLP as a no-op and "
                "would drop its attention; keep an MLP channel wherever attention is kept (block_removal does)")
    if s.intermediate == 0 and last:
        return ("is the last layer and keeps no MLP channel", "deci selects the output rows in the last layer's "
                "MLP path and would return the wrong rows; keep the last layer's MLP")
    if s.intermediate == 0 and getattr(s.down, "bias", None) is not None:
        return ("has no MLP channel but a down_proj bias", "deci skips a layer without MLP, bias included")
    if s.num_heads == 0 and getattr(s.o, "bias", None) is not None:
        return ("has no head but an o_proj bias", "deci skips a head-less layer's attention, bias included")
    if s.num_heads == 0 and s.index == 0:
        return ("keeps no head", "llama.cpp reads the head size (key_length) only when layer 0 keeps a head and "
                "would expect every layer's q/k/v to be empty; keep layer 0's attention (block_removal does)")
    return None


def _family(model: nn.Module) -> ArchitectureSpec:
    """The model's family, refused unless its :class:`~adapruner_lightning.core.architectures.GGUFArch` names a
    llama.cpp architecture."""
    spec = get_architecture(model)
    if spec.gguf.arch is None:
        lacks = f"; llama.cpp's deci cannot express {spec.gguf.deci_lacks}" if spec.gguf.deci_lacks else ""
        writable = [s.name for s in registered_specs() if s.gguf.arch is not None]
        raise ConfigError("GGUF export", f"the {spec.name} family", f"one of {writable}",
                          hint=f"its own llama.cpp architecture is not written here{lacks}: run llama.cpp's "
                               "convert_hf_to_gguf.py on a uniform export directory, or use load_pruned")
    return spec


def check_exportable(model: nn.Module, tokenizer: Any, pre_tokenizer: str | None = None) -> None:
    """The refusals that need no plan (family, rope scaling, tokenizer kind and pre-tokenizer): cheap, so a run
    that is to end in a GGUF file checks them before any expensive work; :func:`gguf_layout` checks the rest."""
    with tempfile.TemporaryDirectory() as folder:
        _check(model, tokenizer, pre_tokenizer, Path(folder))


def _check(model: nn.Module, tokenizer: Any, pre_tokenizer: str | None, folder: Path) -> str:
    """:func:`check_exportable`, with the tokenizer saved into ``folder`` (kept for the writer); returns the
    pre-tokenizer's llama.cpp name."""
    _family(model)
    _rope(getattr(model.config, "text_config", None) or model.config)
    if tokenizer is None:
        raise ConfigError("GGUF export", "no tokenizer", "the model's tokenizer",
                          hint="give the LightningModule a .tokenizer attribute (or pass the tokenizer)")
    data = _tokenizer_json(tokenizer, folder)
    return pre_tokenizer or pre_tokenizer_name(data)


def gguf_layout(model: nn.Module) -> GGUFLayout:
    """Choose the llama.cpp architecture for ``model`` (pruned) or raise :class:`ConfigError` naming what the
    format cannot express and the way out. Nothing is written."""
    spec = _family(model)
    family, native = spec.name, spec.gguf
    structures = layer_structures(model)
    widths = tuple((s.num_heads, s.num_kv_heads, s.intermediate) for s in structures)
    uniform = len(set(widths)) == 1 and 0 not in widths[0]
    biased = any(getattr(m, "bias", None) is not None for s in structures for m in (s.o, s.down))
    narrow_q = native.full_width_q and widths[0][0] * head_layout(model.config).head_dim != model.config.hidden_size
    if uniform and (native.out_bias or not biased) and not narrow_q:
        return GGUFLayout(native.arch, native.permute_qk, f"uniform plan: llama.cpp's own {native.arch} architecture",
                          widths)
    why = ("a non-uniform plan" if not uniform else "o_proj/down_proj biases (reconstruction)" if biased else
           f"query heads removed (llama.cpp's {native.arch} needs heads x head_dim = hidden size)")
    if native.deci_lacks:
        raise ConfigError("GGUF export", f"{why} of the {family} family", "a uniform plan without bias compensation",
                          hint=f"llama.cpp's per-layer architecture deci cannot express {native.deci_lacks}; "
                               "prune with per_layer='uniform' and reconstruction='none', or use load_pruned")
    _check_layers(structures)
    return GGUFLayout("deci", True, f"{why}: llama.cpp's deci architecture (per-layer head and MLP counts)", widths)


def _rope(config: Any) -> tuple[float, str, dict[str, Any]]:
    """(theta, type, parameters) of the rotary embedding, transformers 5 (``rope_parameters``) or 4."""
    params = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    theta = float(params.get("rope_theta", getattr(config, "rope_theta", 10000.0)))
    kind = str(params.get("rope_type", params.get("type", "default")) or "default")
    if kind not in ("default", "linear", "llama3"):
        raise ConfigError("GGUF export", f"rope scaling {kind!r}", "none, 'linear' or 'llama3'",
                          hint="use load_pruned (this writer does not carry that scaling to llama.cpp)")
    return theta, kind, params


def _llama3_rope_factors(params: dict[str, Any], theta: float, dim: int) -> np.ndarray:
    """llama.cpp's ``rope_freqs`` tensor for Llama-3.1's scaling: one divisor per frequency (Meta's formula)."""
    factor = float(params.get("factor", 8.0))
    low, high = float(params.get("low_freq_factor", 1.0)), float(params.get("high_freq_factor", 4.0))
    context = float(params.get("original_max_position_embeddings", 8192))
    out = []
    for freq in 1.0 / theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim):
        wavelength = 2 * math.pi / freq
        if wavelength < context / high:
            out.append(1.0)
        elif wavelength > context / low:
            out.append(factor)
        else:
            smooth = (context / wavelength - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)


def _permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """Rows of each head from HF's (half, pair) order to llama.cpp's interleaved pairs."""
    return (weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


# --------------------------------------------------------------------------------------------- tokenizer


def _pre_tokenizer_key(pre: dict[str, Any] | None) -> str:
    """The :data:`PRE_TOKENIZERS` key of a tokenizer.json ``pre_tokenizer`` section."""
    parts = (pre or {}).get("pretokenizers", [pre] if pre else [])
    names = []
    for part in parts:
        kind = part.get("type")
        if kind == "Split":
            names.append(part.get("pattern", {}).get("Regex", "?"))
        elif kind == "Digits" and part.get("individual_digits"):
            names.append("digits")
        elif kind == "ByteLevel" and part.get("use_regex", True):
            names.append("bytelevel")
        elif kind != "ByteLevel":
            names.append(f"<{kind}>")
    return "+".join(names)


def pre_tokenizer_name(tokenizer_json: dict[str, Any]) -> str:
    """llama.cpp's ``tokenizer.ggml.pre`` for a byte-level BPE ``tokenizer.json``, or :class:`ConfigError`."""
    key = _pre_tokenizer_key(tokenizer_json.get("pre_tokenizer"))
    if key not in PRE_TOKENIZERS:
        raise ConfigError("GGUF export", f"pre-tokenizer {key[:80]!r}", f"one llama.cpp implements: "
                          f"{sorted(set(PRE_TOKENIZERS.values()))}",
                          hint="pass pre_tokenizer=NAME (llama.cpp's name, see its llama-vocab.cpp) if you know it")
    return PRE_TOKENIZERS[key]


def _tokenizer_json(tokenizer: Any, folder: Path) -> dict[str, Any]:
    tokenizer.save_pretrained(folder)
    path = folder / "tokenizer.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    model = data.get("model", {})
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise ConfigError("GGUF export", f"tokenizer {type(tokenizer).__name__} ({model.get('type', 'no tokenizer.json')})",
                          "a byte-level BPE tokenizer (Llama-3, Qwen, SmolLM, GPT-2 style)",
                          hint="sentencepiece tokenizers are not written yet: use llama.cpp's convert_hf_to_gguf.py "
                               "on a uniform export, or load_pruned")
    return data


def _token_list(tokenizer: Any, vocab_size: int) -> tuple[list[str], list[int]]:
    """Tokens by id with llama.cpp's token types (ids the tokenizer lacks become unused ``[PAD<id>]``)."""
    import gguf

    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        tokens.append(by_id[i])
        if i in added:
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
    return tokens, types


def _write_tokenizer(writer: Any, tokenizer: Any, config: Any, pre_tokenizer: str, folder: Path) -> None:
    """Vocabulary, merges, special tokens, BOS policy and chat template, as llama.cpp's converter writes them
    (``folder``: where :func:`_check` saved the tokenizer)."""
    import gguf

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer)
    tokens, types = _token_list(tokenizer, int(config.vocab_size))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    config.to_json_file(str(folder / "config.json"))
    special = gguf.SpecialVocab(folder, load_merges=True, n_vocab=len(tokens))
    special.add_special_token["bos"] = uses_bos(tokenizer)  # the policy every window here was scored with
    special.add_to_gguf(writer, quiet=True)


# --------------------------------------------------------------------------------------------- tensors


@dataclass
class _Tensor:
    name: str
    source: Callable[[], np.ndarray]  # float32, already permuted
    shape: tuple[int, ...]


def _qtype(outtype: str, shape: tuple[int, ...]):
    """GGML type of one tensor: 1-D tensors (norms, biases) stay f32."""
    import gguf

    types = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
             "bf16": gguf.GGMLQuantizationType.BF16, "q8_0": gguf.GGMLQuantizationType.Q8_0}
    if len(shape) < 2:
        return types["f32"]
    if outtype == "q8_0" and shape[-1] % gguf.GGML_QUANT_SIZES[types["q8_0"]][0]:
        return types["f16"]
    return types[outtype]


def _encode(array: np.ndarray, qtype: Any) -> np.ndarray:
    import gguf
    from gguf.quants import quantize

    if qtype == gguf.GGMLQuantizationType.F32:
        return np.ascontiguousarray(array, dtype=np.float32)
    if qtype == gguf.GGMLQuantizationType.F16:
        return np.ascontiguousarray(array, dtype=np.float16)
    return quantize(np.ascontiguousarray(array, dtype=np.float32), qtype)


def _tensors(model: nn.Module, layout: GGUFLayout) -> Iterator[_Tensor]:
    """The model's tensors under llama.cpp names, each converted only when written."""
    import gguf

    arch = next(a for a, name in gguf.MODEL_ARCH_NAMES.items() if name == layout.arch)
    widths = layout.widths
    names = gguf.get_tensor_name_map(arch, len(widths))
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    head_dim = head_layout(model.config).head_dim
    for hf_name, tensor in model.state_dict().items():
        if (tied and hf_name.startswith("lm_head.")) or "rotary_emb" in hf_name or tensor.numel() == 0:
            continue
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ConfigError("GGUF export", f"tensor {hf_name}", f"a tensor llama.cpp's {layout.arch} has",
                              hint="a modified model: export with load_pruned's format instead")
        block = int(hf_name.split("layers.")[1].split(".")[0]) if "layers." in hf_name else None
        heads = None
        if layout.permute_qk and block is not None and (".q_proj." in hf_name or ".k_proj." in hf_name):
            heads = tensor.shape[0] // head_dim
        if block is not None and widths[block][0] == 0 and "input_layernorm" in hf_name:
            continue  # deci builds no attention (and no attention norm) for a head-less layer
        if block is not None and widths[block][2] == 0 and "post_attention_layernorm" in hf_name:
            continue
        yield _Tensor(name, _converter(tensor, heads), tuple(tensor.shape))


def _converter(tensor: torch.Tensor, heads: int | None) -> Callable[[], np.ndarray]:
    def convert() -> np.ndarray:
        array = tensor.detach().to("cpu", torch.float32).numpy()
        return _permute(array, heads) if heads else array
    return convert


def _write_params(writer: Any, model: nn.Module, layout: GGUFLayout, ftype: int, name: str) -> list[_Tensor]:
    """Hyper-parameters (per-layer arrays for ``deci``) and the extra tensors they imply (llama3 rope factors)."""
    import gguf

    config = getattr(model.config, "text_config", None) or model.config
    geometry = head_layout(config)
    per_layer = layout.arch == "deci"
    heads, kv, channels = (list(w) for w in zip(*layout.widths))
    writer.add_name(name)
    writer.add_string(GGUF_MARKER, __version__)  # how check_output_path recognises a file of ours
    writer.add_context_length(int(config.max_position_embeddings))
    writer.add_embedding_length(geometry.hidden_size)
    writer.add_block_count(len(layout.widths))
    writer.add_feed_forward_length(channels if per_layer else channels[0])
    writer.add_head_count(heads if per_layer else heads[0])
    writer.add_head_count_kv(kv if per_layer else kv[0])
    writer.add_key_length(geometry.head_dim)
    writer.add_value_length(geometry.head_dim)
    writer.add_rope_dimension_count(geometry.head_dim)
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(int(config.vocab_size))
    writer.add_file_type(ftype)
    theta, kind, params = _rope(config)
    writer.add_rope_freq_base(theta)
    if kind == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(params["factor"]))
    if kind == "llama3":
        factors = _llama3_rope_factors(params, theta, geometry.head_dim)
        return [_Tensor(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", lambda: factors, factors.shape)]
    return []


def _file_type(outtype: str) -> int:
    import gguf

    return {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
            "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[outtype]


def _byte_shape(shape: tuple[int, ...], qtype: Any) -> tuple[int, ...]:
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[qtype]
    return (*shape[:-1], shape[-1] // block * size)


def check_outtype(outtype: str) -> str:
    """``outtype`` if it is one of :data:`OUTTYPES`, else :class:`ConfigError`."""
    if outtype not in OUTTYPES:
        raise ConfigError("GGUF outtype", outtype, f"one of {list(OUTTYPES)}")
    return outtype


def _write_tensors(writer: Any, tensors: list[tuple[_Tensor, Any]], outtype: str, result: GGUFResult,
                   progress: bool) -> None:
    """Header, key-values and every tensor's info, then the tensors one at a time (streamed: one converted
    tensor in memory); q8_0 fallbacks to f16 are recorded on ``result``."""
    import gguf

    from adapruner_lightning.progress import progress_bar

    for t, qtype in tensors:
        if outtype == "q8_0" and len(t.shape) > 1 and qtype == gguf.GGMLQuantizationType.F16:
            result.fallbacks.append(t.name)
        quantized = qtype not in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16)
        shape = _byte_shape(t.shape, qtype) if quantized else t.shape
        dtype = np.uint8 if quantized else (np.float32 if qtype == gguf.GGMLQuantizationType.F32 else np.float16)
        writer.add_tensor_info(t.name, shape, np.dtype(dtype), int(np.prod(shape)) * np.dtype(dtype).itemsize,
                               raw_dtype=qtype if quantized else None)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for t, qtype in progress_bar(tensors, f"GGUF {outtype}", enabled=progress):
        writer.write_tensor_data(_encode(t.source(), qtype))
    writer.close()


@torch.no_grad()
def export_gguf(model: nn.Module, tokenizer: Any, out: str | Path, *, outtype: str = "f16",
                name: str | None = None, pre_tokenizer: str | None = None, progress: bool = True,
                overwrite: bool = True, inputs: tuple[str | Path, ...] = ()) -> GGUFResult:
    """Write ``model`` (pruned, any plan) and ``tokenizer`` to the GGUF file ``out`` for llama.cpp.

    Args:
        model: a pruned (or dense) causal LM of a supported family, LoRA merged.
        tokenizer: its Hugging Face tokenizer (byte-level BPE).
        out: the ``.gguf`` path; written atomically.
        outtype: one of :data:`OUTTYPES`.
        name: ``general.name`` (default: the config's ``_name_or_path``).
        pre_tokenizer: llama.cpp's pre-tokenizer name, when :data:`PRE_TOKENIZERS` does not know the tokenizer's.
        progress: a progress bar over the tensors.
        overwrite: replace ``out`` when it is a GGUF file of ours (any other existing file is always refused).
        inputs: more input paths ``out`` must not be (the model's own directory is known from its config).

    Raises:
        ConfigError: a feature the format cannot express (see :func:`gguf_layout`), or an ``out`` that is not a
            path this function may replace (:func:`~adapruner_lightning.outputs.guard.check_output_path`), before
            anything is written.
    """
    import gguf

    from adapruner_lightning.outputs.guard import check_output_path, local_model_paths

    check_outtype(outtype)
    out = check_output_path(out, inputs=[*local_model_paths(model), *inputs], overwrite=overwrite, kind="file",
                            flag="out")
    with tempfile.TemporaryDirectory() as folder:  # the tokenizer saved once, for the checks and the writer
        pre_tokenizer = _check(model, tokenizer, pre_tokenizer, Path(folder))
        layout = gguf_layout(model)
        with atomic_path(out) as tmp:
            writer = gguf.GGUFWriter(str(tmp), layout.arch)
            extra = _write_params(writer, model, layout, _file_type(outtype),
                                  name or str(getattr(model.config, "_name_or_path", "") or "pruned model"))
            _write_tokenizer(writer, tokenizer, model.config, pre_tokenizer, Path(folder))
            tensors = [(t, _qtype(outtype, t.shape)) for t in [*_tensors(model, layout), *extra]]
            result = GGUFResult(out, layout, outtype, len(tensors))
            _write_tensors(writer, tensors, outtype, result, progress)
    result.bytes = out.stat().st_size
    return result


def export_gguf_dir(directory: str | Path, out: str | Path, *, outtype: str = "f16", **kwargs: Any) -> GGUFResult:
    """:func:`export_gguf` of an export directory written by ``save_pruned`` (reloaded by ``load_pruned``)."""
    from adapruner_lightning.outputs.export import load_pruned

    from adapruner_lightning.outputs.guard import check_output_path

    check_outtype(outtype)
    check_output_path(out, inputs=[directory], overwrite=kwargs.get("overwrite", True), kind="file", flag="out")
    model, tokenizer, _plan = load_pruned(directory)
    return export_gguf(model, tokenizer, out, outtype=outtype, inputs=(directory,), **kwargs)

