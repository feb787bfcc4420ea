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
def _imports_of_every_module() -> dict[str, set[str]]:
    """For each pipesim module, the pipesim modules it imports when it runs: at the top and inside functions
    (a lazy import hides a cycle, it does not remove it). Imports under ``if TYPE_CHECKING:`` are left out:
    they name the type of an object a module is handed (the admin API's server, say) and never run."""
    def name_of(path: Path) -> str:
        parts = ["pipesim", *path.relative_to(PACKAGE).with_suffix("").parts]
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    modules = {name_of(path): path for path in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        imported = set()
        tree = ast.parse(path.read_text())
        type_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                     and isinstance(block.test, ast.Name) and block.test.id == "TYPE_CHECKING"
                     for stmt in block.body for n in ast.walk(stmt)}
        for node in ast.walk(tree):
            if id(node) in type_only:
                continue
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


# No module reaches into another --------------------------------------------------------------------------
#: Private names that one pipesim module still takes from another. The list may only shrink: a new entry
#: means a name wants to be public (documented) or a function wants to move to where it is used.
PRIVATE_NAMES_TAKEN = {
    # The live refactor (the live server's rooms) removes these.
    "pipesim.live.admin <- pipesim.live.server._BaseServer",
    "pipesim.live.cli <- pipesim.live.server._BaseServer",
    # Older than the test; each wants a public name.
    "pipesim.calibration <- pipesim.plots._subplots",
    "pipesim.gate <- pipesim.replications._Task",
    "pipesim.gate <- pipesim.replications._execute",
    "pipesim.gate <- pipesim.slo._plain",
    "pipesim.replications <- pipesim.results._progress_bar_class",
}


def _private_names_taken() -> set[str]:
    """``importer <- module._name`` for each private name a pipesim module imports from another
    (``from pipesim.x import _y``) or reads off one it imported (``x._y``). A private module
    (``pipesim._jsonsafe``) is the package's own: importing it is fine, its public names are public."""
    def name_of(path: Path) -> str:
        parts = ["pipesim", *path.relative_to(PACKAGE).with_suffix("").parts]
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    def private(name: str) -> bool:
        return name.startswith("_") and not name.endswith("__")

    modules = {name_of(path): path for path in PACKAGE.rglob("*.py")}
    taken = set()
    for importer, path in modules.items():
        tree = ast.parse(path.read_text())
        bound = {}  # a local name -> the pipesim module it is
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                bound.update({alias.asname or alias.name: alias.name for alias in node.names
                              if alias.name in modules})
            elif isinstance(node, ast.ImportFrom):
                package = importer.split(".")[:None if path.name == "__init__.py" else -1]
                base = node.module or "" if not node.level else ".".join(
                    [*package[:len(package) + 1 - node.level], *filter(None, [node.module])])
                if base.split(".")[0] != "pipesim":
                    continue
                for alias in node.names:
                    if f"{base}.{alias.name}" in modules:
                        bound[alias.asname or alias.name] = f"{base}.{alias.name}"
                    elif private(alias.name):
                        taken.add(f"{importer} <- {base}.{alias.name}")
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and private(node.attr):
                owner = bound.get(node.value.id) if isinstance(node.value, ast.Name) else ast.unparse(node.value)
                if owner in modules and owner != importer and f"{owner}.{node.attr}" not in modules:
                    taken.add(f"{importer} <- {owner}.{node.attr}")
    return taken


def test_no_pipesim_module_uses_a_private_name_of_another():
    taken = _private_names_taken()
    assert taken - PRIVATE_NAMES_TAKEN == set(), "make these public (documented) or move them where they are used"
    assert PRIVATE_NAMES_TAKEN - taken == set(), "gone: take them off PRIVATE_NAMES_TAKEN"
