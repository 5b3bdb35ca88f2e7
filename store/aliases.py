"""Aliases: names for the run a service uses (`production`, `staging`), moved only by
`inference.py --promote` (serve/promote.py), read wherever a run is named (`resume=alias:NAME`).

    experiments/aliases.json            {"production": {"run": "<id>", "since": "<utc>", "moves": 3}, ...}
    experiments/aliases.history.jsonl   one JSON line per move, appended, never rewritten

Every move holds experiments/.aliases.lock, so concurrent promotions are serialised; aliases.json is
replaced atomically (utils/files.py), and the history line is flushed and fsynced before it.
"""
import getpass
import json
import os
import socket
from pathlib import Path

from filelock import FileLock

from utils.config import LABEL_RE
from utils.errors import UsageError
from utils.files import fsync_dir, write_json

ALIASES_FILE = "aliases.json"
HISTORY_FILE = "aliases.history.jsonl"
ALIAS_LOCK = ".aliases.lock"


def check_alias(name: str, key: str = "--alias") -> str:
    """An alias name is a label: letters, digits and ._+- (it is written in files and URLs)."""
    if not LABEL_RE.match(str(name)):
        raise UsageError(f"{key}: '{name}' is not an alias name; use letters, digits and ._+- (e.g. production)")
    return str(name)


def read_aliases(experiments: Path) -> dict:
    """{alias: {"run": id, "since": utc, "moves": n}}; {} before the first promotion. A damaged file is
    exit 2 (nothing guesses which run a service should use)."""
    path = experiments / ALIASES_FILE
    try:
        aliases = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise UsageError(f"{path} cannot be read ({e}); restore it from {HISTORY_FILE} (its last line per alias)") from None
    if not isinstance(aliases, dict):
        raise UsageError(f"{path} is not a JSON object; restore it from {HISTORY_FILE} (its last line per alias)")
    return aliases


def alias_run(name: str, key: str, experiments: Path) -> str:
    """The run id alias `name` points at; an unknown alias is exit 2, naming the known ones."""
    aliases = read_aliases(experiments)
    if check_alias(name, key) not in aliases:
        known = ", ".join(sorted(aliases)) or "none yet (python inference.py --promote RUN --alias NAME)"
        raise UsageError(f"{key}: no alias '{name}'; aliases: {known}")
    return aliases[name]["run"]


def move_alias(name: str, run_id: str, record: dict, experiments: Path) -> dict:
    """Point `name` at `run_id`: append the history line (`record` plus when, from, to, user, host),
    then replace aliases.json. The caller holds alias_lock() across its check and this move."""
    aliases = read_aliases(experiments)
    old = aliases.get(name, {})
    entry = {"when": utc(), "alias": name, "from": old.get("run"), "to": run_id, **record,
             "user": getpass.getuser(), "host": socket.gethostname()}
    with open(experiments / HISTORY_FILE, "a") as f:  # append-only: a move is recorded before it takes effect
        f.write(json.dumps(entry, sort_keys=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(experiments)
    aliases[name] = {"run": run_id, "since": entry["when"], "moves": old.get("moves", 0) + 1}
    write_json(experiments / ALIASES_FILE, dict(sorted(aliases.items())))
    return entry


def alias_lock(experiments: Path) -> FileLock:
    experiments.mkdir(parents=True, exist_ok=True)
    return FileLock(experiments / ALIAS_LOCK)


def read_history(experiments: Path) -> list[dict]:
    path = experiments / HISTORY_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def utc() -> str:
    import datetime
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
