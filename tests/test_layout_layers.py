"""The package layout is a map of the data flow: no module imports from a layer above its own.

Layers, bottom to top (a module may import from its own layer and the ones below)::

    0 semimer (root), io, utils, config, config_checks    1 data    2 eval    3 models    4 train
    5 semi    6 extract    7 infer    8 serve, cli, commands, __main__

Imports inside functions count too (a lazy import is still a dependency).
"""

from __future__ import annotations

import ast
from pathlib import Path

import semimer

LAYERS = {"": 0, "io": 0, "utils": 0, "config": 0, "config_checks": 0, "data": 1, "eval": 2, "models": 3, "train": 4, "semi": 5,
          "extract": 6, "infer": 7, "serve": 8, "cli": 8, "commands": 8, "__main__": 8, "configs": 0}
ROOT = Path(semimer.__file__).parent


def layer_of(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "semimer":
        return None
    if len(parts) == 1:
        return 0
    if parts[1] not in LAYERS:  # an alias of the 0.1 flat layout: resolve it
        target = semimer._MOVED.get(parts[1])
        assert target is None, f"{module} is a deprecated alias (of semimer.{target}); import the new name"
        raise AssertionError(f"unknown top-level module {module}")
    return LAYERS[parts[1]]


def imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append(node.module)
            if node.module == "semimer":  # from semimer import X: X may be a module
                out += [f"semimer.{a.name}" for a in node.names if a.name in LAYERS]
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names]
    return out


def test_no_module_imports_from_a_higher_layer():
    bad = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        own = LAYERS[rel.parts[0] if len(rel.parts) > 1 else ("" if rel.name == "__init__" else rel.name)]
        for mod in imports(path):
            lay = layer_of(mod)
            if lay is not None and lay > own:
                bad.append(f"{rel} (layer {own}) imports {mod} (layer {lay})")
    assert not bad, "\n".join(bad)


def test_old_module_names_alias_the_new_ones():
    import semimer.cv
    import semimer.recipe
    import semimer.semi.recipe
    import semimer.train.cv

    assert semimer.cv is semimer.train.cv and semimer.recipe is semimer.semi.recipe
    from semimer.pruning import PrunedSpeechEncoder, select_tokens  # noqa: F401  (0.1 public names)
    from semimer.voting import soft_vote  # noqa: F401
