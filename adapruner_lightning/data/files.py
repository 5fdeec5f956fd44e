"""The files a model directory holds, checked before a library parses them: a damaged one is one clear line.

Hugging Face's loaders and safetensors report a truncated or damaged file with their own exception types and
words (``SafetensorError: Error while deserializing header: incomplete metadata``), often without naming the file.
The checks here are cheap (a JSON parse of the small configuration files; the 8-byte length and the header of each
``*.safetensors`` file, and its size against the last tensor's end) and raise
:class:`~adapruner_lightning.errors.ConfigError` naming the file and the fix, before any weight is read.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from adapruner_lightning.errors import ConfigError

#: the JSON files of a Hugging Face model directory that are parsed when present
JSON_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
              "special_tokens_map.json", "model.safetensors.index.json")
_HEADER_LIMIT = 100 * 2**20  # safetensors refuses headers above 100 MB


def read_json(path: str | Path, what: str, hint: str = "") -> Any:
    """Parse the JSON file ``path``; a truncated, damaged or non-UTF-8 one is a :class:`ConfigError` naming it.

    Args:
        path: the file.
        what: what the file is, for the message (``"plan file"``, ``"tokenizer file"``).
        hint: the fix (default: restore or re-create the file).
    """
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(what, str(path), "valid JSON",
                          hint=f"the file is corrupted or truncated ({exc}); {hint or 'restore it or write it again'}") from exc


def check_safetensors(path: str | Path, hint: str = "") -> dict[str, Any]:
    """Check a ``*.safetensors`` file's header and size without reading its tensors; returns the header.

    Raises:
        ConfigError: the file is shorter than its header says (truncated), or its header is not the format's.
    """
    path = Path(path)
    size = path.stat().st_size
    fix = hint or "restore the file or write the model again"
    with path.open("rb") as fh:
        head = fh.read(8)
        length = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        if not 2 <= length <= min(_HEADER_LIMIT, size - 8):
            raise ConfigError("safetensors file", str(path), "a complete safetensors file",
                              hint=f"its header is damaged or the file is truncated ({size} bytes); {fix}")
        try:
            header = json.loads(fh.read(length).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError("safetensors file", str(path), "a complete safetensors file",
                              hint=f"its header is damaged ({exc}); {fix}") from exc
    ends = [int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__" and isinstance(t, dict)
            and "data_offsets" in t] if isinstance(header, dict) else None
    if ends is None or len(ends) != len([k for k in header if k != "__metadata__"]):
        raise ConfigError("safetensors file", str(path), "a complete safetensors file",
                          hint=f"its header does not describe tensors; {fix}")
    if 8 + length + max(ends, default=0) > size:
        raise ConfigError("safetensors file", str(path), "a complete safetensors file",
                          hint=f"the file is truncated ({size} bytes, its header needs {8 + length + max(ends)}); {fix}")
    return header


def check_model_files(directory: str | Path, hint: str = "") -> None:
    """Check a model directory's JSON files (:data:`JSON_FILES`) and every ``*.safetensors`` file in it.

    Args:
        directory: a Hugging Face model directory or an export of ours.
        hint: the fix to name (default: restore or re-create the file).

    Raises:
        ConfigError: naming the first damaged file.
    """
    directory = Path(directory)
    for name in JSON_FILES:
        if (directory / name).is_file():
            read_json(directory / name, f"{name} of the model", hint)
    for file in sorted(directory.glob("*.safetensors")):
        check_safetensors(file, hint)
