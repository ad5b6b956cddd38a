"""Who is champion, and who was: the ``champion`` alias plus its audit trail in registered-model tags.

MLflow keeps only the current alias. Every change made here also writes one tag
``champion_history/<UTC time>`` = JSON event on the registered model, so the history can be read in the
MLflow UI and replayed: a promotion pushes a version, a rollback pops back to the one before.
"""

from __future__ import annotations

import getpass
import json
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from lora_pipeline.errors import RegistryError
from lora_pipeline.registry.schema import CHALLENGER, CHAMPION, HISTORY_PREFIX

AUTO, PROMOTE, ROLLBACK = "auto", "promote", "rollback"  # by the pipeline's rule, by a person, undo


@dataclass(frozen=True)
class ChampionEvent:
    at: str  # ISO-8601 UTC; also orders the events
    action: str  # AUTO | PROMOTE | ROLLBACK
    version: str  # champion after the event
    previous: str | None  # champion before it
    reason: str
    by: str


def champion_stack(events: list[ChampionEvent]) -> list[str]:
    """Replay the history: the current champion last, the one a rollback returns to before it."""
    stack: list[str] = []
    for event in events:
        if event.action == ROLLBACK:
            if stack:
                stack.pop()
            if not stack or stack[-1] != event.version:  # history written by an older or foreign tool
                stack.append(event.version)
        elif not stack or stack[-1] != event.version:
            stack.append(event.version)
    return stack


def champion_history(client: MlflowClient, name: str) -> list[ChampionEvent]:
    tags = _registered_model(client, name).tags
    return [ChampionEvent(**json.loads(tags[key])) for key in sorted(tags) if key.startswith(HISTORY_PREFIX)]


def set_champion(client: MlflowClient, name: str, version: str, action: str, reason: str) -> ChampionEvent:
    """Point ``champion`` at ``version`` and append the event to the history."""
    version = str(version)
    _model_version(client, name, version)  # fails clearly on an unknown version
    aliases = {alias: str(v) for alias, v in _registered_model(client, name).aliases.items()}
    previous = aliases.get(CHAMPION)
    client.set_registered_model_alias(name, CHAMPION, version)
    if aliases.get(CHALLENGER) == version:  # one version, one role
        client.delete_registered_model_alias(name, CHALLENGER)
    event = ChampionEvent(at=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"), action=action,
                          version=version, previous=previous, reason=reason, by=_user())
    client.set_registered_model_tag(name, HISTORY_PREFIX + event.at, json.dumps(asdict(event)))
    return event


def promote(client: MlflowClient, name: str, version: str, reason: str = "") -> ChampionEvent:
    return set_champion(client, name, version, PROMOTE, reason or "promoted by hand")


def rollback(client: MlflowClient, name: str) -> ChampionEvent:
    """Champion back to the previous champion, as recorded in the history."""
    aliases = _registered_model(client, name).aliases
    current = str(aliases[CHAMPION]) if CHAMPION in aliases else None
    stack = champion_stack(champion_history(client, name))
    if current is None:
        raise RegistryError(f"model '{name}': has no champion to roll back")
    if not stack or stack[-1] != current:
        raise RegistryError(f"model '{name}': champion v{current} was set outside lora-pipeline; "
                            f"use 'lora-pipeline models promote' to choose one")
    if len(stack) < 2:
        raise RegistryError(f"model '{name}': v{current} is the first champion; there is none to roll back to")
    return set_champion(client, name, stack[-2], ROLLBACK, f"rollback from v{current}")


def _registered_model(client: MlflowClient, name: str):
    try:
        return client.get_registered_model(name)
    except MlflowException:
        raise RegistryError(f"model '{name}': not in the registry") from None


def _model_version(client: MlflowClient, name: str, version: str):
    try:
        return client.get_model_version(name, version)
    except MlflowException:
        raise RegistryError(f"model '{name}': has no version {version}") from None


def _user() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "unknown"
