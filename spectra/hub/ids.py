"""Hub model ids on the command line: ``namespace/name`` or ``namespace/name@revision``.

A source is a Hub id only when it is not an existing path and has that form (one ``/``,
names as the Hub allows them, checked by huggingface_hub's own validator); a revision is a
branch, a tag or a commit hash, and may hold ``/`` (``org/name@refs/pr/1``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class HubId:
    """A model repository on the Hub, and the revision asked for (None: the default branch)."""

    repo_id: str
    revision: str | None = None

    @property
    def name(self) -> str:
        """The repository's name without its namespace."""
        return self.repo_id.split("/")[1]

    def __str__(self) -> str:
        return self.repo_id + (f"@{self.revision}" if self.revision else "")


def parse_hub_id(source: str | Path) -> HubId | None:
    """The Hub id that ``source`` names, or None when it is a path (existing, or not of the
    form ``namespace/name[@revision]``)."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    text = str(source)
    if Path(text).exists():
        return None
    repo_id, at, revision = text.partition("@")
    if repo_id.count("/") != 1 or (at and not revision.strip()) or revision != revision.strip():
        return None
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        return None
    return HubId(repo_id, revision or None)
