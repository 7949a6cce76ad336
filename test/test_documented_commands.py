"""The commands README.md and results/README.md document: each one parses, and one run before what it needs
exists says which command makes it, instead of a traceback."""

import re
import shlex
import subprocess

import pytest
from conftest import REPO, sop

from sop_ros.cli import build_parser

TIER = "unit"  # what the tests need: conftest.TIERS

DOCS = [REPO / "README.md", REPO / "results" / "README.md"]


def documented_sop_commands() -> list[tuple[str, str]]:
    """(where, the arguments after `sop`) of every command line in the docs' code blocks, and of every
    `.venv/bin/sop ...` quoted inline."""
    found = []
    for doc in DOCS:
        in_block = False
        for number, line in enumerate(doc.read_text().splitlines(), 1):
            if line.startswith("```"):
                in_block = not in_block
                continue
            where = f"{doc.relative_to(REPO)}:{number}"
            if in_block:
                command = line.split("#")[0].strip()
                match = re.match(r"^(?:\$ )?(?:\.venv/bin/)?sop (.+)$", command)
                if match and not match.group(1).split()[0].endswith(":"):  # not a command's output ("sop robot: ...")
                    found.append((where, match.group(1)))
            else:
                found += [(where, m) for m in re.findall(r"`\.venv/bin/sop ([^`]+)`", line)]
    return found


def test_the_docs_document_commands():
    assert len(documented_sop_commands()) >= 30


@pytest.mark.parametrize(("where", "arguments"), documented_sop_commands(), ids=lambda v: v if ":" in v else "")
def test_every_documented_sop_command_parses(where, arguments):
    try:
        build_parser().parse_args(shlex.split(arguments))
    except SystemExit as err:
        if err.code != 0:  # 0: --help
            pytest.fail(f"{where}: `sop {arguments}` does not parse ({err})")


def run_sop(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(sop(*args), capture_output=True, text=True, cwd=REPO, timeout=120, check=False)


@pytest.mark.parametrize(
    ("args", "first"),
    [
        (["export", "--policy", "{tmp}/base.pt", "--out", "{tmp}/base.onnx"], "sop pretrain"),
        (["pretrain", "--demos", "{tmp}/demos", "--out", "{tmp}/base.pt"], "sop collect-demos"),
        (["bench", "learner", "--demos", "{tmp}/demos", "--json", "{tmp}/learner.json"], "sop collect-demos"),
        (["publish", "--policy", "{tmp}/policy.onnx"], "sop export"),
        (["fleet", "run", "--config", "{tmp}/learner.yaml", "--minutes", "1"], "sop pretrain"),
        (["eval", "--in-process", "--policy", "{tmp}/base.onnx", "--tasks", "reach-v3", "--episodes-per-task", "1"],
         "sop export"),
    ],
    ids=["export", "pretrain", "bench-learner", "publish", "fleet-run", "eval-in-process"],
)
def test_a_command_run_before_its_input_exists_names_the_command_that_makes_it(tmp_path, args, first):
    (tmp_path / "learner.yaml").write_text("base_policy: " + str(tmp_path / "base.pt") + "\n")
    result = run_sop(*(a.format(tmp=tmp_path) for a in args))
    assert result.returncode == 2, result.stdout + result.stderr
    assert first in result.stderr and "Traceback" not in result.stderr, result.stderr
