"""The run being served, and the hot swap: when the server serves `alias:NAME`, a watcher reads
experiments/aliases.json every `every_s` seconds, and when the alias has moved it loads the new run in
a thread of its own (its weights checked against the sha256 in its run.json) and swaps it in whole.

Batches already computing finish on the old run; the next batch takes the new one. A run that cannot
be loaded (tampered or missing weights), or that clients could not use unchanged (another task, other
tensors or classes), is refused: the old run keeps serving, the reason goes to the log and to the
model's metadata (`parameters.refused`), and that run is not tried again until the alias moves once more.
"""
import asyncio
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

from infer.served import ServedModel
from store.aliases import read_aliases, utc
from store.runs import EXPERIMENTS

POLL_S = 1.0


class Slot:
    def __init__(self, current: ServedModel, load: Callable[[str], ServedModel], alias: Optional[str] = None):
        self.current = current
        self.load = load      # run id -> the run, served
        self.alias = alias    # the alias followed, or None: the run stays
        self.refused: Optional[dict] = None  # {"run", "reason", "when"}: the last move that was refused

    def follow(self) -> Optional[str]:
        """One look at the alias (in the loader thread): swap when it moved. Returns what happened, for the log."""
        target = (read_aliases(EXPERIMENTS).get(self.alias) or {}).get("run")
        if target is None or target == self.current.run_id or (self.refused or {}).get("run") == target:
            return None
        try:
            new = self.load(target)
        except Exception as e:  # noqa: BLE001 - whatever is wrong with the new run, the old one keeps serving
            self.refused = {"run": target, "reason": str(e), "when": utc()}
            return f"refused run {target} (alias {self.alias} moved to it): {e}; still serving {self.current.run_id}"
        why = incompatible(new, self.current)
        if why:
            self.refused = {"run": target, "reason": why, "when": utc()}
            return f"refused run {target}: {why}; still serving {self.current.run_id}"
        old, self.current, self.refused = self.current.run_id, new, None
        return f"alias {self.alias}: now serving run {new.run_id} (was {old}), weights sha256 {new.weights_sha256[:12]}..."


def incompatible(new: ServedModel, old: ServedModel) -> Optional[str]:
    """Why clients of `old` could not use `new` unchanged (another task, tensors or classes), or None."""
    if new.task != old.task:
        return f"it is a {new.task} run, this server serves {old.task}"
    if new.inputs != old.inputs or new.outputs != old.outputs:
        return (f"its tensors differ (input {new.inputs[0].shape}, this server's {old.inputs[0].shape}); "
                "serve it on a server of its own")
    if new.parameters.get("class_names") != old.parameters.get("class_names"):
        return "its class names differ; clients would read its classes wrong. Serve it on a server of its own"
    return None


async def watch(slot: Slot, pool: ThreadPoolExecutor, every_s: float = POLL_S) -> None:
    """Forever: follow the slot's alias."""
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(every_s)
        try:
            said = await loop.run_in_executor(pool, slot.follow)
        except Exception as e:  # noqa: BLE001 - an unreadable aliases.json: keep serving, say so, look again
            said = f"cannot read the aliases ({e}); still serving {slot.current.run_id}"
        if said:
            print(f"serve: {said}", file=sys.stderr, flush=True)
