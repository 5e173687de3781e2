"""The wire contract: checked-in stubs are exactly what the pinned generator writes, and the
proto's config and knob messages carry every field of the library's models."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

import pytest

from anns.config import IndexConfig, SearchParams
from anns_proto.anns.v1 import anns_pb2 as pb

REPO = Path(__file__).resolve().parent.parent


def _files(root: Path) -> dict[str, Path]:
    return {str(p.relative_to(root)): p for p in root.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts}


def test_checked_in_stubs_match_the_generator(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(REPO / "proto" / "generate.py"), "--out",
                           str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    fresh, committed = _files(tmp_path / "anns_proto"), _files(REPO / "anns_proto")
    assert sorted(fresh) == sorted(committed), "run `python proto/generate.py`"
    differ = [name for name in fresh if not filecmp.cmp(fresh[name], committed[name],
                                                        shallow=False)]
    assert not differ, f"stale stubs {differ}: run `python proto/generate.py`"


def test_generator_refuses_another_grpcio_tools(tmp_path: Path) -> None:
    # a stand-in grpcio-tools distribution of another version, first on the path
    fake = tmp_path / "site"
    dist = fake / "grpcio_tools-0.0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: grpcio-tools\nVersion: 0.0.1\n")
    done = subprocess.run(
        [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(fake)!r}); "
         f"sys.argv = ['generate.py', '--out', {str(tmp_path / 'out')!r}]; "
         f"import runpy; runpy.run_path({str(REPO / 'proto' / 'generate.py')!r}, "
         f"run_name='__main__')"],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode != 0
    assert "grpcio-tools==" in done.stderr and "found 0.0.1" in done.stderr
    assert not (tmp_path / "out" / "anns_proto").exists()


def test_generated_files_name_no_path_of_this_machine() -> None:
    for path in _files(REPO / "anns_proto").values():
        text = path.read_text()
        assert str(REPO) not in text and "/home/" not in text and "/tmp/" not in text


@pytest.mark.parametrize(("message", "model"), [
    (pb.CollectionConfig, IndexConfig), (pb.SearchParams, SearchParams),
])
def test_proto_messages_carry_every_library_field(message: type, model: type) -> None:
    proto_fields = {f.name for f in message.DESCRIPTOR.fields}  # type: ignore[attr-defined]
    assert proto_fields == set(model.model_fields)


def test_model_fields_are_reserved_on_writes_and_queries() -> None:
    for message in (pb.UpsertRequest, pb.SearchRequest):
        field = message.DESCRIPTOR.fields_by_name["model"]
        assert field.number == 10
