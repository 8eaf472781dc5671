"""Each team's EFS access point: the POSIX identity it forces and the directory it roots at,
from the team's own settings only, so no other team's change can replace it."""

from __future__ import annotations

from dataclasses import dataclass

from infra.config.types import TeamConfig

TEAM_DIRECTORY_MODE = "0750"
"""Owner and group only: a team's checkpoints and data are not other teams' to read."""


@dataclass(frozen=True, kw_only=True, slots=True)
class AccessPointSpec:
    uid: int
    gid: int
    path: str
    permissions: str = TEAM_DIRECTORY_MODE


def team_access_point(team: TeamConfig) -> AccessPointSpec:
    return AccessPointSpec(uid=team.efs_uid, gid=team.efs_uid, path=f"/teams/{team.name}")


def team_access_points(teams: tuple[TeamConfig, ...]) -> dict[str, AccessPointSpec]:
    return {team.name: team_access_point(team) for team in teams}


def next_efs_uid(teams: tuple[TeamConfig, ...], first: int = 50_000) -> int:
    """The uid for a new team: above every uid in use, so no existing team's can be taken."""
    return max([first - 1, *(team.efs_uid for team in teams)]) + 1
