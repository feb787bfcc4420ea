"""One vocabulary, one error hierarchy, a command line that explains itself."""

import argparse
import ast
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

import pipesim
from pipesim import errors
from pipesim.cli import build_parser, main
from pipesim.vocabulary import CLIENT_MESSAGE_TYPES, SERVER_MESSAGE_TYPES, SERVICES

PACKAGE = Path(pipesim.__file__).parent


# Vocabulary ------------------------------------------------------------------------------------------
def _literal_tuples(tree: ast.AST) -> list[tuple[str, ...]]:
    """Every tuple, list or Literal[...] of string constants written in a module."""
    found = []
    for node in ast.walk(tree):
        elts = None
        if isinstance(node, ast.Tuple | ast.List | ast.Set):
            elts = node.elts
        elif isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Tuple):
            elts = node.slice.elts
        if elts and all(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in elts):
            found.append(tuple(e.value for e in elts))
    return found


@pytest.mark.parametrize("words", [SERVICES, SERVER_MESSAGE_TYPES, CLIENT_MESSAGE_TYPES],
                         ids=["services", "server-messages", "client-messages"])
def test_each_list_of_names_is_written_once(words):
    writers = [path.relative_to(PACKAGE).as_posix() for path in sorted(PACKAGE.rglob("*.py"))
               if any(set(t) == set(words) for t in _literal_tuples(ast.parse(path.read_text())))]
    assert writers == ["vocabulary.py"]


def test_protocol_models_follow_the_vocabulary():
    from pipesim.protocol import json_schemas

    assert set(json_schemas()) == {*SERVER_MESSAGE_TYPES, *CLIENT_MESSAGE_TYPES}


# Errors ----------------------------------------------------------------------------------------------
def test_every_error_pipesim_raises_on_purpose_is_a_pipesim_error():
    import pipesim.cli
    import pipesim.live.recording

    classes = [c for module in (errors, pipesim.cli, pipesim.live.recording) for _, c in inspect.getmembers(module)
               if inspect.isclass(c) and issubclass(c, Exception) and c.__module__ == module.__name__]
    assert len(classes) >= 8
    assert all(issubclass(c, errors.PipesimError) for c in classes), classes
    # Each error is also the built-in a caller would catch.
    assert issubclass(errors.ScenarioError, ValueError) and issubclass(errors.LiveError, RuntimeError)


def test_errors_are_importable_where_they_are_used():
    from pipesim.protocol import ProtocolError
    from pipesim.scenario import ScenarioError
    from pipesim.state import IllegalTransition, UnknownSession
    from pipesim.trace import TraceError

    defined = [getattr(errors, name) for name in dir(errors)]
    assert all(c in defined for c in (ProtocolError, ScenarioError, IllegalTransition, UnknownSession, TraceError))
    assert pipesim.ScenarioError is ScenarioError


def test_state_errors_survive_being_rebuilt_from_their_args():
    err = errors.IllegalTransition("abc", "tts", "idle", "barge_in", "barge-in needs the bot to be speaking")
    again = type(err)(*err.args)
    assert str(again) == str(err) and again.requested == "listening" and again.service == "tts"
    assert str(errors.ScenarioError(["a", "b"])) == "a\nb"


# Command line ----------------------------------------------------------------------------------------
def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_option_of_every_command_has_help():
    missing = [f"{name} {'/'.join(a.option_strings) or a.dest}"
               for name, sub in _subparsers(build_parser()).items() for a in sub._actions
               if not a.help and not isinstance(a, argparse._HelpAction)]
    assert missing == []


def test_help_shows_defaults_and_plain_text(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    top = capsys.readouterr().out
    assert "``" not in top and ":class:" not in top and "pipesim serve" in top
    with pytest.raises(SystemExit):
        main(["sweep", "--help"])
    assert "(default: 10)" in capsys.readouterr().out  # --replications


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"pipesim {pipesim.__version__}"


def test_python_dash_m_pipesim_is_the_cli():
    out = subprocess.run([sys.executable, "-m", "pipesim", "--version"], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == f"pipesim {pipesim.__version__}"
    bad = subprocess.run([sys.executable, "-m", "pipesim", "run", "no-such-scenario"], capture_output=True,
                         text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("pipesim: error: ") and "Traceback" not in bad.stderr


# Data flows one way ----------------------------------------------------------------------------------
def _modules() -> dict[str, Path]:
    """Every pipesim module by its dotted name."""
    def name_of(path: Path) -> str:
        parts = ["pipesim", *path.relative_to(PACKAGE).with_suffix("").parts]
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    return {name_of(path): path for path in PACKAGE.rglob("*.py")}


def _imports_of_every_module() -> dict[str, set[str]]:
    """For each pipesim module, the pipesim modules it imports: at the top, inside functions (a lazy import
    hides a cycle, it does not remove it) and under ``if TYPE_CHECKING:`` (a module that needs the type of
    what it is handed from a module that imports it is a circle all the same: the two cannot be read, nor
    changed, apart)."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        imported = set()
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                             for a in node.names}
        graph[name] = {m for m in imported if m in modules and m != name}
    return graph


def test_no_pipesim_module_imports_itself_through_others():
    graph = _imports_of_every_module()
    assert "pipesim.plots" in graph["pipesim.results"]  # imported inside a method: it counts

    def cycle_from(start: str) -> list[str] | None:
        path, seen = [start], set()

        def visit(module: str) -> list[str] | None:
            for nxt in sorted(graph[module]):
                if nxt == start:
                    return [*path, start]
                if nxt not in seen:
                    seen.add(nxt)
                    path.append(nxt)
                    found = visit(nxt)
                    if found:
                        return found
                    path.pop()
            return None

        return visit(start)

    cycles = [" -> ".join(c) for c in map(cycle_from, sorted(graph)) if c]
    assert cycles == []
    # model -> trace -> DataFrames -> figures: the read side never reaches back.
    assert "pipesim.results" not in graph["pipesim.plots"] and "pipesim.trace" not in graph["pipesim.analysis"]


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def test_no_pipesim_module_uses_another_ones_private_names():
    """A private name (``_x``, not a dunder) is its module's own. Another pipesim module may not reach it: not by
    ``from m import _x``, not as ``m._x`` through an imported module, and not as ``obj._x`` where ``_x`` is
    defined (a def, a class, an assignment) in another pipesim module and nowhere in this one. (Private names of
    other libraries, ``env._now`` for speed, are their business; a private *module*, ``pipesim._jsonsafe``, is
    the package's own.)"""
    modules = _modules()
    trees = {name: ast.parse(path.read_text()) for name, path in modules.items()}

    def defined(tree: ast.AST) -> set[str]:
        names = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(node.name)
            elif isinstance(node, ast.Name | ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.id if isinstance(node, ast.Name) else node.attr)
            elif isinstance(node, ast.arg):
                names.add(node.arg)
        return {n for n in names if _private(n)}

    own = {name: defined(tree) for name, tree in trees.items()}
    uses = set()
    for name, tree in trees.items():
        bound: dict[str, str] = {}  # local name -> the pipesim module it names
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                bound |= {(a.asname or a.name): a.name for a in node.names if a.name in modules}
            elif isinstance(node, ast.ImportFrom) and node.module in modules:
                for a in node.names:
                    if f"{node.module}.{a.name}" in modules:
                        bound[a.asname or a.name] = f"{node.module}.{a.name}"
                    elif _private(a.name):
                        uses.add((name, a.name))
        elsewhere = set().union(*(names for other, names in own.items() if other != name)) - own[name]
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and _private(node.attr):
                through_module = isinstance(node.value, ast.Name) and bound.get(node.value.id, name) != name
                if through_module or node.attr in elsewhere:
                    uses.add((name, node.attr))
    assert uses == set(), "make these public (documented) or move them where they are used"


def test_only_the_composition_imports_the_live_server():
    """The hub, the dialects and the admin API are handed what they work on (imports point down to them)."""
    graph = _imports_of_every_module()
    assert {m for m, imported in graph.items() if "pipesim.live.server" in imported} <= \
        {"pipesim.live", "pipesim.live.cli", "pipesim.live.liveserver", "pipesim.live.replay",
                                                              "pipesim.live.background"}


def test_each_file_of_the_live_package_is_one_room():
    """A file over 500 lines holds more than one job: split it along the layers of docs/architecture.md."""
    sizes = {p.name: len(p.read_text().splitlines()) for p in (PACKAGE / "live").glob("*.py")}
    assert {name: n for name, n in sizes.items() if n > 500} == {}
