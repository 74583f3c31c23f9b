"""Selector state of the prompt-group replay buffer: ``state_dict``, the checkpoint file, the resume folder.

``PromptGroupCheckpointCallback`` (in ``sampler``) writes ``STATE_FILE`` into each checkpoint folder; the buffer
reloads it at the first training step after a resume, from the folder the trainer resumed from
(``trainer.resume_mode`` / ``default_local_dir`` / ``resume_from_path``, or ``sampler_kwargs.checkpoint_dir``).
Imports no veRL.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping

from rlplugins.selection.prompt_groups import PromptGroupSelector

from .sampler_options import SamplerOptions, _select

logger = logging.getLogger("rlplugins.integrations.verl.sampler")

STATE_FILE = "rlplugins_prompt_selector.json"
_CALLBACK = "rlplugins.integrations.verl.sampler.PromptGroupCheckpointCallback"


class SelectorState:
    """Mixin: the selector's state, saved into and restored from veRL checkpoint folders."""

    selector: PromptGroupSelector
    options: SamplerOptions
    _root: Any
    _restore_checked: bool
    _step_metrics: dict[str, float]

    def state_dict(self) -> dict[str, Any]:
        return self.selector.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.selector.load_state_dict(state)

    def save_state(self, checkpoint_dir: str | os.PathLike) -> Path:
        """Write the selector state into a checkpoint folder (atomically)."""
        path = Path(checkpoint_dir) / STATE_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.state_dict()))
        os.replace(tmp, path)
        return path

    def resume_folder(self, global_steps: int) -> Path | None:
        """The checkpoint folder the trainer resumed from before step ``global_steps``, or None (fresh run)."""
        if global_steps <= 1:
            return None
        if self.options.checkpoint_dir:
            return Path(self.options.checkpoint_dir) / f"global_step_{global_steps - 1}"
        mode = _select(self._root, "trainer.resume_mode", "auto")
        if mode == "disable":
            return None
        if mode == "resume_path":
            path = _select(self._root, "trainer.resume_from_path")
            return Path(path) if path else None
        root_dir = _select(self._root, "trainer.default_local_dir")
        return Path(root_dir) / f"global_step_{global_steps - 1}" if root_dir else None

    def _maybe_restore(self, global_steps: int) -> None:
        if self._restore_checked:
            return
        self._restore_checked = True
        folder = self.resume_folder(global_steps)
        if folder is None:
            return
        path = folder / STATE_FILE
        if path.exists():
            self.load_state_dict(json.loads(path.read_text()))
            self._step_metrics["restored"] = 1.0
            logger.info("PromptGroupReplayBuffer: restored selector state from %s", path)
        else:
            self._step_metrics["restored"] = 0.0
            logger.warning(
                "PromptGroupReplayBuffer: resuming at step %d but %s does not exist; the selector starts "
                "fresh. Set trainer.checkpoint_callback_class=%s to save it.",
                global_steps, path, _CALLBACK,
            )

