"""docs/performance.md and docs/configuration.md are generated: the committed pages must be exactly what
their scripts make from benchmarks/results/*.csv and hybengine/config.py."""
import importlib.util

import pytest

from tiny_run import REPO


def _load(path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("script", ["benchmarks/render.py", "scripts/render_config_doc.py"])
def test_committed_page_regenerates_byte_identical(script):
    module = _load(REPO / script)
    assert module.PAGE.read_text() == module.render(), f"{module.PAGE} is stale: run python {script}"


def test_every_config_field_has_a_comment():
    module = _load(REPO / "scripts" / "render_config_doc.py")
    comments = module.field_comments(module.SOURCE.read_text())
    assert comments[("TrainConfig", "cpu_malloc")].startswith("glibc malloc")  # a comment block above the field
    fields = {k: v for k, v in comments.items() if k[0] != "Config"}  # Config's fields are the sections
    assert len(fields) > 60 and all(fields.values()), [k for k, v in fields.items() if not v]


def test_readme_performance_table_is_generated():
    module = _load(REPO / "benchmarks" / "render.py")
    text = module.README.read_text()
    assert module.BEGIN in text and module.readme_with_headline(text) == text, "run python benchmarks/render.py"
