"""Who may run the guarded commands (join, leave, stop, and the music controls): configured role names, admins optionally always."""
from __future__ import annotations

from typing import Iterable

from .config import PermissionsConfig

GUARDED = ("join", "leave", "stop", "music")  # "music": every command that changes the music


def is_allowed(command: str, role_names: Iterable[str], is_admin: bool, config: PermissionsConfig) -> bool:
    """True when the command is unguarded, open to everyone, or the member holds one of its roles."""
    if command not in GUARDED:
        return True
    wanted = getattr(config, command)
    if not wanted:
        return True
    if is_admin and config.admins_always_allowed:
        return True
    have = {name.casefold() for name in role_names}
    return any(role.casefold() in have for role in wanted)


def refusal(command: str, config: PermissionsConfig, prefix: str = "!miku") -> str:
    roles = ", ".join(f"**{r}**" for r in getattr(config, command, ()))
    what = "control the music" if command == "music" else f"use `{prefix} {command}`"
    return f"❌ You don't have permission to {what}: it needs one of these roles: {roles}."
