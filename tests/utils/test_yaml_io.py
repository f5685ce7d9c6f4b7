import time

import pytest
import yaml

from jointreg.errors import InputError
from jointreg.utils.yaml_io import (
    MAX_NODES,
    YamlDocumentError,
    load_yaml,
    load_yaml_file,
    read_text_limited,
)


def billion_laughs(levels: int = 9, width: int = 9) -> str:
    """``levels`` anchors, each a list of ``width`` aliases of the previous: width**levels leaves."""
    lines = ["a0: &a0 [lol]"]
    for level in range(1, levels):
        refs = ", ".join([f"*a{level - 1}"] * width)
        lines.append(f"a{level}: &a{level} [{refs}]")
    lines.append(f"top: *a{levels - 1}")
    return "\n".join(lines) + "\n"


def test_plain_documents_load_as_safe_load_does():
    text = "name: run\nregistration: {lr: 1.0e-4, arguments: {features: [4, 8]}}\nflags: [true, null, 3]\n"
    assert load_yaml(text) == yaml.safe_load(text)
    assert load_yaml("") is None
    assert load_yaml("# only a comment\n") is None


def test_node_count_counts_every_alias_in_full():
    # mapping 1 + key a 1 + list 3 + key b 1 + the aliased list again 3 = 9 nodes
    text = "a: &x [1, 2]\nb: *x\n"
    assert load_yaml(text, max_nodes=9) == {"a": [1, 2], "b": [1, 2]}
    with pytest.raises(YamlDocumentError, match="more than 8 values"):
        load_yaml(text, max_nodes=8)
    assert load_yaml("[1, 2, 3]", max_nodes=4) == [1, 2, 3]
    with pytest.raises(YamlDocumentError, match="more than 3 values"):
        load_yaml("[1, 2, 3]", max_nodes=3)


def test_billion_laughs_is_refused_quickly():
    text = billion_laughs()  # 9**8 = 43 million leaves in 455 bytes
    assert len(text) < 500
    start = time.perf_counter()
    with pytest.raises(YamlDocumentError, match=rf"more than {MAX_NODES:,} values .*billion laughs"):
        load_yaml(text)
    assert time.perf_counter() - start < 1.0
    # The same structure at a harmless size still loads: 3**3 = 27 leaves.
    assert load_yaml(billion_laughs(levels=3, width=3))["top"] == [[["lol"]] * 3] * 3


def test_merge_keys_are_counted():
    base = "base: &b {" + ", ".join(f"k{i}: {i}" for i in range(50)) + "}\n"
    many = "".join(f"m{i}: {{<<: *b}}\n" for i in range(30))
    data = load_yaml(base + many)
    assert data["m29"]["k49"] == 49
    with pytest.raises(YamlDocumentError, match="more than 1,000 values"):
        load_yaml(base + many, max_nodes=1000)


@pytest.mark.parametrize(
    "text, message",
    [
        ("a: &a [*a]\n", "refers to the node that contains it"),
        ("[" * 80 + "]" * 80, "nested too deeply"),
        ("[" * 100_000, "nested too deeply"),  # refused at bracket 65, not after a quadratic scan
        ("a:\n" + "".join(" " * (2 * i) + f"k{i}:\n" for i in range(1, 300)), "nested too deeply"),
        ("x: " + "9" * 5000 + "\n", r"invalid YAML value \(Exceeds the limit"),
        ("name: [unclosed\n", "invalid YAML at line 2"),
        ("!!python/object/apply:os.system ['echo hi']\n", "invalid YAML at line 1"),
    ],
)
def test_bad_documents_are_one_clear_error(text, message):
    with pytest.raises(YamlDocumentError, match=message):
        load_yaml(text)


def test_files_name_themselves_in_every_error(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(billion_laughs())
    with pytest.raises(InputError, match=r"bomb.yaml: the YAML document expands to more than"):
        load_yaml_file(bomb)
    big = tmp_path / "big.yaml"
    big.write_text("x: 1\n" * 60_000)  # 300 kB
    with pytest.raises(InputError, match=r"big.yaml: study is 300,000 bytes, more than the 262,144"):
        load_yaml_file(big, what="study")
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("name: caf\u00e9\n".encode("latin-1"))
    with pytest.raises(InputError, match=r"latin.yaml: YAML file is not UTF-8 text \(byte 9\)"):
        load_yaml_file(latin)
    with pytest.raises(InputError, match=r"missing.yaml: cannot read file"):
        read_text_limited(tmp_path / "missing.yaml", 10)


def test_read_text_limited_reads_up_to_the_bound(tmp_path):
    path = tmp_path / "ten.txt"
    path.write_text("0123456789")
    assert read_text_limited(path, 10) == "0123456789"
    with pytest.raises(InputError, match=r"ten.txt: notes is 10 bytes, more than the 9 jointreg reads"):
        read_text_limited(path, 9, what="notes")
