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


#: EC2 allows 50 tags on a resource; bakery puts up to 10 of its own beside the user's
MAX_USER_TAGS = 40


def _user_tags(tags: dict[str, str]) -> dict[str, str]:
    for key, value in tags.items():
        if key.startswith(("aws:", "bakery:")):
            raise ValueError(f"tag key {key!r} uses a reserved prefix (aws:, bakery:)")
        if not 1 <= len(key) <= 128:
            raise ValueError(f"tag key {key[:40]!r}...: EC2 takes tag keys of 1 to 128 characters")
        if len(str(value)) > 256:
            raise ValueError(f"tag {key!r}: its value is {len(str(value))} characters; EC2 takes at most 256")
    if len(tags) > MAX_USER_TAGS:
        raise ValueError(f"{len(tags)} tags: at most {MAX_USER_TAGS} (EC2 allows 50 per resource, bakery adds its own)")
    return tags


# Tags users set: bakery's own tags (bakery:*) drive skips, idempotency and clean-up.
UserTags = Annotated[dict[str, str], AfterValidator(_user_tags)]
