"""Fixtures for the retrieval service tests (helpers live in serve_fakes.py)."""
from __future__ import annotations

from pathlib import Path

import pytest
from serve_fakes import FakeModel, make_cohort


@pytest.fixture(scope="session")
def fake_model() -> FakeModel:
    return FakeModel()


@pytest.fixture(scope="session")
def cohort(tmp_path_factory) -> Path:
    return make_cohort(tmp_path_factory.mktemp("cohort"))


@pytest.fixture(scope="session")
def built_index(tmp_path_factory, fake_model, cohort) -> Path:
    from medalign.index.build import build_index

    out = tmp_path_factory.mktemp("idx") / "index"
    build_index(fake_model, cohort, out)
    return out


@pytest.fixture(scope="session")
def served_app(built_index, fake_model):
    from medalign.serve.app import create_app

    return create_app(built_index, fake_model, max_file_bytes=2 << 20, max_request_bytes=4 << 20)


@pytest.fixture
def session_text_cache(tmp_path_factory, monkeypatch) -> None:
    """Frozen-text features cached under the session's temp folder, not the user's cache."""
    monkeypatch.setenv("MEDALIGN_CACHE", str(tmp_path_factory.getbasetemp() / "medalign_cache"))
