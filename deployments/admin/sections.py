"""The panel's sections, pluggable: each is a title and one static script that draws it.

The page asks `GET /admin/api/sections` which sections exist and loads each one's script (from
`deployments/admin/static/`, same origin: the CSP allows nothing else); the script calls
`MikuAdmin.section(id, {render})` (static/app.js). A new stage (schedule, feeds, image) adds its
section with `register_section(...)` at import time and includes its own APIRouter in the ingress app,
using `deployments.admin.routes.panel_user` / `panel_change` / `audit_change` for login, CSRF and the
audit log, as the built-in sections do.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Section:
    id: str  # also the URL fragment: /admin/#<id>
    title: str
    script: str  # path under /admin/static/
    order: int = 100

    def to_dict(self) -> dict:
        return asdict(self)


_sections: dict[str, Section] = {}


def register_section(section: Section) -> None:
    if not section.id.replace("-", "").isalnum():
        raise ValueError(f"section id {section.id!r}: letters, digits and '-' only")
    _sections[section.id] = section


def sections() -> list[Section]:
    return sorted(_sections.values(), key=lambda s: (s.order, s.id))


for _built_in in (
    Section("overview", "Overview", "sections/overview.js", 10),
    Section("latency", "Latency", "sections/latency.js", 20),
    Section("conversations", "Conversations", "sections/conversations.js", 30),
    Section("personas", "Personas & moods", "sections/personas.js", 40),
    Section("autonomous", "Autonomous engine", "sections/autonomous.js", 50),
    Section("audit", "Audit log", "sections/audit.js", 60),
    Section("settings", "Settings", "sections/settings.js", 70),
):
    register_section(_built_in)
