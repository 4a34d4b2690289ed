"""Building blocks shared by the config models (recipes, environments)."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

SSM_PATH = Annotated[str, Field(pattern=r"^/[\w./-]+$")]


class Strict(BaseModel):
    """Unknown keys are errors (a typo must not silently do nothing); values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def exactly_one(model: BaseModel, *fields: str) -> None:
    given = [k for k in fields if getattr(model, k) is not None]
    if len(given) != 1:
        raise ValueError(f"give exactly one of {', '.join(fields)} (got {', '.join(given) or 'none'})")


def _user_tags(tags: dict[str, str]) -> dict[str, str]:
    for key in tags:
        if key.startswith(("aws:", "bakery:")):
            raise ValueError(f"tag key {key!r} uses a reserved prefix (aws:, bakery:)")
    return tags


# Tags users set: bakery's own tags (bakery:*) drive skips, idempotency and clean-up.
UserTags = Annotated[dict[str, str], AfterValidator(_user_tags)]
