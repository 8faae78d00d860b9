"""Personas: who Miku is, as Ollama-style modelfiles in `configs/personas/`, validated on load.

A modelfile holds one instruction per line (case-insensitive): `NAME`, `FROM` (base model), `SYSTEM`
(the system prompt, `\"\"\"` for several lines), `PARAMETER key value` (typed and range-checked),
`EMOJI` (reactions she uses), `IMAGE_STYLE` (for drawing), `INTERESTS` (words that raise her
interest), `DISPLAY_NAME`, `DESCRIPTION` and `FEATURE` (a controller feature the persona needs, e.g.
`bipolar_mode`) and `ADAPTER` (a LoRA for the base model: a `.gguf` file path relative to the modelfile,
checked to exist and be GGUF, which llama-cpp-python loads as `lora_path`; or a bare name that
`brain.model_routing.adapters` maps to a model name on a remote server). Every problem is reported with file and line so a bad persona never loads half-way.
The library keeps the active persona per server (and one for DMs); `!modfile switch` changes it.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")

# PARAMETER name -> (type, check, description of valid values)
_PARAMETERS: dict[str, tuple[type, Callable[[Any], bool], str]] = {
    "temperature": (float, lambda v: 0.0 <= v <= 2.0, "a number in [0, 2]"),
    "top_p": (float, lambda v: 0.0 < v <= 1.0, "a number in (0, 1]"),
    "top_k": (int, lambda v: v > 0, "a positive integer"),
    "min_p": (float, lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]"),
    "repeat_penalty": (float, lambda v: v > 0, "a positive number"),
    "num_ctx": (int, lambda v: v >= 256, "an integer >= 256"),
    "num_predict": (int, lambda v: v > 0 or v == -1, "a positive integer or -1"),
    "seed": (int, lambda v: True, "an integer"),
    "stop": (str, lambda v: bool(v), "a non-empty string"),
}

_INSTRUCTIONS = {"NAME", "FROM", "SYSTEM", "PARAMETER", "EMOJI", "IMAGE_STYLE", "INTERESTS", "DISPLAY_NAME", "DESCRIPTION", "FEATURE", "ADAPTER"}
_ADAPTER_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:+-]{0,127}$")
GGUF_MAGIC = b"GGUF"
_SINGLE = _INSTRUCTIONS - {"PARAMETER"}


class PersonaError(ValueError):
    """A persona file is invalid; the message names the file, the line and what is wrong."""


@dataclass(frozen=True)
class Persona:
    name: str
    base_model: str
    system_prompt: str
    parameters: dict[str, Any] = field(default_factory=dict)
    stop: tuple[str, ...] = ()
    emoji: tuple[str, ...] = ("🎵",)
    image_style: str = ""
    interests: tuple[str, ...] = ()
    display_name: str = ""
    description: str = ""
    feature: str | None = None
    source: str = ""
    adapter: str | None = None  # an absolute .gguf path, or a name for a remote server's model routing

    @property
    def adapter_is_file(self) -> bool:
        return self.adapter is not None and self.adapter.endswith(".gguf")

    @property
    def temperature(self) -> float:
        return float(self.parameters.get("temperature", 0.8))

    @property
    def max_tokens(self) -> int:
        value = int(self.parameters.get("num_predict", 256))
        return 256 if value < 0 else value

    def info(self) -> str:
        """The `!modfile info` text."""
        params = ", ".join(f"{k}={v}" for k, v in sorted(self.parameters.items())) or "defaults"
        return (
            f"Persona **{self.display_name or self.name}** (`{self.name}`), base model `{self.base_model}`; "
            f"parameters: {params}; emoji: {' '.join(self.emoji)}"
            + (f"; {self.description}" if self.description else "")
        )


def _split_tokens(text: str) -> list[str]:
    return [t for t in re.split(r"[,\s]+", text.strip()) if t]


def _adapter(value: str, where: str, base_dir: Path | None) -> str:
    """An ADAPTER value checked: a GGUF file that exists (absolute path returned) or a plain name."""
    if not value.lower().endswith(".gguf"):
        if not _ADAPTER_NAME_RE.match(value) or "/" in value or "\\" in value:
            raise PersonaError(f"{where}: ADAPTER must be a .gguf file or a model-routing name (letters, digits, . _ : + -), got {value!r}")
        return value
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = (base_dir or Path.cwd()) / path
    if not path.is_file():
        raise PersonaError(f"{where}: ADAPTER file {path} not found")
    with path.open("rb") as handle:
        if handle.read(4) != GGUF_MAGIC:
            raise PersonaError(f"{where}: ADAPTER {path} is not a GGUF file (llama.cpp LoRA adapters are GGUF)")
    return str(path.resolve())


def parse_modelfile(text: str, source: str = "<modelfile>", base_dir: str | Path | None = None) -> Persona:
    """Parse and validate one modelfile; raise PersonaError with file:line on any problem.

    `base_dir` is where a relative ADAPTER path is looked for (the modelfile's directory)."""
    values: dict[str, str] = {}
    seen_at: dict[str, int] = {}
    parameters: dict[str, Any] = {}
    stops: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line_no = i + 1
        raw = lines[i].strip()
        i += 1
        if not raw or raw.startswith("#"):
            continue
        keyword, _, rest = raw.partition(" ")
        keyword = keyword.upper()
        rest = rest.strip()
        where = f"{source}:{line_no}"
        if keyword not in _INSTRUCTIONS:
            raise PersonaError(f"{where}: unknown instruction {keyword!r}; expected one of {sorted(_INSTRUCTIONS)}")
        if rest.startswith('"""'):
            body = rest[3:]
            if body.endswith('"""') and len(body) >= 3:
                rest = body[:-3]
            else:
                collected = [body] if body else []
                while True:
                    if i >= len(lines):
                        raise PersonaError(f"{where}: {keyword} opens a \"\"\" block that is never closed")
                    part = lines[i]
                    i += 1
                    if part.rstrip().endswith('"""'):
                        collected.append(part.rstrip()[:-3])
                        break
                    collected.append(part)
                rest = "\n".join(collected).strip()
        elif len(rest) >= 2 and rest[0] == rest[-1] == '"':
            rest = rest[1:-1]
        if keyword == "PARAMETER":
            key, _, value = rest.partition(" ")
            key, value = key.strip().lower(), value.strip().strip('"')
            if key not in _PARAMETERS:
                raise PersonaError(f"{where}: unknown PARAMETER {key!r}; expected one of {sorted(_PARAMETERS)}")
            kind, check, valid = _PARAMETERS[key]
            try:
                converted = kind(value)
            except ValueError:
                raise PersonaError(f"{where}: PARAMETER {key} must be {valid}, got {value!r}") from None
            if not check(converted):
                raise PersonaError(f"{where}: PARAMETER {key} must be {valid}, got {value!r}")
            if key == "stop":
                stops.append(converted)
            else:
                parameters[key] = converted
            continue
        if keyword in seen_at:
            raise PersonaError(f"{where}: {keyword} given twice (first on line {seen_at[keyword]})")
        if not rest:
            raise PersonaError(f"{where}: {keyword} needs a value")
        seen_at[keyword] = line_no
        if keyword == "ADAPTER":
            rest = _adapter(rest, where, Path(base_dir) if base_dir is not None else None)
        values[keyword] = rest

    for required in ("NAME", "FROM", "SYSTEM"):
        if required not in values:
            raise PersonaError(f"{source}: missing required {required} instruction")
    name = values["NAME"].strip().lower()
    if not _NAME_RE.match(name):
        raise PersonaError(
            f"{source}:{seen_at['NAME']}: NAME {values['NAME']!r} must be 1-32 of a-z, 0-9, '_' or '-'"
        )
    emoji = tuple(_split_tokens(values.get("EMOJI", "🎵")))
    interests = tuple(w.lower() for w in _split_tokens(values.get("INTERESTS", "")))
    return Persona(
        name=name,
        base_model=values["FROM"],
        system_prompt=values["SYSTEM"],
        parameters=parameters,
        stop=tuple(stops),
        emoji=emoji,
        image_style=values.get("IMAGE_STYLE", ""),
        interests=interests,
        display_name=values.get("DISPLAY_NAME", ""),
        description=values.get("DESCRIPTION", ""),
        feature=values.get("FEATURE"),
        source=source,
        adapter=values.get("ADAPTER"),
    )


def load_personas(directory: str | Path) -> dict[str, Persona]:
    """Load every `*.modelfile` in `directory`; errors name the file. Duplicate names are errors."""
    directory = Path(directory)
    if not directory.is_dir():
        raise PersonaError(f"persona directory {directory} does not exist")
    personas: dict[str, Persona] = {}
    for path in sorted(directory.glob("*.modelfile")):
        persona = parse_modelfile(path.read_text(encoding="utf-8"), str(path), path.parent)
        if persona.name in personas:
            raise PersonaError(f"{path}: persona {persona.name!r} is also defined in {personas[persona.name].source}")
        personas[persona.name] = persona
    if not personas:
        raise PersonaError(f"no *.modelfile personas in {directory}")
    return personas


class PersonaLibrary:
    """The loaded personas and which one is active per server (`None` = DMs)."""

    def __init__(self, personas: dict[str, Persona], default: str = "miku"):
        if default not in personas:
            raise PersonaError(f"default persona {default!r} not found; loaded: {sorted(personas)}")
        self.personas = dict(personas)
        self.default = default
        self._active: dict[str | None, str] = {}

    def active(self, guild_id: str | None) -> Persona:
        return self.personas[self._active.get(guild_id, self.default)]

    def get(self, name: str) -> Persona | None:
        return self.personas.get(name.strip().lower())

    def switch(self, guild_id: str | None, name: str) -> Persona:
        persona = self.get(name)
        if persona is None:
            raise KeyError(name)
        self._active[guild_id] = persona.name
        return persona

    def names(self) -> list[str]:
        return sorted(self.personas)

    def assignments(self) -> dict[str | None, str]:
        """Servers (None = DMs) whose persona was switched away from the default, and to which."""
        return dict(self._active)
