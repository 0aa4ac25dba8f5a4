"""The package's rooms import one way, and no room reaches into another's private modules
(docs/architecture.md, "Layout").

Imports are what this sees. ``loadgen`` also starts ``python -m gpufeed worker``
as a child process, which is a process boundary, not an import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import gpufeed

ROOT = Path(gpufeed.__file__).parent
# Each room may import only rooms of lower layers.
LAYERS = [
    {"errors"},
    {"keys", "connect", "packing", "ring", "ops"},
    {"gpu", "admin", "embedded", "client"},
    {"worker", "loadgen"},
    {"bench"},
    {"cli"},
    {"__main__"},
]
LAYER = {room: i for i, rooms in enumerate(LAYERS) for room in rooms}


def imports(path: Path) -> list[str]:
    """Every ``gpufeed.…`` module ``path`` imports, at any depth, as a dotted name."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            found.append(f"relative import in {path.name}")  # not used in gpufeed: flagged
        elif isinstance(node, ast.ImportFrom) and node.module:
            found += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names]
    return [name for name in found if name.startswith(("gpufeed.", "relative import"))]


def sources() -> list[tuple[str, Path]]:
    return [(str(p.relative_to(ROOT.parent).with_suffix("")).replace("/", "."), p)
            for p in sorted(ROOT.rglob("*.py"))]  # fmt: skip


def test_every_room_has_a_layer() -> None:
    rooms = {module.split(".")[1] for module, _ in sources() if module != "gpufeed.__init__"}
    assert rooms == set(LAYER)


def test_rooms_import_only_rooms_below_them() -> None:
    wrong = []
    for module, path in sources():
        room = module.split(".")[1]
        if room == "__init__":
            continue
        for name in imports(path):
            if name.startswith("relative import"):
                wrong.append(name)
                continue
            other = name.split(".")[1]
            if other in LAYER and other != room and LAYER[other] >= LAYER[room]:
                wrong.append(f"{module} imports {name}")
    assert wrong == []


def test_private_modules_stay_in_their_package() -> None:
    wrong = []
    for module, path in sources():
        package = module.rsplit(".", 1)[0]
        for name in imports(path):
            parts = name.split(".")
            private = [i for i, part in enumerate(parts) if part[:1] == "_" and part[:2] != "__"]
            owner = ".".join(parts[: private[0]]) if private else ""
            if private and not (package == owner or package.startswith(owner + ".")):
                wrong.append(f"{module} imports {name}")
    assert wrong == []
