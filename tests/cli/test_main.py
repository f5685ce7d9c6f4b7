import subprocess
import sys
import time

from jointreg.cli.main import main


def test_help_lists_commands_and_is_fast_without_torch():
    code = (
        "import sys, time; t = time.perf_counter()\n"
        "from jointreg.cli.main import build_parser\n"
        "text = build_parser().format_help()\n"
        "print(round(time.perf_counter() - t, 3)); print('torch' in sys.modules); print(text)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    seconds, torch_loaded, text = out.split("\n", 2)
    assert torch_loaded == "False"
    assert float(seconds) < 1.0
    assert "prepare" in text


def test_console_script_help_under_one_second():
    exe = __import__("shutil").which("jointreg") or str(__import__("pathlib").Path(sys.executable).with_name("jointreg"))
    start = time.perf_counter()
    result = subprocess.run([exe, "--help"], capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    assert result.returncode == 0
    assert "commands" in result.stdout
    assert elapsed < 1.0, f"jointreg --help took {elapsed:.2f} s"


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "usage: jointreg" in capsys.readouterr().out
