"""A study's trial turned into shipped, checked files, and a study re-measured on another device.

Above results (import-linter layers in pyproject.toml): choose a trial (choice), export it with its exact
preprocessing (trial_export), check every file (checks), write config.yaml (config_file); re-measure a study's
latencies on another device or backend without retraining (retarget).
"""

from __future__ import annotations

from edgecompress.export.checks import ExportError, ExportResult, ModelCheck, PreprocessCheck
from edgecompress.export.choice import choose_trial
from edgecompress.export.config_file import load_export_config
from edgecompress.export.retarget import RetargetedTrial, RetargetSummary, retarget_study
from edgecompress.export.trial_export import export_trial

__all__ = ["ExportError", "ExportResult", "ModelCheck", "PreprocessCheck", "RetargetSummary", "RetargetedTrial",
           "choose_trial", "export_trial", "load_export_config", "retarget_study"]
