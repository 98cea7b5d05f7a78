"""Request and response bodies of the retrieval API (they name the OpenAPI components)."""
# no "from __future__ import annotations": pydantic and FastAPI read these annotations at runtime

from typing import Literal

from pydantic import BaseModel, Field, field_validator

from medalign.data.schema import DEFAULT_TOP_K
from medalign.serve.state import MAX_K


class TextQuery(BaseModel):
    text: str = Field(..., min_length=1, max_length=2000, description="free-text query (never logged)")
    k: int = Field(DEFAULT_TOP_K, ge=1, le=MAX_K)
    target: Literal["image", "report"] = Field("image", description="search study images or their reports")


class AttentionQuery(BaseModel):
    text: str = Field(..., min_length=1, max_length=2000,
                      description="free-text query whose attention is drawn (in the body, never the URL; never logged)")
    slices: int = Field(1, ge=1, le=3, description="most attended axial slices shown (one row each)")

    @field_validator("text")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("text must contain a word")  # the message never echoes the input
        return v.strip()


class Hit(BaseModel):
    rank: int
    study_id: str
    score: float = Field(..., description="cosine similarity")
    label: str
    report: str
    sequences: list[str] = Field(..., description="sequences with a thumbnail at /thumb/{study_id}/{seq}.png")


class ZeroShot(BaseModel):
    classes: list[str]
    probs: list[float]
    predicted: str


class SearchResponse(BaseModel):
    query: dict
    results: list[Hit]
    zero_shot: ZeroShot | None = None


class StudyDetail(BaseModel):
    study_id: str
    label: str
    report: str
    split: str
    sequences: list[str]


class Health(BaseModel):
    status: str
    n_studies: int
    n_reports: int
    model_id: str
    index_kind: str
    version: str
    auth_required: bool
    sequences: list[str]
    attention: bool = Field(False, description="POST /attention/{study_id} can draw query attention overlays")
