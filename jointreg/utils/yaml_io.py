"""Reading YAML (and other small text files) people send each other, with bounds.

Recipes and studies are shared like any other file, so reading one must not be able to exhaust
the machine. ``yaml.safe_load`` builds plain data only, but an alias (``*name``) refers to an
anchored node without copying it: a few hundred bytes can describe a document of 10^9 nodes
(the "billion laughs"). The load itself stays small; the first walk over the data (overrides,
dataclass conversion, writing the resolved recipe) expands it until memory runs out.

:func:`load_yaml` therefore counts the nodes of a document as if every alias were expanded, on
PyYAML's composed node graph before any data is built (each distinct node is visited once, so the
count is cheap however large the expansion), and refuses documents that would exceed
:data:`MAX_NODES`, nest deeper than :data:`MAX_DEPTH` or refer to themselves. Files are read
through :func:`read_text_limited`, which refuses files larger than a bound before reading them.
"""

from __future__ import annotations

import json
import sys
from os import PathLike
from pathlib import Path
from typing import Any

from jointreg.errors import InputError

# 70 times the largest shipped recipe; PyYAML's pure-Python parser takes ~10 s for this much.
MAX_YAML_BYTES = 256 << 10
# A recipe has ~100 nodes and a study a few hundred; 100,000 leaves room for any real document.
MAX_NODES = 100_000
MAX_DEPTH = 64


class YamlDocumentError(ValueError):
    """A YAML text that cannot or may not be loaded; ``problem`` is one line without a path."""

    def __init__(self, problem: str):
        self.problem = problem
        super().__init__(problem)


def read_text_limited(path: str | PathLike[str], max_bytes: int, *, what: str = "file") -> str:
    """The UTF-8 text of ``path``, refusing files over ``max_bytes`` before reading them.

    Raises:
        InputError: missing, unreadable, too large or not UTF-8 (naming the file).
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise InputError(
                path, f"{what} is {size:,} bytes, more than the {max_bytes:,} jointreg reads "
                "(a file this large is not a real one and could exhaust memory)",
            )
        with path.open("rb") as handle:
            # Read one byte past the bound: a file growing while it is read is caught too.
            blob = handle.read(max_bytes + 1)
    except OSError as exc:
        raise InputError(path, f"cannot read {what} ({exc.strerror or exc})") from None
    if len(blob) > max_bytes:
        raise InputError(path, f"{what} is more than the {max_bytes:,} bytes jointreg reads")
    try:
        return blob.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(path, f"{what} is not UTF-8 text (byte {exc.start})") from None


def load_json_file(path: str | PathLike[str], max_bytes: int, *, what: str = "JSON file") -> Any:
    """``json.loads`` of a file read through :func:`read_text_limited`.

    Raises:
        InputError: every way a received file can fail, naming it: too large, not UTF-8,
            invalid JSON, nested too deeply, an integer of more digits than Python converts
            (a ``ValueError``, not a ``JSONDecodeError``), a ``\\u`` escape of a lone surrogate
            (no UTF-8 text can hold it, so printing or writing it back would fail later).
    """
    path = Path(path)
    text = read_text_limited(path, max_bytes, what=what)
    try:
        data = json.loads(text)
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except json.JSONDecodeError as exc:
        raise InputError(path, f"invalid JSON ({exc})") from None
    except RecursionError:
        raise InputError(path, "invalid JSON (nested too deeply)") from None
    except UnicodeEncodeError as exc:
        code = ord(exc.object[exc.start])
        raise InputError(path, f"invalid JSON (\\u{code:04x} is a lone surrogate, not a character)") from None
    except ValueError:
        raise InputError(path, f"invalid JSON (a number of more than {sys.get_int_max_str_digits()} digits)") from None
    return data


def load_yaml(text: str, *, max_nodes: int = MAX_NODES, max_depth: int = MAX_DEPTH) -> Any:
    """``yaml.safe_load(text)``, refused when the document is too large once aliases expand.

    Raises:
        YamlDocumentError: invalid YAML (with its line), more than ``max_nodes`` nodes after
            alias expansion, nesting deeper than ``max_depth``, an alias inside itself, or a
            string holding a lone surrogate (``"\\ud800"``).
    """
    import yaml

    loader = _bounded_loader(max_depth)(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node, max_nodes, max_depth)
        return loader.construct_document(node)
    except YamlDocumentError:
        raise
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise YamlDocumentError(f"invalid YAML{where}") from None
    except RecursionError:
        raise YamlDocumentError(f"YAML nested too deeply (more than {max_depth} levels)") from None
    except ValueError as exc:  # e.g. an integer with more digits than Python converts
        raise YamlDocumentError(f"invalid YAML value ({exc})") from None
    finally:
        loader.dispose()


def load_yaml_file(path: str | PathLike[str], *, what: str = "YAML file", max_bytes: int = MAX_YAML_BYTES) -> Any:
    """:func:`load_yaml` on a file read with :func:`read_text_limited`.

    Raises:
        InputError: any problem of either, naming the file.
    """
    text = read_text_limited(path, max_bytes, what=what)
    try:
        return load_yaml(text)
    except YamlDocumentError as exc:
        raise InputError(path, exc.problem) from None


def _bounded_loader(max_depth: int) -> type:
    """A ``SafeLoader`` whose scanner refuses flow collections (``[``, ``{``) nested deeper than
    ``max_depth``: PyYAML's scanner looks ahead over every open flow level at every token, so
    10^4 opening brackets alone would take minutes (quadratic) before the first error."""
    import yaml

    class BoundedSafeLoader(yaml.SafeLoader):
        def fetch_flow_collection_start(self, token_class: Any) -> None:
            if self.flow_level >= max_depth:
                raise YamlDocumentError(f"YAML nested too deeply (more than {max_depth} levels)")
            super().fetch_flow_collection_start(token_class)

    return BoundedSafeLoader


def _check_unicode(node: Any) -> None:
    """A ``"\\ud800"`` escape is a lone surrogate, which no UTF-8 text can hold: a run folder
    named with it, or a recipe.yaml written with it, would fail much later with a traceback."""
    try:
        node.value.encode("utf-8")
    except UnicodeEncodeError as exc:
        code = ord(node.value[exc.start])
        raise YamlDocumentError(f"invalid YAML at line {node.start_mark.line + 1} (\\u{code:04x} is a lone surrogate, "
                                "not a character)") from None


def _check_expansion(root: Any, max_nodes: int, max_depth: int) -> None:
    """Raise when ``root`` expands to more than ``max_nodes`` nodes (aliases counted in full)."""
    import yaml

    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def expanded(node: Any, depth: int) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise YamlDocumentError("a YAML alias refers to the node that contains it (recursive document)")
        if depth > max_depth:
            raise YamlDocumentError(f"YAML nested too deeply (more than {max_depth} levels)")
        total = 1
        if isinstance(node, yaml.ScalarNode):
            _check_unicode(node)
        if isinstance(node, (yaml.SequenceNode, yaml.MappingNode)):
            open_nodes.add(key)
            children = node.value if isinstance(node, yaml.SequenceNode) else [n for pair in node.value for n in pair]
            for child in children:
                total += expanded(child, depth + 1)
                if total > max_nodes:
                    break
            open_nodes.discard(key)
        sizes[key] = total
        return total

    count = expanded(root, 0)
    if count > max_nodes:
        raise YamlDocumentError(
            f"the YAML document expands to more than {max_nodes:,} values once its aliases (*name) "
            "are resolved; refused, as such a document exhausts memory ('billion laughs')"
        )
